//! Runs the mock provider standalone, e.g. for trying `llmhub-control up` by hand:
//! `cargo run -p llmhub-e2e --bin llmhub-mock-provider -- --listen 127.0.0.1:9999`.

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = llmhub_e2e::mock::MockProvider::start_on(&args.listen).await?;
    println!("mock provider at {}", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
