//! The gRPC listener accepts only proxies with a client certificate from the control plane's CA
//! that is currently valid. Refused proxies never get an RPC through.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use llmhub_e2e::harness::{Backend, ControlPlane, bin, run_ok};
use llmhub_proto::ControlPlaneClient;
use llmhub_proto::v1::WatchRequest;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Issues a proxy certificate from the CA in `ca_dir` that expired yesterday.
fn expired_cert(
    ca_dir: &Path,
    out: &Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["proxy-expired".to_owned()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer)?;
    let (c, k) = (out.join("expired.pem"), out.join("expired.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// A direct Watch call with the given identity (or none).
async fn try_watch(cp: &ControlPlane, identity: Option<(&Path, &Path)>) -> anyhow::Result<()> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            cp.certs().join("ca.pem"),
        )?))
        .domain_name("llmhub-control");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(c)?, std::fs::read(k)?));
    }
    let channel = Endpoint::from_shared(format!("https://{}", cp.grpc_addr))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = ControlPlaneClient::new(channel);
    let mut stream = client
        .watch(WatchRequest {
            proxy_id: "intruder".into(),
            known_version: 0,
        })
        .await?
        .into_inner();
    stream.message().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_missing_foreign_and_expired_certificates() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let work = tempfile::tempdir()?;

    // Another CA with a perfectly valid proxy certificate of its own.
    let other = work.path().join("other-ca");
    run_ok(
        tokio::process::Command::new(bin("llmhub-control"))
            .args(["certs", "init", "--dir"])
            .arg(&other),
    )
    .await?;
    run_ok(
        tokio::process::Command::new(bin("llmhub-control"))
            .args(["certs", "proxy", "--name", "proxy-x", "--dir"])
            .arg(&other),
    )
    .await?;
    let (exp_cert, exp_key) = expired_cert(&cp.certs(), work.path())?;

    // The direct client works with the right certificate, so its failures below mean refusal.
    try_watch(
        &cp,
        Some((
            &cp.certs().join("proxy-1.pem"),
            &cp.certs().join("proxy-1.key"),
        )),
    )
    .await
    .expect("a valid certificate must be accepted");
    // Direct clients: every handshake or call fails.
    assert!(
        try_watch(&cp, None).await.is_err(),
        "no client certificate was accepted"
    );
    assert!(
        try_watch(
            &cp,
            Some((&other.join("proxy-x.pem"), &other.join("proxy-x.key")))
        )
        .await
        .is_err(),
        "a certificate from another CA was accepted"
    );
    assert!(
        try_watch(&cp, Some((&exp_cert, &exp_key))).await.is_err(),
        "an expired certificate was accepted"
    );

    // Real proxies with those certificates never become ready.
    let foreign = cp
        .spawn_proxy(
            "proxy-foreign",
            Some((&other.join("proxy-x.pem"), &other.join("proxy-x.key"))),
        )
        .await?;
    let expired = cp
        .spawn_proxy("proxy-expired", Some((&exp_cert, &exp_key)))
        .await?;
    for name in ["proxy-foreign", "proxy-expired"] {
        cp.logs
            .wait_for(
                name,
                "control plane watch failed",
                2,
                Duration::from_secs(30),
            )
            .await?;
    }
    assert_eq!(foreign.readyz().await?.0, 503);
    assert_eq!(expired.readyz().await?.0, 503);

    // No RPC ran for them: only the one valid direct call above reached a handler.
    let (_, fleet) = cp.api("GET", "/api/v1/fleet", None).await?;
    assert_eq!(fleet["rpc"]["watch_calls"], 1, "{fleet}");
    assert_eq!(fleet["rpc"]["report_calls"], 0, "{fleet}");
    assert_eq!(fleet["proxies"].as_array().unwrap().len(), 0);

    // The control: the right certificate is accepted, and the counters see it.
    let good = cp.ready_proxy("proxy-good").await?;
    assert_eq!(good.readyz().await?.0, 200);
    let (_, fleet) = cp.api("GET", "/api/v1/fleet", None).await?;
    assert!(
        fleet["rpc"]["watch_calls"].as_u64().unwrap() >= 1,
        "{fleet}"
    );
    assert_eq!(fleet["proxies"][0]["proxy_id"], "proxy-good");
    Ok(())
}

/// The proxy keeps serving its last snapshot while the control plane is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_serving_when_control_plane_dies() -> anyhow::Result<()> {
    let mock = llmhub_e2e::mock::MockProvider::start().await?;
    let mut cp = ControlPlane::start(Backend::Sqlite).await?;
    let (_, p) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(serde_json::json!({"name": "m", "kind": "openai", "base_url": mock.base_url()})),
        )
        .await?;
    let pid = p["id"].as_str().unwrap().to_owned();
    cp.api(
        "POST",
        &format!("/api/v1/providers/{pid}/keys"),
        Some(serde_json::json!({"key": "sk-test-0123456789abcdef"})),
    )
    .await?;
    cp.api("POST", "/api/v1/routes", Some(serde_json::json!({"public_model": "m1", "targets": [{"provider_id": pid, "upstream_model": "mock-ok"}]}))).await?;
    let (_, ck) = cp
        .api(
            "POST",
            "/api/v1/client-keys",
            Some(serde_json::json!({"name": "k"})),
        )
        .await?;
    let key = ck["key"].as_str().unwrap().to_owned();
    let proxy = cp.ready_proxy("proxy-1").await?;
    cp.kill();
    cp.logs
        .wait_for(
            "proxy-1",
            "control plane watch failed",
            1,
            Duration::from_secs(30),
        )
        .await?;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let (code, ready) = proxy.readyz().await?;
    assert_eq!(code, 200);
    assert_eq!(ready["control_plane_connected"], false);
    Ok(())
}

/// SIGTERM ends the endless Watch streams so the control plane exits promptly and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_shuts_down_with_proxies_connected() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start(Backend::Sqlite).await?;
    let proxy = cp.ready_proxy("proxy-1").await?;
    let status = cp.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status}");
    cp.logs
        .wait_for(
            "proxy-1",
            "serving last snapshot",
            1,
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(proxy.readyz().await?.0, 200, "the proxy keeps its snapshot");
    Ok(())
}
