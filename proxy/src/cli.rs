//! Command-line entry shared by the `llmhub-proxy` binary and the composition binary's
//! `llmhub proxy` (which `llmhub up` runs as its child).

use std::path::Path;
use std::process::ExitCode;

use crate::config::{LogFormat, RawConfig};

pub const EXIT_CONFIG: u8 = 64;

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Loads configuration (exit 64 when invalid), binds, prints one `listening` JSON line on stdout,
/// and serves until SIGINT/SIGTERM — or, with `exit_on_stdin_eof`, until stdin closes, which is
/// how a launcher's child proxy follows its parent even when the parent is killed outright.
pub fn run_from_config_file(path: Option<&Path>, exit_on_stdin_eof: bool) -> ExitCode {
    let config = match RawConfig::load(path).and_then(RawConfig::validate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("llmhub-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmhub-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let public = tokio::net::TcpListener::bind(config.listen).await?;
        let internal = tokio::net::TcpListener::bind(config.internal_listen).await?;
        println!(
            "{}",
            serde_json::json!({"event": "listening", "public": public.local_addr()?.to_string(),
                "internal": internal.local_addr()?.to_string(), "proxy_id": config.proxy_id})
        );
        tracing::info!(public = %public.local_addr()?, internal = %internal.local_addr()?, proxy_id = %config.proxy_id, "proxy listening");
        let stop = async move {
            if exit_on_stdin_eof {
                tokio::select! {
                    () = shutdown_signal() => {}
                    () = stdin_closed() => {}
                }
            } else {
                shutdown_signal().await;
            }
        };
        crate::run(config, public, internal, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "proxy stopped");
            eprintln!("llmhub-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
