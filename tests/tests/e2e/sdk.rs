//! The official `openai` and `anthropic` Python SDKs (pinned in tests/sdk/requirements.txt,
//! installed by `tests/run`) against a running proxy: chat, streaming, tool calls, translation,
//! embeddings, model list, and error mapping to the SDKs' own exception types.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use llmhub_e2e::harness::{Backend, ControlPlane};
use llmhub_e2e::mock::MockProvider;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_work_against_the_proxy() -> anyhow::Result<()> {
    let have_sdks = std::process::Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_sdks,
        "the Python SDKs are missing: run tests/run, or python3 -m pip install -r tests/sdk/requirements.txt"
    );
    let mock = MockProvider::start().await?;
    let cp = ControlPlane::start(Backend::Sqlite).await?;
    let oa = cp
        .add_provider("mock", "openai-compatible", &mock.base_url())
        .await?;
    cp.add_shared_key(&oa, "sk-mock-openai-0123456789").await?;
    let cooling = cp
        .add_provider("cooling", "openai-compatible", &mock.base_url())
        .await?;
    let cool_key = cp
        .add_shared_key(&cooling, "sk-mock-cooling-0123456789")
        .await?;
    let (s, v) = cp
        .api(
            "POST",
            "/api/v1/providers",
            Some(json!({"name": "anthropic", "preset": "anthropic", "base_url": mock.base_url()})),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    let an = v["id"].as_str().unwrap().to_owned();
    cp.add_shared_key(&an, "sk-ant-api03-0123456789abcdef")
        .await?;
    let an_cool = cp
        .api("POST", "/api/v1/providers", Some(json!({"name": "anthropic-cooling", "preset": "anthropic", "base_url": mock.base_url()})))
        .await?
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let an_cool_key = cp
        .add_shared_key(&an_cool, "sk-ant-api03-cooling-0123456789")
        .await?;
    cp.add_route("gpt-test", &oa, "mock-ok").await?;
    cp.add_route("gpt-tools", &oa, "mock-tools").await?;
    cp.add_route("gpt-cooling", &cooling, "mock-ok").await?;
    cp.add_route("claude", &an, "claude-mock").await?;
    cp.add_route("claude-cooling", &an_cool, "claude-mock")
        .await?;
    for (pid, key) in [(&cooling, &cool_key), (&an_cool, &an_cool_key)] {
        let (s, v) = cp
            .api(
                "POST",
                &format!(
                    "/api/v1/providers/{pid}/keys/{}/cooldown",
                    key["id"].as_str().unwrap()
                ),
                Some(json!({"seconds": 120})),
            )
            .await?;
        assert_eq!(s, 200, "{v}");
    }
    let client_key = cp.new_client_key("sdk").await?;
    let proxy = cp.ready_proxy("proxy-1").await?;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/sdk_test.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("LLMHUB_PROXY", &proxy.url)
        .env("LLMHUB_KEY", &client_key)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("13 passed, 0 failed"), "{stdout}");
    Ok(())
}
