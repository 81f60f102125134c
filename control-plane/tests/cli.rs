//! The binary's start-up contract: bad configuration exits with status 64 and names the field.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

fn control() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmhub-control"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            c.env_remove(k);
        }
    }
    c
}

fn expect_config_error(c: &mut Command, field: &str) {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains(field),
        "error should name {field}: {stderr}"
    );
}

#[test]
fn missing_database_url_exits_64() {
    expect_config_error(control().arg("serve"), "database_url");
}

#[test]
fn unknown_file_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "database_url = \"sqlite://x.db\"\nadmin_listn = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    expect_config_error(
        control().arg("serve").arg("--config").arg(&p),
        "admin_listn",
    );
}

#[test]
fn weak_jwt_secret_and_missing_master_key_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let st = control()
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .status()
        .unwrap();
    assert!(st.success());
    let base = format!(
        "database_url = \"sqlite://{}/x.db?mode=rwc\"\ntls_ca_cert = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.path().display(),
        certs.join("ca.pem"),
        certs.join("control.pem"),
        certs.join("control.key")
    );
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        format!("{base}jwt_secret = \"0123456789abcdef0123456789abcdef\"\n"),
    )
    .unwrap();
    expect_config_error(
        control().arg("serve").arg("--config").arg(&p),
        "master_keys",
    );
    let out = control().arg("gen-master-key").output().unwrap();
    let entry = String::from_utf8(out.stdout).unwrap();
    std::fs::write(
        &p,
        format!(
            "{base}master_keys = {:?}\njwt_secret = \"short\"\n",
            entry.trim()
        ),
    )
    .unwrap();
    expect_config_error(control().arg("serve").arg("--config").arg(&p), "jwt_secret");
    // The environment overrides the file.
    std::fs::write(
        &p,
        format!(
            "{base}master_keys = {:?}\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n",
            entry.trim()
        ),
    )
    .unwrap();
    expect_config_error(
        control()
            .arg("serve")
            .arg("--config")
            .arg(&p)
            .env("LLMHUB_ADMIN_LISTEN", "not-an-address"),
        "admin_listen",
    );
    // A retention of no days (the file's, or the environment's) would drop today's records.
    for (file, env) in [("record_retention_days = 0\n", None), ("", Some("0"))] {
        std::fs::write(
            &p,
            format!(
                "{base}master_keys = {:?}\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n{file}",
                entry.trim()
            ),
        )
        .unwrap();
        let mut c = control();
        c.arg("serve").arg("--config").arg(&p);
        if let Some(v) = env {
            c.env("LLMHUB_RECORD_RETENTION_DAYS", v);
        }
        expect_config_error(&mut c, "record_retention_days");
    }
}

#[test]
fn serve_refuses_an_unmigrated_database() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(
        control()
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .status()
            .unwrap()
            .success()
    );
    let out = control().arg("gen-master-key").output().unwrap();
    let entry = String::from_utf8(out.stdout).unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        format!(
            "database_url = \"sqlite://{}/x.db?mode=rwc\"\ntls_ca_cert = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             master_keys = {:?}\njwt_secret = \"0123456789abcdef0123456789abcdef\"\nadmin_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n",
            dir.path().display(),
            certs.join("ca.pem"),
            certs.join("control.pem"),
            certs.join("control.key"),
            entry.trim()
        ),
    )
    .unwrap();
    let out = control()
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("llmhub-control migrate"));
}
