//! The private CA for the gRPC channel: a CA, the control plane's server certificate and proxy
//! client certificates, generated with rcgen. Private keys are written with mode 0600.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "control.pem";
pub const SERVER_KEY: &str = "control.key";
/// The DNS name proxies expect on the control plane's certificate.
pub const SERVER_NAME: &str = "llmhub-control";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "{0} already exists; pass --force to replace the CA (every certificate must then be reissued)"
    )]
    Exists(PathBuf),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {0:?}: use letters, digits, '-' and '.'")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path`, creating it with `mode` (0600 for private keys).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        // `mode` applies only on creation; an existing file is tightened explicitly.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
    }
    f.write_all(contents).map_err(io_err(path))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "llm-hub");
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// Creates the CA and the control plane's server certificate in `dir`.
pub fn init(dir: &Path, extra_sans: &[String], force: bool) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_path = dir.join(CA_CERT);
    if ca_path.exists() && !force {
        return Err(CertError::Exists(ca_path));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("llm-hub private CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, 3650);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_file(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sans = vec![
        SERVER_NAME.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    sans.extend(extra_sans.iter().cloned());
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = name(SERVER_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 825);
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Issues a proxy client certificate `<name>.pem` / `<name>.key` signed by the CA in `dir`.
pub fn issue_proxy(
    dir: &Path,
    proxy_name: &str,
    days: i64,
) -> Result<(PathBuf, PathBuf), CertError> {
    if proxy_name.is_empty()
        || proxy_name.len() > 64
        || !proxy_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(CertError::BadName(proxy_name.to_owned()));
    }
    let ca_pem = std::fs::read_to_string(dir.join(CA_CERT)).map_err(io_err(&dir.join(CA_CERT)))?;
    let ca_key_pem =
        std::fs::read_to_string(dir.join(CA_KEY)).map_err(io_err(&dir.join(CA_KEY)))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![proxy_name.to_owned()])?;
    params.distinguished_name = name(proxy_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{proxy_name}.pem"));
    let key_path = dir.join(format!("{proxy_name}.key"));
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ca_server_and_proxy_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["cp.internal".into()], false).unwrap();
        let (cert, key) = issue_proxy(dir.path(), "proxy-1", 365).unwrap();
        assert!(cert.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in [dir.path().join(CA_KEY), dir.path().join(SERVER_KEY), key] {
                let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", k.display());
            }
        }
        // A second init without --force refuses to replace the CA.
        assert!(matches!(
            init(dir.path(), &[], false),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            issue_proxy(dir.path(), "../x", 1),
            Err(CertError::BadName(_))
        ));
    }
}
