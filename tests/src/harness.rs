//! Process harness. Every child is killed when its handle drops; every child's stdout and stderr
//! are captured so tests can assert that no secret was ever logged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Where the workspace's binaries are: `LLMHUB_BIN_DIR`, else the target directory this test
/// executable was built into (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LLMHUB_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found; run `cargo test --workspace` (it builds every binary) or set LLMHUB_BIN_DIR",
        p.display()
    );
    p
}

/// Installs the process-wide rustls provider (ring) that reqwest and tonic use in tests.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Captured output of every child process of a test.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, who: &str, line: &str) {
        let mut s = self.0.lock().unwrap();
        s.push_str(who);
        s.push_str(": ");
        s.push_str(line);
        s.push('\n');
    }

    /// Waits until `count` lines from `who` (a process name) contain `needle`.
    pub async fn wait_for(
        &self,
        who: &str,
        needle: &str,
        count: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let prefix = format!("{who}[");
        loop {
            let n = self
                .text()
                .lines()
                .filter(|l| l.starts_with(&prefix) && l.contains(needle))
                .count();
            if n >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "timed out waiting for {count}x {needle:?} in logs:\n{}",
                    self.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn capture(logs: &Logs, who: String, r: impl AsyncRead + Unpin + Send + 'static) {
    let logs = logs.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.push(&who, &line);
        }
    });
}

/// Spawns `cmd`, captures stderr, and reads stdout until a JSON line with `"event":"listening"`.
/// Returns the child, that line, and any JSON lines printed before it.
async fn spawn_until_listening(
    mut cmd: Command,
    who: &str,
    logs: &Logs,
) -> anyhow::Result<(Child, Value, Vec<Value>)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("spawning {who}"))?;
    capture(
        logs,
        format!("{who}[stderr]"),
        child.stderr.take().context("stderr")?,
    );
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut before = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            logs.push(&format!("{who}[stdout]"), &line);
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["event"] == "listening" {
                    return anyhow::Ok(Some(v));
                }
                before.push(v);
            }
        }
        Ok(None)
    })
    .await
    .context("timed out waiting for the listening line")??;
    let Some(listening) = found else {
        let status = child.wait().await?;
        bail!(
            "{who} exited ({status}) before listening; logs:\n{}",
            logs.text()
        );
    };
    let logs2 = logs.clone();
    let who2 = format!("{who}[stdout]");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            logs2.push(&who2, &line);
        }
    });
    Ok((child, listening, before))
}

/// Runs a command to completion, returning stdout (error with output on failure).
pub async fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: a SQLite file, or a uniquely named Postgres database dropped at the end.
pub struct Database {
    pub url: String,
    pg_name: Option<String>,
}

/// Base URL of the Postgres server used for tests (`LLMHUB_TEST_PG_URL`).
pub fn pg_admin_url() -> String {
    std::env::var("LLMHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn pg_url_for(db: &str) -> String {
    let base = pg_admin_url();
    let (head, _) = base.rsplit_once('/').expect("postgres url has a database");
    format!("{head}/{db}")
}

impl Database {
    /// A migrated database for one test: a copy of the schema's template (see [`template`]).
    pub async fn create(backend: Backend, dir: &Path) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => {
                let path = dir.join("llmhub.db");
                std::fs::copy(template(Backend::Sqlite).await?, &path)?;
                Ok(Database {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    pg_name: None,
                })
            }
            Backend::Postgres => {
                use sea_orm::ConnectionTrait;
                let template = template(Backend::Postgres).await?;
                let name = format!("llmhub_e2e_{}", uuid::Uuid::new_v4().simple());
                let admin = sea_orm::Database::connect(pg_admin_url())
                    .await
                    .context("connecting to Postgres (set LLMHUB_TEST_PG_URL)")?;
                admin
                    .execute_unprepared(&format!(
                        "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
                    ))
                    .await?;
                // A throwaway database: commits need not wait for the disk.
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{name}\" SET synchronous_commit = off"
                    ))
                    .await?;
                admin.close().await?;
                Ok(Database {
                    url: pg_url_for(&name),
                    pg_name: Some(name),
                })
            }
        }
    }

    /// Every byte the database holds, for leak checks: the SQLite file (and its WAL), or every
    /// row of every table as JSON for Postgres.
    pub async fn dump(&self) -> anyhow::Result<Vec<u8>> {
        use sea_orm::{ConnectionTrait, Statement};
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            let mut out = std::fs::read(path)?;
            for suffix in ["-wal", "-journal"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    out.extend(b);
                }
            }
            return Ok(out);
        }
        let db = sea_orm::Database::connect(&self.url).await?;
        let backend = db.get_database_backend();
        let tables = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            ))
            .await?;
        let mut out = Vec::new();
        for t in tables {
            let name: String = t.try_get("", "tablename")?;
            let rows = db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!("SELECT row_to_json(t)::text AS r FROM \"{name}\" t"),
                ))
                .await?;
            for row in rows {
                let r: String = row.try_get("", "r")?;
                out.extend_from_slice(r.as_bytes());
                out.push(b'\n');
            }
        }
        Ok(out)
    }
}

/// Runs `llmhub-control migrate` against the database at `url`.
async fn migrate(url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("migrate.toml");
    let mut toml = Toml::default();
    toml.str("database_url", url);
    std::fs::write(&config, toml.0)?;
    let mut cmd = Command::new(bin("llmhub-control"));
    cmd.arg("migrate").arg("--config").arg(&config);
    clear_llmhub_env(&mut cmd);
    run_ok(&mut cmd).await?;
    Ok(())
}

/// The schema the migrations build, as a key for [`template`]: a hash of the migration sources
/// (the binaries under test are built from them), or of the `llmhub-control` binary's size and
/// modification time when the sources are not beside this crate.
fn schema_key() -> &'static str {
    use std::hash::{Hash, Hasher};
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/src");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sources)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in &files {
            f.file_name().hash(&mut h);
            std::fs::read(f).unwrap_or_default().hash(&mut h);
        }
        if files.is_empty() {
            let meta = std::fs::metadata(bin("llmhub-control")).ok();
            meta.as_ref().map(std::fs::Metadata::len).hash(&mut h);
            meta.and_then(|m| m.modified().ok()).hash(&mut h);
        }
        format!("{:016x}", h.finish())
    })
}

/// A database migrated by `llmhub-control migrate`, which every test's database is copied from
/// instead of running every migration again (a third of a Postgres test's set-up). One per
/// schema ([`schema_key`]), kept as a cache between runs: a SQLite file in the target
/// directory, or a Postgres database `llmhub_e2e_tpl_<key>` (drop those to reclaim the space).
/// Concurrent test processes may build the same template; each builds under a name of its own
/// and the first rename wins.
async fn template(backend: Backend) -> anyhow::Result<String> {
    static SQLITE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    static POSTGRES: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let key = schema_key();
    let building = uuid::Uuid::new_v4().simple().to_string();
    match backend {
        Backend::Sqlite => SQLITE
            .get_or_try_init(|| async {
                // `target/<profile>`, where this test executable was built.
                let exe = std::env::current_exe()?;
                let dir = exe
                    .parent()
                    .and_then(Path::parent)
                    .context("target dir")?
                    .join("llmhub-e2e");
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("schema-{key}.db"));
                if !path.exists() {
                    let tmp = dir.join(format!("schema-{key}.{building}.db"));
                    migrate(&format!("sqlite://{}?mode=rwc", tmp.display())).await?;
                    for side in ["-wal", "-journal"] {
                        let side = format!("{}{side}", tmp.display());
                        anyhow::ensure!(
                            !Path::new(&side).exists(),
                            "migrate left {side} behind; the template would be incomplete"
                        );
                    }
                    std::fs::rename(&tmp, &path)?;
                }
                anyhow::Ok(path.display().to_string())
            })
            .await
            .cloned(),
        Backend::Postgres => POSTGRES
            .get_or_try_init(|| async {
                use sea_orm::ConnectionTrait;
                let name = format!("llmhub_e2e_tpl_{key}");
                let admin = sea_orm::Database::connect(pg_admin_url())
                    .await
                    .context("connecting to Postgres (set LLMHUB_TEST_PG_URL)")?;
                let exists = admin
                    .query_one_raw(sea_orm::Statement::from_string(
                        admin.get_database_backend(),
                        format!("SELECT 1 AS one FROM pg_database WHERE datname = '{name}'"),
                    ))
                    .await?
                    .is_some();
                if !exists {
                    let tmp = format!("llmhub_e2e_tpl_{key}_{}", &building[..8]);
                    admin
                        .execute_unprepared(&format!("CREATE DATABASE \"{tmp}\""))
                        .await?;
                    migrate(&pg_url_for(&tmp)).await?;
                    let renamed = admin
                        .execute_unprepared(&format!(
                            "ALTER DATABASE \"{tmp}\" RENAME TO \"{name}\""
                        ))
                        .await;
                    if renamed.is_err() {
                        // Another process got there first.
                        admin
                            .execute_unprepared(&format!("DROP DATABASE \"{tmp}\""))
                            .await?;
                    }
                }
                admin.close().await?;
                anyhow::Ok(name)
            })
            .await
            .cloned(),
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Dropping runs outside the test's runtime, on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use sea_orm::ConnectionTrait;
                let admin = sea_orm::Database::connect(pg_admin_url()).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// The JWT secret every test control plane uses, so tests can forge tokens.
pub const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdefghijklmnop";

/// A private Redis we can stop and start, on a port of its own.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Redis used by tests (`LLMHUB_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("LLMHUB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Self-service registration of the control plane (`registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Closed,
    Open,
    Approval,
}

/// Which Redis the control plane uses for its login counters and admin rate limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Redis {
    /// The test Redis ([`redis_url`]) with a key prefix of this control plane's own.
    #[default]
    Test,
    /// No Redis: in-process counters (the embedded default).
    None,
    /// This URL (e.g. an unreachable one), without a prefix.
    Url(String),
}

/// Where the control plane reads its master keys: version 1 ([`master_entry`]) either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MasterKeys {
    /// `master_keys` in the configuration file.
    #[default]
    Inline,
    /// `master_key_file`: [`ControlPlane::master_file`], which a test may rewrite and reload.
    File,
}

/// What a test changes in the control plane's configuration; `None` keeps the server default.
/// Rendered to TOML only by [`control_toml`].
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    pub registration: Option<Registration>,
    pub redis: Redis,
    pub master_keys: MasterKeys,
    /// Serve the admin API over TLS with the control plane's own server certificate (SAN
    /// 127.0.0.1); [`ControlPlane::admin_url`] is then `https://`.
    pub admin_tls: bool,
    /// Exact origins allowed by CORS.
    pub dashboard_origins: Vec<String>,
    pub login_max_failures: Option<u64>,
    /// Rendered in whole seconds.
    pub login_lock_base: Option<Duration>,
    /// Rendered in whole seconds.
    pub login_lock_max: Option<Duration>,
    pub login_ip_max_failures: Option<u64>,
    pub hash_concurrency: Option<usize>,
    pub admin_rate_limit_ip: Option<u64>,
    pub admin_rate_limit_user: Option<u64>,
    /// Take the client address from `X-Forwarded-For`, so a test can speak from many addresses.
    pub trust_forwarded_for: bool,
    /// `egress_allow`; `None` renders [`TEST_EGRESS_ALLOW`] (loopback, where the mock provider
    /// listens), `Some(vec![])` the server default (nothing internal allowed).
    pub egress_allow: Option<Vec<String>>,
}

/// What spawned control planes and proxies may reach unless a test says otherwise: loopback,
/// where the mock provider listens.
pub const TEST_EGRESS_ALLOW: &[&str] = &["127.0.0.0/8"];

/// What a test changes in a proxy's configuration; `None` keeps the proxy's default. Rendered to
/// TOML only by [`proxy_toml`].
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    pub breaker_failures: Option<u32>,
    /// Rendered in whole milliseconds.
    pub breaker_open: Option<Duration>,
    /// `egress_allow`; `None` renders [`TEST_EGRESS_ALLOW`], `Some(vec![])` the default (deny).
    pub egress_allow: Option<Vec<String>>,
    /// `redis_url` and `redis_prefix`: limits shared with every proxy given the same pair.
    pub redis: Option<(String, String)>,
    /// `redis_timeout_ms`.
    pub redis_timeout_ms: Option<u64>,
    /// `spool_dir`: routing records survive a restart of the proxy.
    pub spool_dir: Option<PathBuf>,
}

/// A TOML document built one `key = value` line at a time.
#[derive(Default)]
struct Toml(String);

impl Toml {
    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.raw(key, &toml_string(value))
    }

    fn path(&mut self, key: &str, value: &Path) -> &mut Self {
        self.str(key, &value.display().to_string())
    }

    fn num(&mut self, key: &str, value: Option<impl std::fmt::Display>) -> &mut Self {
        match value {
            Some(v) => self.raw(key, &v.to_string()),
            None => self,
        }
    }

    fn list(&mut self, key: &str, values: &[impl AsRef<str>]) -> &mut Self {
        let items: Vec<String> = values.iter().map(|v| toml_string(v.as_ref())).collect();
        self.raw(key, &format!("[{}]", items.join(", ")))
    }

    /// `egress_allow`: the test's list, or loopback for the mock provider.
    fn egress_allow(&mut self, allow: Option<&Vec<String>>) -> &mut Self {
        match allow {
            Some(list) => self.list("egress_allow", list),
            None => self.list("egress_allow", TEST_EGRESS_ALLOW),
        }
    }

    fn raw(&mut self, key: &str, value: &str) -> &mut Self {
        self.0.push_str(&format!("{key} = {value}\n"));
        self
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The control plane's configuration file: listeners on port 0, the certificates in `dir`, the
/// test JWT secret, then `options`.
fn control_toml(options: &ControlOptions, dir: &Path, database_url: &str) -> String {
    let certs = certs_dir(dir);
    let mut t = Toml::default();
    t.str("database_url", database_url)
        .str("admin_listen", "127.0.0.1:0")
        .str("grpc_listen", "127.0.0.1:0")
        .path("tls_ca_cert", &certs.join("ca.pem"))
        .path("tls_cert", &certs.join("control.pem"))
        .path("tls_key", &certs.join("control.key"))
        .str("jwt_secret", JWT_SECRET);
    match options.master_keys {
        MasterKeys::Inline => t.str("master_keys", &master_entry(1)),
        MasterKeys::File => t.path("master_key_file", &dir.join("master.key")),
    };
    match &options.redis {
        Redis::Test => t.str("redis_url", &redis_url()).str(
            "redis_prefix",
            &format!("llmhub-test-{}:", uuid::Uuid::new_v4().simple()),
        ),
        Redis::None => &mut t,
        Redis::Url(url) => t.str("redis_url", url),
    };
    if let Some(r) = options.registration {
        let r = match r {
            Registration::Closed => "closed",
            Registration::Open => "open",
            Registration::Approval => "approval",
        };
        t.str("registration", r);
    }
    if options.admin_tls {
        t.path("admin_tls_cert", &certs.join("control.pem"))
            .path("admin_tls_key", &certs.join("control.key"));
    }
    if !options.dashboard_origins.is_empty() {
        t.list("dashboard_origins", &options.dashboard_origins);
    }
    t.num("login_max_failures", options.login_max_failures)
        .num(
            "login_lock_base_secs",
            options.login_lock_base.map(|d| d.as_secs()),
        )
        .num(
            "login_lock_max_secs",
            options.login_lock_max.map(|d| d.as_secs()),
        )
        .num("login_ip_max_failures", options.login_ip_max_failures)
        .num("hash_concurrency", options.hash_concurrency)
        .num("admin_rate_limit_ip", options.admin_rate_limit_ip)
        .num("admin_rate_limit_user", options.admin_rate_limit_user);
    if options.trust_forwarded_for {
        t.raw("trust_forwarded_for", "true");
    }
    t.egress_allow(options.egress_allow.as_ref());
    t.0
}

/// A proxy's configuration file: listeners on port 0, the control plane at `grpc_addr` trusted
/// through `ca`, the client certificate `identity`, then `options`.
fn proxy_toml(
    options: &ProxyOptions,
    name: &str,
    grpc_addr: &str,
    ca: &Path,
    identity: (&Path, &Path),
) -> String {
    let mut t = Toml::default();
    t.str("listen", "127.0.0.1:0")
        .str("internal_listen", "127.0.0.1:0")
        .str("control_plane_url", &format!("https://{grpc_addr}"))
        .path("tls_ca_cert", ca)
        .str("proxy_id", name)
        .path("tls_cert", identity.0)
        .path("tls_key", identity.1)
        .num("breaker_failures", options.breaker_failures)
        .num(
            "breaker_open_ms",
            options.breaker_open.map(|d| d.as_millis()),
        );
    // A proxy built before `egress_allow` existed refuses the key (benchmarks compare such
    // builds: `LLMHUB_PROXY_BIN` below).
    if std::env::var_os("LLMHUB_PROXY_BIN").is_none() {
        t.egress_allow(options.egress_allow.as_ref());
    }
    if let Some((url, prefix)) = &options.redis {
        t.str("redis_url", url).str("redis_prefix", prefix);
    }
    t.num("redis_timeout_ms", options.redis_timeout_ms);
    if let Some(dir) = &options.spool_dir {
        t.path("spool_dir", dir);
    }
    t.0
}

/// A running control plane with its CA and a valid proxy certificate.
pub struct ControlPlane {
    pub dir: Arc<tempfile::TempDir>,
    pub db: Arc<Database>,
    pub admin_url: String,
    pub grpc_addr: String,
    pub admin_password: String,
    pub logs: Logs,
    pub http: reqwest::Client,
    child: Child,
    token: Mutex<Option<String>>,
}

pub fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}

impl ControlPlane {
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, ControlOptions::default()).await
    }

    /// Starts a control plane configured by `options` on a fresh database of `backend`.
    pub async fn start_with(backend: Backend, options: ControlOptions) -> anyhow::Result<Self> {
        install_crypto();
        let dir = tempfile::tempdir()?;
        let db = Database::create(backend, dir.path()).await?;
        let certs = certs_dir(dir.path());
        run_ok(
            Command::new(bin("llmhub-control"))
                .args(["certs", "init", "--dir"])
                .arg(&certs),
        )
        .await?;
        run_ok(
            Command::new(bin("llmhub-control"))
                .args(["certs", "proxy", "--name", "proxy-1", "--dir"])
                .arg(&certs),
        )
        .await?;
        if options.master_keys == MasterKeys::File {
            std::fs::write(
                dir.path().join("master.key"),
                format!("{}\n", master_entry(1)),
            )?;
        }
        let config = control_toml(&options, dir.path(), &db.url);
        let config_path = dir.path().join("control.toml");
        std::fs::write(&config_path, config)?;
        let dir = Arc::new(dir);
        let db = Arc::new(db);
        let logs = Logs::default();
        let (child, listening, before) = Self::serve(&config_path, "control", &logs).await?;
        let boot = before
            .iter()
            .find(|v| v["event"] == "bootstrap_admin")
            .context("no bootstrap_admin line on first start")?;
        let scheme = if options.admin_tls { "https" } else { "http" };
        Ok(ControlPlane {
            admin_url: format!(
                "{scheme}://{}",
                listening["admin"].as_str().context("admin")?
            ),
            grpc_addr: listening["grpc"].as_str().context("grpc")?.to_owned(),
            admin_password: boot["password"].as_str().context("password")?.to_owned(),
            dir,
            db,
            logs,
            http: reqwest::Client::new(),
            child,
            token: Mutex::new(None),
        })
    }

    async fn serve(
        config: &Path,
        who: &str,
        logs: &Logs,
    ) -> anyhow::Result<(Child, Value, Vec<Value>)> {
        let mut cmd = Command::new(bin("llmhub-control"));
        cmd.arg("serve").arg("--config").arg(config);
        clear_llmhub_env(&mut cmd);
        spawn_until_listening(cmd, who, logs).await
    }

    /// A second control-plane process on the same database, Redis prefix and secrets.
    pub async fn replica(&self) -> anyhow::Result<Self> {
        let (child, listening, _) =
            Self::serve(&self.dir.path().join("control.toml"), "replica", &self.logs).await?;
        Ok(ControlPlane {
            admin_url: format!("http://{}", listening["admin"].as_str().context("admin")?),
            grpc_addr: listening["grpc"].as_str().context("grpc")?.to_owned(),
            admin_password: self.admin_password.clone(),
            dir: self.dir.clone(),
            db: self.db.clone(),
            logs: self.logs.clone(),
            http: reqwest::Client::new(),
            child,
            token: Mutex::new(None),
        })
    }

    /// A request with an explicit bearer token (or none); returns status, headers and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.admin_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok((
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Creates a user through the admin API and returns its id.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: &str,
    ) -> anyhow::Result<String> {
        let (s, v) = self
            .api(
                "POST",
                "/api/v1/users",
                Some(json!({"username": username, "password": password, "role": role})),
            )
            .await?;
        anyhow::ensure!(s == 201, "create user {username}: {s} {v}");
        Ok(v["id"].as_str().context("id")?.to_owned())
    }

    /// Creates a provider (as admin) and returns its id.
    pub async fn add_provider(
        &self,
        name: &str,
        kind: &str,
        base_url: &str,
    ) -> anyhow::Result<String> {
        let (s, v) = self
            .api(
                "POST",
                "/api/v1/providers",
                Some(json!({"name": name, "kind": kind, "base_url": base_url})),
            )
            .await?;
        anyhow::ensure!(s == 201, "create provider {name}: {s} {v}");
        Ok(v["id"].as_str().context("id")?.to_owned())
    }

    /// Adds a key to the shared pool of a provider; returns the key's view.
    pub async fn add_shared_key(&self, provider_id: &str, key: &str) -> anyhow::Result<Value> {
        let (s, v) = self
            .api(
                "POST",
                &format!("/api/v1/providers/{provider_id}/keys"),
                Some(json!({"key": key, "shared": true})),
            )
            .await?;
        anyhow::ensure!(s == 201, "add key: {s} {v}");
        Ok(v)
    }

    /// Routes `public` to one provider target.
    pub async fn add_route(
        &self,
        public: &str,
        provider_id: &str,
        upstream: &str,
    ) -> anyhow::Result<()> {
        let (s, v) = self
            .api(
                "POST",
                "/api/v1/routes",
                Some(json!({"public_model": public, "targets": [{"provider_id": provider_id, "upstream_model": upstream}]})),
            )
            .await?;
        anyhow::ensure!(s == 201, "route {public}: {s} {v}");
        Ok(())
    }

    /// A new client key of the admin; returns the full key (shown once).
    pub async fn new_client_key(&self, name: &str) -> anyhow::Result<String> {
        let (s, v) = self
            .api("POST", "/api/v1/client-keys", Some(json!({"name": name})))
            .await?;
        anyhow::ensure!(s == 201, "client key: {s} {v}");
        Ok(v["key"].as_str().context("key")?.to_owned())
    }

    /// Logs in and returns the whole JSON body (access and refresh tokens).
    pub async fn login_tokens(&self, username: &str, password: &str) -> anyhow::Result<Value> {
        let r = self.login(username, password).await?;
        anyhow::ensure!(r.status() == 200, "login {username}: {}", r.status());
        Ok(r.json().await?)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("control.toml")
    }

    /// The master-key file (with [`MasterKeys::File`]).
    pub fn master_file(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    pub fn certs(&self) -> PathBuf {
        certs_dir(self.dir.path())
    }

    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/api/v1/auth/login", self.admin_url))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await?)
    }

    async fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.token.lock().unwrap().clone() {
            return Ok(t);
        }
        let resp = self.login("admin", &self.admin_password).await?;
        anyhow::ensure!(
            resp.status() == 200,
            "admin login failed: {}",
            resp.status()
        );
        let v: Value = resp.json().await?;
        let t = v["access_token"].as_str().context("token")?.to_owned();
        *self.token.lock().unwrap() = Some(t.clone());
        Ok(t)
    }

    /// An admin API call as the bootstrap admin; returns (status, JSON body).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let token = self.admin_token().await?;
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.admin_url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn snapshot_version(&self) -> anyhow::Result<u64> {
        let (s, v) = self.api("GET", "/api/v1/fleet", None).await?;
        anyhow::ensure!(s == 200, "fleet: {s} {v}");
        v["snapshot_version"].as_u64().context("version")
    }

    /// Starts a proxy with the given client certificate (or none at all).
    pub async fn spawn_proxy(
        &self,
        name: &str,
        identity: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Proxy> {
        self.spawn_proxy_with(name, identity, &ProxyOptions::default())
            .await
    }

    /// Like [`ControlPlane::spawn_proxy`], configured by `options`.
    pub async fn spawn_proxy_with(
        &self,
        name: &str,
        identity: Option<(&Path, &Path)>,
        options: &ProxyOptions,
    ) -> anyhow::Result<Proxy> {
        let dir = self.dir.path();
        let (cert, key) = match identity {
            Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
            None => {
                // The proxy refuses to start without a client certificate; give it an empty one
                // so the TLS layer, not the config check, is what is tested.
                let empty = dir.join(format!("{name}-empty.pem"));
                std::fs::write(&empty, "")?;
                (empty.clone(), empty)
            }
        };
        let toml = proxy_toml(
            options,
            name,
            &self.grpc_addr,
            &self.certs().join("ca.pem"),
            (&cert, &key),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml)?;
        // `LLMHUB_PROXY_BIN` runs another proxy build against this control plane (benchmarks).
        let proxy_bin =
            std::env::var_os("LLMHUB_PROXY_BIN").map_or_else(|| bin("llmhub-proxy"), PathBuf::from);
        let mut cmd = Command::new(proxy_bin);
        cmd.arg("--config").arg(&path);
        clear_llmhub_env(&mut cmd);
        let (child, listening, _) = spawn_until_listening(cmd, name, &self.logs).await?;
        Ok(Proxy {
            url: format!("http://{}", listening["public"].as_str().context("public")?),
            internal_url: format!(
                "http://{}",
                listening["internal"].as_str().context("internal")?
            ),
            http: reqwest::Client::new(),
            _child: child,
        })
    }

    /// The standard proxy with the valid certificate, once it serves the current snapshot.
    pub async fn ready_proxy(&self, name: &str) -> anyhow::Result<Proxy> {
        self.ready_proxy_with(name, &ProxyOptions::default()).await
    }

    /// A ready proxy configured by `options`.
    pub async fn ready_proxy_with(
        &self,
        name: &str,
        options: &ProxyOptions,
    ) -> anyhow::Result<Proxy> {
        let certs = self.certs();
        let p = self
            .spawn_proxy_with(
                name,
                Some((&certs.join("proxy-1.pem"), &certs.join("proxy-1.key"))),
                options,
            )
            .await?;
        p.wait_for_version(self.snapshot_version().await?).await?;
        Ok(p)
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill_now(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Starts the control plane again on the same database, secrets and addresses (after
    /// [`ControlPlane::kill_now`]), so connected proxies find it where it was.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let admin = self
            .admin_url
            .split("://")
            .nth(1)
            .context("admin url")?
            .to_owned();
        let config = std::fs::read_to_string(self.dir.path().join("control.toml"))?
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\""),
            )
            .replace(
                "grpc_listen = \"127.0.0.1:0\"",
                &format!("grpc_listen = \"{}\"", self.grpc_addr),
            );
        let path = self.dir.path().join("control-restart.toml");
        std::fs::write(&path, config)?;
        let (child, _, _) = Self::serve(&path, "control-restart", &self.logs).await?;
        self.child = child;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")?;
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        Ok(tokio::time::timeout(within, self.child.wait())
            .await
            .context("did not exit in time after SIGTERM")??)
    }
}

fn clear_llmhub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LLMHUB_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
}

/// The test master key of a version: `VERSION:BASE64` of 32 bytes derived from the version.
pub fn master_entry(version: u8) -> String {
    use base64::Engine;
    format!(
        "{version}:{}",
        base64::engine::general_purpose::STANDARD
            .encode([version.wrapping_mul(37).wrapping_add(7); 32])
    )
}

pub struct Proxy {
    pub url: String,
    pub internal_url: String,
    /// Reused: building a client per call costs milliseconds (root certificates).
    http: reqwest::Client,
    _child: Child,
}

impl Proxy {
    /// SIGKILL (`kill -9`), and waits for the process to be gone.
    pub async fn kill_now(&mut self) -> anyhow::Result<()> {
        self._child.start_kill()?;
        self._child.wait().await?;
        Ok(())
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.internal_url))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The proxy process's id (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self._child.id()
    }

    pub async fn readyz(&self) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}/readyz", self.internal_url))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await?))
    }

    /// Waits until the proxy has applied at least `n` key-state deltas.
    pub async fn wait_for_deltas(&self, n: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, v) = self.readyz().await?;
            if v["deltas_applied"].as_u64().unwrap_or(0) >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("proxy never applied {n} deltas: {v}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn deltas_applied(&self) -> anyhow::Result<u64> {
        Ok(self.readyz().await?.1["deltas_applied"]
            .as_u64()
            .unwrap_or(0))
    }

    /// Waits until the proxy serves a snapshot at least as new as `version`.
    pub async fn wait_for_version(&self, version: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self.readyz().await?;
            if v["snapshot_version"].as_u64().unwrap_or(0) >= version {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("proxy never reached snapshot {version}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
