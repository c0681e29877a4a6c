//! TLS on the receive listeners (`[receive.tls]`): one rustls server configuration shared by
//! the gRPC and HTTP listeners (ALPN `h2` and `http/1.1`), optionally requiring client
//! certificates signed by `client_ca_file` (mTLS). The files are checked every
//! `check_interval`; changed contents are loaded in full and swapped atomically, so new
//! connections use the new certificate while open ones keep theirs. A bad new file keeps the
//! old configuration and is logged and counted. No OpenSSL anywhere.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;

use crate::config::ReceiveTlsConfig;
use crate::stats::Stats;

/// Why the receive certificate files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file could not be read.
    #[error("receive.tls.{key} {path}: cannot read: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("receive.tls.{key} {path}: {problem}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the material (e.g. a key that does not match its certificate).
    #[error("receive.tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be turned into a verifier.
    #[error("receive.tls.client_ca_file: {0}")]
    Verifier(String),
}

/// The file contents a configuration was built from (to notice changes).
type Contents = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// The live server configuration and the files it comes from.
pub struct ServerTls {
    files: ReceiveTlsConfig,
    current: ArcSwap<ServerConfig>,
    last_attempt: Mutex<Contents>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.files.cert_file)
            .finish()
    }
}

impl ServerTls {
    /// Reads and checks the files; failure stops start-up (and `tailsift check`).
    pub fn load(files: &ReceiveTlsConfig, stats: Arc<Stats>) -> Result<ServerTls, ServerTlsError> {
        let contents = read_all(files)?;
        let config = build(files, &contents)?;
        Ok(ServerTls {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            last_attempt: Mutex::new(contents),
            stats,
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files; when their contents changed since the last attempt, builds and swaps
    /// in the new configuration, or keeps the old one and reports why.
    pub fn check_for_changes(&self) {
        let contents = match read_all(&self.files) {
            Ok(c) => c,
            // A file briefly missing during a rename-based rotation is not yet a failure.
            Err(e) => {
                tracing::debug!(error = %e, "receive TLS files not readable; keeping the current certificate");
                return;
            }
        };
        let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        if *last == contents {
            return;
        }
        match build(&self.files, &contents) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.stats.receive.tls_reloads.fetch_add(1, Relaxed);
                tracing::info!(cert_file = %self.files.cert_file.display(), "receive TLS certificate reloaded; new connections use it");
            }
            Err(e) => {
                self.stats.receive.tls_reload_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "receive TLS files changed but cannot be used; the previous certificate stays");
            }
        }
        *last = contents;
    }

    /// Checks the files every `check_interval` until `stop` turns true.
    pub fn watch(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tls.files.check_interval.0);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let tls = tls.clone();
                        let _ = tokio::task::spawn_blocking(move || tls.check_for_changes()).await;
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
            }
        })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ServerTlsError> {
    std::fs::read(path).map_err(|source| ServerTlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn read_all(files: &ReceiveTlsConfig) -> Result<Contents, ServerTlsError> {
    Ok((
        read("cert_file", &files.cert_file)?,
        read("key_file", &files.key_file)?,
        match &files.client_ca_file {
            Some(p) => Some(read("client_ca_file", p)?),
            None => None,
        },
    ))
}

fn certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ServerTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerTlsError::Pem {
            key,
            path: path.to_path_buf(),
            problem: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(ServerTlsError::Pem {
            key,
            path: path.to_path_buf(),
            problem: "holds no \"BEGIN CERTIFICATE\" block".into(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration from file contents.
fn build(files: &ReceiveTlsConfig, contents: &Contents) -> Result<ServerConfig, ServerTlsError> {
    let (cert_pem, key_pem, ca_pem) = contents;
    let chain = certs("cert_file", &files.cert_file, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ServerTlsError::Pem {
        key: "key_file",
        path: files.key_file.clone(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)".into()
            }
            e => format!("invalid PEM: {e}"),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca_file, ca_pem) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certs("client_ca_file", path, pem)? {
                roots.add(cert).map_err(|e| ServerTlsError::Pem {
                    key: "client_ca_file",
                    path: path.clone(),
                    problem: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServerTlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ServerTlsError::Pem {
            key: "key_file",
            path: files.key_file.clone(),
            problem: format!(
                "is not the private key of receive.tls.cert_file {}",
                files.cert_file.display()
            ),
        },
        e => ServerTlsError::Rustls(e),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
