//! `llmhub-control`: thin CLI over the `llmhub_control` library.

use std::process::ExitCode;

use clap::Parser;
use llmhub_control::cli::Cli;

fn main() -> ExitCode {
    llmhub_control::cli::run(Cli::parse().command)
}
