//! Self-signed certificates for the embedded default: a local CA and a server certificate it
//! signs, written once into the certificate directory and reused after. The only module that
//! knows rcgen.

use super::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The files of a certificate directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "vscode-on-demand local CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn gen(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Makes sure `dir` holds a server certificate and key. Existing files are kept (so a
/// certificate you provide is used as is); missing ones are generated, reusing the CA if it is
/// there. Returns the paths and whether anything was generated.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<(CertPaths, bool), TlsError> {
    let paths = CertPaths::in_dir(dir);
    if paths.server_cert.exists() && paths.server_key.exists() {
        return Ok((paths, false));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let ca_key = match (paths.ca_cert.exists(), read(&paths.ca_key)) {
        (true, Some(key)) => KeyPair::from_pem(&key).map_err(gen)?,
        _ => {
            let key = KeyPair::generate().map_err(gen)?;
            let cert = ca_params()?.self_signed(&key).map_err(gen)?;
            write(&paths.ca_key, &key.serialize_pem(), true)?;
            write(&paths.ca_cert, &cert.pem(), false)?;
            key
        }
    };
    // The CA's parameters are fixed, so rebuilding them reproduces the issuer name that its
    // certificate carries; the key identifier comes from the key itself.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("localhost", |h| h.as_str()),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    write(&paths.server_key, &key.serialize_pem(), true)?;
    write(&paths.server_cert, &cert.pem(), false)?;
    Ok((paths, true))
}
