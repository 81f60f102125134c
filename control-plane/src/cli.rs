//! The control plane's command line, shared by `llmhub-control` and the composition binary's
//! `llmhub control`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, RawConfig};
use crate::{App, EXIT_CONFIG, certs, init_tracing, keyring, store};

#[derive(Parser)]
#[command(name = "llmhub-control", version, about = "llm-hub control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the admin API and the proxies' mTLS gRPC service.
    Serve {
        /// TOML configuration file; `LLMHUB_…` environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations, then exit.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create the private CA and certificates for the gRPC channel.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Create an admin account with a random password, printed once.
    BootstrapAdmin {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "admin")]
        username: String,
    },
    /// Master-key administration on the database directly (also available in the admin API).
    Vault {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Print the admin API's endpoint table (method, path, access) as JSON.
    Routes,
    /// Print a new random master-key entry (`VERSION:BASE64`) for `LLMHUB_MASTER_KEYS`.
    GenMasterKey {
        #[arg(long, default_value_t = 1)]
        version: u32,
    },
}

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Versions configured, current, retired, and sealed values per version.
    Status,
    /// Seal new writes with this version (it must be configured).
    Use { version: u32 },
    /// Re-seal every value not under the current version, in batches.
    Rewrap {
        #[arg(long, default_value_t = 100)]
        batch: u64,
    },
    /// Retire a version no sealed value uses any more.
    Retire { version: u32 },
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a CA and the control plane's server certificate.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Extra DNS names or IPs for the server certificate.
        #[arg(long)]
        san: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a proxy client certificate signed by the CA in `dir`.
    Proxy {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn config_exit(e: ConfigError) -> ExitCode {
    eprintln!("llmhub-control: {e}");
    ExitCode::from(EXIT_CONFIG as u8)
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("llmhub-control: error: {e:#}");
    ExitCode::FAILURE
}

/// Runs one control-plane command to completion.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Routes => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::api::endpoint_list()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::GenMasterKey { version } => {
            println!("{}", keyring::generate_entry(version).as_str());
            ExitCode::SUCCESS
        }
        Command::Certs { command } => {
            let r = match command {
                CertsCommand::Init { dir, san, force } => certs::init(&dir, &san, force)
                    .map(|()| println!("wrote CA and server certificate to {}", dir.display())),
                CertsCommand::Proxy { dir, name, days } => certs::issue_proxy(&dir, &name, days)
                    .map(|(c, k)| println!("wrote {} and {}", c.display(), k.display())),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.into()),
            }
        }
        command => runtime().block_on(async_main(command)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn async_main(command: Command) -> ExitCode {
    match command {
        Command::Migrate { config } => {
            let raw = match RawConfig::load(config.as_deref()) {
                Ok(r) => r,
                Err(e) => return config_exit(e),
            };
            let Some(url) = raw.database_url else {
                return config_exit(ConfigError::Field {
                    field: "database_url",
                    reason: "is required".into(),
                });
            };
            init_tracing(LogFormat::Text);
            let r = async {
                let s = store::Store::connect(&url).await?;
                s.migrate().await?;
                anyhow::Ok(())
            }
            .await;
            match r {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Serve { config } => {
            let config = match RawConfig::load(config.as_deref()).and_then(RawConfig::validate) {
                Ok(c) => c,
                Err(e) => return config_exit(e),
            };
            init_tracing(config.log_format);
            config.log_warnings();
            match serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "control plane stopped");
                    fail(e)
                }
            }
        }
        Command::BootstrapAdmin { config, username } => {
            let config = match RawConfig::load(config.as_deref()).and_then(RawConfig::validate) {
                Ok(c) => c,
                Err(e) => return config_exit(e),
            };
            init_tracing(config.log_format);
            config.log_warnings();
            let r = async {
                let app = App::open(&config).await?;
                let password = app.create_admin(&username).await?;
                println!(
                    "created admin {username:?}; password (shown once): {}",
                    password.as_str()
                );
                anyhow::Ok(())
            }
            .await;
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Vault { config, command } => {
            let config = match RawConfig::load(config.as_deref()).and_then(RawConfig::validate) {
                Ok(c) => c,
                Err(e) => return config_exit(e),
            };
            init_tracing(LogFormat::Text);
            config.log_warnings();
            let op = match command {
                VaultCommand::Status => crate::VaultOp::Status,
                VaultCommand::Use { version } => crate::VaultOp::Use(version),
                VaultCommand::Rewrap { batch } => crate::VaultOp::Rewrap(batch),
                VaultCommand::Retire { version } => crate::VaultOp::Retire(version),
            };
            match crate::vault_command(&config, op).await {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::GenMasterKey { .. } | Command::Certs { .. } | Command::Routes => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn serve(config: crate::config::Config) -> anyhow::Result<()> {
    let admin = tokio::net::TcpListener::bind(config.admin_listen).await?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen).await?;
    let app = App::open(&config).await?;
    if config.bootstrap_admin
        && let Some((user, password)) = app.bootstrap_admin().await?
    {
        // Printed once on stdout for the operator; never passed to the logger.
        println!(
            "{}",
            serde_json::json!({"event": "bootstrap_admin", "username": user, "password": password.as_str(),
                "note": "one-time password: sign in and change it"})
        );
    }
    println!(
        "{}",
        serde_json::json!({"event": "listening", "admin": admin.local_addr()?.to_string(),
            "grpc": grpc.local_addr()?.to_string()})
    );
    tracing::info!(admin = %admin.local_addr()?, grpc = %grpc.local_addr()?, "control plane listening");
    app.serve(&config, admin, grpc, crate::shutdown_signal())
        .await
}
