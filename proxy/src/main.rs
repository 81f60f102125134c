//! `llmhub-proxy`: the data plane binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "llmhub-proxy",
    version,
    about = "llm-hub data plane (public LLM API)"
)]
struct Cli {
    /// TOML configuration file; `LLMHUB_…` environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llmhub_proxy::cli::run_from_config_file(cli.config.as_deref(), false)
}
