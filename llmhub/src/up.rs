//! `llmhub up`: the development setup in one command.
//!
//! Wired exactly as production: the control plane serves gRPC over mutual TLS and a separate proxy
//! process connects to it with a client certificate. Only the storage differs: SQLite in the data
//! directory instead of Postgres, and in-process counters instead of Redis. Every secret it needs
//! (CA, certificates, master key, JWT secret) is generated into the data directory once, mode 0600,
//! and reused on later runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use llmhub_control::config::{ConfigError, RawConfig};
use llmhub_control::store::Store;
use llmhub_control::{App, certs, keyring, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Where the SQLite database, certificates and generated secrets live.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Admin API port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8080)]
    pub admin_port: u16,
    /// gRPC port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8443)]
    pub grpc_port: u16,
    /// Public proxy port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8000)]
    pub proxy_port: u16,
    /// Proxy health port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8001)]
    pub proxy_internal_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn ensure_secret_file(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    certs::write_file(path, make().as_bytes(), 0o600)?;
    Ok(true)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// What `up` lets provider traffic reach besides public addresses: this machine only.
fn loopback_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

pub async fn up(args: UpArgs) -> Result<(), UpError> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .context("restricting the data directory")?;
    }
    let cert_dir = dir.join("certs");
    if !cert_dir.join(certs::CA_CERT).exists() {
        certs::init(&cert_dir, &[], false).context("creating development certificates")?;
        certs::issue_proxy(&cert_dir, "proxy-1", 365).context("issuing the proxy certificate")?;
    }
    let master_key = dir.join("master.key");
    let new_master = ensure_secret_file(&master_key, || {
        format!("{}\n", keyring::generate_entry(1).as_str())
    })?;
    let jwt_file = dir.join("jwt.secret");
    ensure_secret_file(&jwt_file, || {
        let mut b = [0u8; 48];
        rand::fill(&mut b);
        base64::engine::general_purpose::STANDARD.encode(b)
    })?;
    llmhub_control::init_tracing(llmhub_control::config::LogFormat::Text);
    tracing::warn!(
        path = %master_key.display(),
        "development mode: the master key is stored next to the data it protects; in production supply LLMHUB_MASTER_KEYS or master_key_file from a secret manager"
    );
    if new_master {
        tracing::info!("generated a new development master key");
    }

    let db_path = dir.join("llmhub.db");
    let raw = RawConfig {
        database_url: Some(format!("sqlite://{}?mode=rwc", db_path.display())),
        admin_listen: Some(loopback(args.admin_port).to_string()),
        grpc_listen: Some(loopback(args.grpc_port).to_string()),
        tls_ca_cert: Some(cert_dir.join(certs::CA_CERT)),
        tls_cert: Some(cert_dir.join(certs::SERVER_CERT)),
        tls_key: Some(cert_dir.join(certs::SERVER_KEY)),
        master_key_file: Some(master_key),
        jwt_secret_file: Some(jwt_file),
        log_format: Some("text".into()),
        // Development on one machine: the Ollama and vLLM presets live on localhost.
        egress_allow: Some(llmhub_control::config::StringList(loopback_networks())),
        ..Default::default()
    };
    let config = raw.validate()?;
    config.log_warnings();
    Store::connect(&config.database_url)
        .await
        .context("opening the SQLite database")?
        .migrate()
        .await
        .context("applying migrations")?;

    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", config.admin_listen))?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_listen))?;
    let admin_addr = admin.local_addr().context("admin address")?;
    let grpc_addr = grpc.local_addr().context("grpc address")?;
    let app = App::open(&config).await?;
    let credentials = app.bootstrap_admin().await?;

    // The proxy's configuration as a typed value, checked here before the child reads it.
    let proxy = llmhub_proxy::config::RawConfig {
        listen: Some(loopback(args.proxy_port).to_string()),
        internal_listen: Some(loopback(args.proxy_internal_port).to_string()),
        control_plane_url: Some(format!("https://{grpc_addr}")),
        tls_ca_cert: Some(cert_dir.join(certs::CA_CERT)),
        tls_cert: Some(cert_dir.join("proxy-1.pem")),
        tls_key: Some(cert_dir.join("proxy-1.key")),
        proxy_id: Some("proxy-1".into()),
        log_format: Some("text".into()),
        egress_allow: Some(loopback_networks()),
        spool_dir: Some(dir.join("spool")),
        ..Default::default()
    };
    let text = toml::to_string(&proxy).context("writing the proxy configuration")?;
    proxy
        .validate()
        .map_err(|e| anyhow::anyhow!("proxy configuration: {e}"))?;
    let proxy_config = dir.join("proxy.toml");
    std::fs::write(&proxy_config, text).context("writing proxy.toml")?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let serve = tokio::spawn({
        let stop = async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        };
        async move { app.serve(&config, admin, grpc, stop).await }
    });

    // The proxy runs as its own process, from this same executable, so `cargo run -- up` needs
    // only one binary; `llmhub-proxy` runs the identical code.
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("proxy")
        .arg("--config")
        .arg(&proxy_config)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().context("starting the proxy process")?;
    // Held open for as long as we run: the proxy exits when this pipe closes, including when
    // this process is killed without a chance to clean up.
    let _lifeline = child.stdin.take().context("proxy stdin")?;
    let stdout = child.stdout.take().context("proxy stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut proxy_addr = None;
    while let Some(line) = lines.next_line().await.context("reading proxy output")? {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["event"] == "listening"
        {
            proxy_addr = v["public"].as_str().map(str::to_owned);
            break;
        }
    }
    let proxy_addr = proxy_addr.context("the proxy exited before it started listening")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    println!();
    println!(
        "  llm-hub is running (development mode: SQLite, in-process counters, dev certificates)"
    );
    println!("  admin API : http://{admin_addr}");
    println!("  proxy     : http://{proxy_addr}/v1");
    println!("  gRPC      : https://{grpc_addr} (mTLS)");
    println!("  data      : {}", dir.display());
    match &credentials {
        Some((user, password)) => {
            println!("  admin user: {user}");
            println!(
                "  password  : {}   <- shown once; store it now",
                password.as_str()
            );
        }
        None => println!("  admin user: already created on an earlier run"),
    }
    println!();

    tokio::select! {
        () = shutdown_signal() => {}
        status = child.wait() => {
            tracing::error!(status = ?status.ok(), "proxy process exited");
        }
    }
    let _ = child.start_kill();
    let _ = stop_tx.send(true);
    serve.await.context("control plane task")??;
    Ok(())
}
