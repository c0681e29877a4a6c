//! Certificates made at test run time (rcgen, never checked in): a throw-away CA, a server
//! certificate it signs for `localhost` / `127.0.0.1` (plus any extra names), client
//! certificates it signs, and rustls server configurations for the recording backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A PEM certificate and its private key, written to files for tailsift to read.
pub struct Issued {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// PEM certificate file.
    pub cert_file: PathBuf,
    /// PEM key file.
    pub key_file: PathBuf,
}

/// A run-time certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate as a PEM file (what `tls_ca_file` points at).
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    /// Makes a CA and writes its certificate (and later the ones it issues) into `dir`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("create CA directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tailsift test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).expect("write ca.pem");
        TestCa {
            issuer,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        self.issue_for(name, sans, vec![usage])
    }

    fn issue_for(&self, name: &str, sans: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Issued {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_file,
            key_file,
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` plus `extra` names.
    pub fn server_cert(&self, extra: &[&str]) -> Issued {
        let mut sans = vec!["localhost", "127.0.0.1"];
        sans.extend_from_slice(extra);
        self.issue("server", &sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate valid only for `names` (no `127.0.0.1`).
    pub fn server_cert_for(&self, names: &[&str]) -> Issued {
        self.issue("named-server", names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A cluster member's certificate named `name`, for `localhost` / `127.0.0.1`, valid as TLS
    /// server and client (peers dial each other both ways).
    pub fn peer_cert(&self, name: &str) -> Issued {
        self.issue_for(
            name,
            &["localhost", "127.0.0.1"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate (for mTLS) named `name`.
    pub fn client_cert(&self, name: &str) -> Issued {
        self.issue(name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server configuration presenting `server`; with `require_client_cert`, clients must
    /// present a certificate this CA signed.
    pub fn server_config(&self, server: &Issued, require_client_cert: bool) -> ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.cert()).expect("CA into root store");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(
                vec![server.cert.clone(), self.cert()],
                PrivateKeyDer::Pkcs8(server.key.clone_key()),
            )
            .expect("server certificate")
    }
}
