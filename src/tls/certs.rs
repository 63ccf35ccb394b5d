//! Certificates for the embedded default: a local CA, name-constrained to the hosts this
//! server answers for, and the server certificate it signs, both kept in the certificate
//! directory; and, for host routing, a certificate minted per instance host. The only module
//! that knows rcgen.
//!
//! What we generated is recorded in `generated.json` beside the files: a certificate with no
//! record is yours and is used as is. Ours are made again when they no longer cover the hosts,
//! when they are near expiry, and (the CA) when it predates name constraints.

use super::TlsError;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 24 * 3600;
/// The CA: what a user imports into a browser, so it lives long, but not for centuries.
const CA_DAYS: u64 = 10 * 365;
/// Server and instance certificates: within what browsers accept from a user-added CA.
const SERVER_DAYS: u64 = 365;
/// A certificate with less than this left is made again at start.
const RENEW_BEFORE_DAYS: u64 = 30;

/// The files of a certificate directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    record: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            record: dir.join("generated.json"),
        }
    }
}

/// What we generated: the names each certificate covers and when it expires (Unix seconds).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Record {
    ca: Option<Issued>,
    server: Option<Issued>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Issued {
    names: Vec<String>,
    not_after: u64,
}

impl Issued {
    fn fresh(&self, now: u64) -> bool {
        self.not_after > now + RENEW_BEFORE_DAYS * DAY
    }
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    // Written aside and renamed, so a crash never leaves half a key.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn gen(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn time_at(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Sets a validity from an hour ago (clocks differ a little) for `days`; returns its end.
fn validity(params: &mut CertificateParams, now: u64, days: u64) -> u64 {
    let not_after = now + days * DAY;
    params.not_before = time_at(now.saturating_sub(3600));
    params.not_after = time_at(not_after);
    not_after
}

/// The CA's subject and limits. Name constraints keep it from vouching for any name but
/// these hosts and their subdomains (and these addresses), so trusting it in a browser trusts
/// nothing else. Rebuilding the parameters reproduces the issuer name its certificate carries.
fn ca_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "vscode-on-demand local CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A wildcard name is constrained by the name under it.
    let mut bases: Vec<&str> = names.iter().map(|n| n.trim_start_matches("*.")).collect();
    bases.sort_unstable();
    bases.dedup();
    let permitted = bases
        .into_iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip,
                if ip.is_ipv4() { 32 } else { 128 },
            )),
            Err(_) => GeneralSubtree::DnsName(n.to_owned()),
        })
        .collect();
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    Ok(params)
}

fn server_params(names: &[String], now: u64) -> Result<(CertificateParams, u64), TlsError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", |h| h.as_str()),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // RFC 5280 requires it in certificates a CA issues; strict validators refuse a chain
    // without it.
    params.use_authority_key_identifier_extension = true;
    let not_after = validity(&mut params, now, SERVER_DAYS);
    Ok((params, not_after))
}

/// Whether `names` lie within the CA's: the same name, a subdomain, or the same address.
fn covered(ca_names: &[String], names: &[String]) -> bool {
    names.iter().all(|n| {
        ca_names
            .iter()
            .map(|c| c.trim_start_matches("*."))
            .any(|c| {
                n.eq_ignore_ascii_case(c)
                    || (c.parse::<IpAddr>().is_err()
                        && n.len() > c.len()
                        && n.as_bytes()[n.len() - c.len() - 1] == b'.'
                        && n[n.len() - c.len()..].eq_ignore_ascii_case(c))
            })
    })
}

/// Makes sure `dir` holds a server certificate and key valid for `hosts`. A certificate you
/// provide (no record of ours) is used as is; ours are made when missing, stale or too narrow,
/// reusing the CA while it covers the hosts and is not near expiry. Returns the paths and
/// whether anything was generated.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<(CertPaths, bool), TlsError> {
    let paths = CertPaths::in_dir(dir);
    let record: Option<Record> = std::fs::read(&paths.record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let have_server = paths.server_cert.exists() && paths.server_key.exists();
    // A server certificate without a record is yours, unless our CA key sits beside it
    // (generated before records were kept).
    if have_server && record.is_none() && !paths.ca_key.exists() {
        return Ok((paths, false));
    }
    let mut record = record.unwrap_or_default();
    let now = now_secs();
    let ca_ok = record
        .ca
        .as_ref()
        .is_some_and(|ca| ca.fresh(now) && covered(&ca.names, hosts));
    let server_ok = have_server
        && ca_ok
        && record
            .server
            .as_ref()
            .is_some_and(|s| s.fresh(now) && s.names == hosts);
    if server_ok {
        return Ok((paths, false));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let ca_names = match (&record.ca, read(&paths.ca_key)) {
        (Some(ca), Some(_)) if ca_ok => ca.names.clone(),
        (old, _) => {
            if old.is_some() || paths.ca_cert.exists() {
                tracing::warn!(
                    cert = %paths.ca_cert.display(),
                    "replacing the local CA (expiring, too narrow for the hosts, or without name                      constraints); import the new ca.crt where you trusted the old one"
                );
            }
            let key = KeyPair::generate().map_err(gen)?;
            let mut params = ca_params(hosts)?;
            let not_after = validity(&mut params, now, CA_DAYS);
            let cert = params.self_signed(&key).map_err(gen)?;
            write(&paths.ca_key, &key.serialize_pem(), true)?;
            write(&paths.ca_cert, &cert.pem(), false)?;
            record.ca = Some(Issued {
                names: hosts.to_vec(),
                not_after,
            });
            hosts.to_vec()
        }
    };
    let issuer = Issuer::new(ca_params(&ca_names)?, load_key(&paths.ca_key)?);
    let key = KeyPair::generate().map_err(gen)?;
    let (params, not_after) = server_params(hosts, now)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    write(&paths.server_key, &key.serialize_pem(), true)?;
    write(&paths.server_cert, &cert.pem(), false)?;
    record.server = Some(Issued {
        names: hosts.to_vec(),
        not_after,
    });
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    write(&paths.record, &json, false)?;
    Ok((paths, true))
}

fn load_key(path: &Path) -> Result<KeyPair, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    KeyPair::from_pem(&pem).map_err(gen)
}

/// Signs a certificate for one instance host at a time, with the local CA.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    ca_names: Vec<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Minter {
    /// The local CA of `dir`, if we generated it and its key is there.
    pub fn from_dir(
        dir: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Option<Self>, TlsError> {
        let paths = CertPaths::in_dir(dir);
        let record: Option<Record> = std::fs::read(&paths.record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(ca) = record.and_then(|r| r.ca) else {
            return Ok(None);
        };
        if !paths.ca_key.exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            issuer: Issuer::new(ca_params(&ca.names)?, load_key(&paths.ca_key)?),
            ca_names: ca.names,
            provider,
        }))
    }

    /// A certificate and key for `name`, if the CA may vouch for it.
    pub fn mint(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let names = [name.to_owned()];
        if !covered(&self.ca_names, &names) {
            return Err(TlsError::Generate(format!(
                "{name} is outside the local CA's names"
            )));
        }
        let key = KeyPair::generate().map_err(gen)?;
        let (mut params, _) = server_params(&names, now_secs())?;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(gen)?)];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = self.provider.key_provider.load_private_key(der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signer,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_within_the_ca() {
        let ca = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let ok = |n: &str| covered(&ca, &[n.to_owned()]);
        assert!(ok("localhost"));
        assert!(ok("u-1.localhost"));
        assert!(ok("127.0.0.1"));
        assert!(!ok("xlocalhost"));
        assert!(!ok("example.com"));
        assert!(!ok("1.127.0.0.1"));
        assert!(ok("*.localhost"));
        assert!(covered(&["*.h.test".to_owned()], &["a.h.test".to_owned()]));
    }
}
