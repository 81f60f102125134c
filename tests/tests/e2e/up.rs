//! `llmhub up`: the one-command development setup, started twice on the same data.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use llmhub_e2e::harness::{bin, install_crypto};
use llmhub_e2e::mock::MockProvider;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Up {
    child: Child,
    admin: String,
    proxy: String,
    password: Option<String>,
    output: String,
}

async fn start_up(data: &Path) -> anyhow::Result<Up> {
    let mut cmd = Command::new(bin("llmhub"));
    cmd.args([
        "up",
        "--admin-port",
        "0",
        "--grpc-port",
        "0",
        "--proxy-port",
        "0",
    ])
    .args(["--proxy-internal-port", "0", "--data-dir"])
    .arg(data)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let (mut admin, mut proxy, mut password, mut output) = (None, None, None, String::new());
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            output.push_str(&line);
            output.push('\n');
            let value = |l: &str| l.split_once(": ").map(|(_, v)| v.trim().to_owned());
            let t = line.trim_start();
            if t.starts_with("admin API") {
                admin = value(t);
            } else if t.starts_with("proxy ") {
                proxy = value(t).map(|v| v.trim_end_matches("/v1").to_owned());
            } else if t.starts_with("password") {
                password = value(t).and_then(|v| v.split_whitespace().next().map(str::to_owned));
            } else if t.starts_with("admin user: already created") {
                break;
            } else if t.starts_with("admin user") {
                continue;
            }
            if admin.is_some() && proxy.is_some() && password.is_some() {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Up {
        child,
        admin: admin.with_context(|| format!("no admin URL in:\n{output}"))?,
        proxy: proxy.with_context(|| format!("no proxy URL in:\n{output}"))?,
        password,
        output,
    })
}

async fn stop(mut up: Up) -> anyhow::Result<()> {
    let pid = up.child.id().context("pid")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(30), up.child.wait()).await??;
    assert!(status.success(), "up exited with {status}");
    Ok(())
}

async fn login(http: &reqwest::Client, admin: &str, password: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{admin}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "login: {}", r.status());
    Ok(r.json::<Value>().await?["access_token"]
        .as_str()
        .context("token")?
        .to_owned())
}

async fn wait_ready(
    http: &reqwest::Client,
    proxy: &str,
    key: &str,
) -> anyhow::Result<reqwest::Response> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = http
            .post(format!("{proxy}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "dev", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        // 401/503 until the snapshot with the new client key has reached the proxy.
        if r.status() == 200 || tokio::time::Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_everything_and_reuses_its_data() -> anyhow::Result<()> {
    install_crypto();
    let mock = MockProvider::start().await?;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().join("data");
    let http = reqwest::Client::new();

    let first = start_up(&data_dir).await?;
    let password = first
        .password
        .clone()
        .with_context(|| format!("no one-time password:\n{}", first.output))?;
    let token = login(&http, &first.admin, &password).await?;
    let api = |m: reqwest::Method, p: &str| {
        http.request(m, format!("{}{p}", first.admin))
            .bearer_auth(&token)
    };
    let p: Value = api(reqwest::Method::POST, "/api/v1/providers")
        .json(&json!({"name": "mock", "kind": "openai-compatible", "base_url": mock.base_url()}))
        .send()
        .await?
        .json()
        .await?;
    let pid = p["id"].as_str().context("provider id")?.to_owned();
    let s = api(
        reqwest::Method::POST,
        &format!("/api/v1/providers/{pid}/keys"),
    )
    .json(&json!({"key": "sk-dev-0123456789abcdef"}))
    .send()
    .await?
    .status();
    assert_eq!(s, 201);
    let s = api(reqwest::Method::POST, "/api/v1/routes")
        .json(&json!({"public_model": "dev", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))
        .send()
        .await?
        .status();
    assert_eq!(s, 201);
    let ck: Value = api(reqwest::Method::POST, "/api/v1/client-keys")
        .json(&json!({"name": "dev"}))
        .send()
        .await?
        .json()
        .await?;
    let key = ck["key"].as_str().context("client key")?.to_owned();
    let r = wait_ready(&http, &first.proxy, &key).await?;
    assert_eq!(r.status(), 200);

    // Generated secrets are private to the owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            "master.key",
            "jwt.secret",
            "certs/ca.key",
            "certs/control.key",
            "certs/proxy-1.key",
        ] {
            let mode = std::fs::metadata(data_dir.join(f))?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
    stop(first).await?;

    // Second run: same data, same admin password, no new one printed, the key still works.
    let second = start_up(&data_dir).await?;
    assert!(
        second.password.is_none(),
        "a second password was printed:\n{}",
        second.output
    );
    assert!(second.output.contains("already created"));
    login(&http, &second.admin, &password).await?;
    let r = wait_ready(&http, &second.proxy, &key).await?;
    assert_eq!(r.status(), 200);
    stop(second).await?;
    Ok(())
}
