//! TLS for the OTLP exporters: one rustls client configuration (ring provider, webpki roots
//! plus `tls_ca_file`, optional client certificate) and one connector built on it, shared by
//! the gRPC and HTTP exporters so both verify a backend the same way. No OpenSSL anywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::ExportConfig;

/// How long a TCP connect to the backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the TLS settings of `[export]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured PEM file could not be read.
    #[error("export.{key} {path}: cannot read: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A configured PEM file holds nothing usable.
    #[error("export.{key} {path}: {problem}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the material (e.g. a key that does not match its certificate).
    #[error("export TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// `tls_server_name` is not a DNS name or IP address.
    #[error("export.tls.server_name {0:?} must be a DNS name or an IP address")]
    ServerName(String),
}

/// Which protocols a connector offers in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` only: gRPC.
    Http2,
    /// `http/1.1` only: the OTLP/HTTP exporter.
    Http1,
}

/// Builds the rustls client configuration `[export]` asks for, reading every PEM file. Also
/// what `tailsift check` runs, so a bad certificate is reported before start-up.
pub fn client_config(config: &ExportConfig) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.tls_ca_file {
        let certs = read_certs("tls.ca_file", path)?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Pem {
                key: "tls.ca_file",
                path: path.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs("tls.cert_file", cert_path)?;
            let key = read_key(key_path)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::Pem {
                        key: "tls.key_file",
                        path: key_path.clone(),
                        problem: format!(
                            "is not the private key of export.tls.cert_file {}",
                            cert_path.display()
                        ),
                    },
                    e => TlsError::Rustls(e),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tls)
}

/// A connector that speaks TLS to `https://` URIs (plain TCP to `http://`), offering `alpn`
/// and verifying `tls_server_name` instead of the URI's host when it is set.
pub fn connector(
    config: &ExportConfig,
    tls: ClientConfig,
    alpn: Alpn,
) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?;
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    Ok(match alpn {
        Alpn::Http2 => builder.enable_http2().wrap_connector(http),
        Alpn::Http1 => builder.enable_http1().wrap_connector(http),
    })
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_path_buf(),
            problem: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            path: path.to_path_buf(),
            problem: "holds no \"BEGIN CERTIFICATE\" block".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem("tls.key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key: "tls.key_file",
        path: path.to_path_buf(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into()
            }
            e => format!("invalid PEM: {e}"),
        },
    })
}
