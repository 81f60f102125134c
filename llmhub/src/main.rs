//! `llmhub`: the composition binary. It owns `up` (the control plane and a proxy on one machine,
//! wired over mutual TLS exactly as in production) and runs either plane, so one executable is
//! enough for development and for images. Neither plane's library depends on the other; only
//! this binary links both.

mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "llmhub",
    version,
    about = "llm-hub: a self-hosted LLM API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development mode: control plane and one proxy on loopback, over mTLS, on SQLite.
    Up(up::UpArgs),
    /// The control plane (the same commands as `llmhub-control`).
    Control {
        #[command(subcommand)]
        command: llmhub_control::cli::Command,
    },
    /// The proxy (data plane), as `llmhub-proxy` runs it.
    Proxy {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Exit when stdin closes (the launcher holds the other end).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Control { command } => llmhub_control::cli::run(command),
        Command::Proxy {
            config,
            exit_on_stdin_eof,
        } => llmhub_proxy::cli::run_from_config_file(config.as_deref(), exit_on_stdin_eof),
        Command::Up(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("llmhub: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(up::up(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(up::UpError::Config(e)) => {
                    eprintln!("llmhub: {e}");
                    ExitCode::from(llmhub_control::EXIT_CONFIG as u8)
                }
                Err(up::UpError::Other(e)) => {
                    eprintln!("llmhub: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
