//! The composition binary runs either plane with that plane's own start-up contract (and being
//! an integration test, it makes `cargo test --workspace` build the `llmhub` executable the
//! end-to-end `up` test spawns).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

fn llmhub() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmhub"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn proxy_with_bad_configuration_exits_64_naming_the_field() {
    let out = llmhub().arg("proxy").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tls_ca_cert"), "{stderr}");
}

#[test]
fn control_commands_are_the_control_planes() {
    let out = llmhub().args(["control", "routes"]).output().unwrap();
    assert!(out.status.success());
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == "/api/v1/providers"),
        "{routes}"
    );
    let out = llmhub().args(["control", "serve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");
}
