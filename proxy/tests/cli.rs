//! The binary's start-up contract: bad configuration exits with status 64 and names the field.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

fn proxy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmhub-proxy"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn missing_certificates_exit_64() {
    let out = proxy().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tls_ca_cert"), "{stderr}");
}

#[test]
fn plaintext_control_plane_url_exits_64() {
    let out = proxy()
        .env("LLMHUB_CONTROL_PLANE_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("control_plane_url"), "{stderr}");
}
