//! The control plane's credentials: a CA, the API server's certificate (made with `openssl`),
//! the ServiceAccount signing key, static bearer tokens, and kubeconfigs that use them.

use super::SERVICE_IP;
use std::path::Path;
use std::process::Command;

pub(super) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A CA, the API server's certificate, the ServiceAccount signing key and static tokens
/// (the admin in `system:masters`; the controller manager and the scheduler as their own users
/// so their bootstrap RBAC roles apply, as in a real cluster).
pub(super) fn make_pki(pki: &Path) {
    if pki.join("tokens.csv").exists() {
        return;
    }
    std::fs::create_dir_all(pki).unwrap();
    set_mode(pki, 0o700);
    let cnf = format!(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = vod-test\n\
         [ca_ext]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier = hash\n\
         [server_ext]\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
         subjectAltName = IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,\
         DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    );
    std::fs::write(pki.join("openssl.cnf"), cnf).unwrap();
    let serial = format!("0x{}", hex(&rand::random::<[u8; 16]>()));
    let steps: [&[&str]; 5] = [
        &[
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca_ext",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=vod-test-ca",
        ],
        &[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "server_ext",
            "-out",
            "apiserver.crt",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tokens = format!(
        "{},vod-admin,vod-admin,\"system:masters\"\n\
         {},system:kube-controller-manager,system:kube-controller-manager\n\
         {},system:kube-scheduler,system:kube-scheduler\n",
        hex(&rand::random::<[u8; 32]>()),
        hex(&rand::random::<[u8; 32]>()),
        hex(&rand::random::<[u8; 32]>())
    );
    std::fs::write(pki.join("tokens.csv.tmp"), tokens).unwrap();
    std::fs::rename(pki.join("tokens.csv.tmp"), pki.join("tokens.csv")).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn write_kubeconfig(file: &Path, server: &str, ca: &Path, user: &str, token: &str) {
    std::fs::write(file, kubeconfig(server, ca, user, token, None)).unwrap();
    set_mode(file, 0o600);
}

/// A kubeconfig for `server` (trusting `ca`) that authenticates as `user` with a bearer token,
/// in `namespace` when one is given.
pub fn kubeconfig(
    server: &str,
    ca: &Path,
    user: &str,
    token: &str,
    namespace: Option<&str>,
) -> String {
    let namespace = namespace.map_or_else(String::new, |ns| format!("    namespace: {ns}\n"));
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: vod-test\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: vod-test\n  context:\n    cluster: vod-test\n    user: {user}\n{namespace}\
         current-context: vod-test\n",
        ca.display()
    )
}
