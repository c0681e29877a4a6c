//! API keys on the receive listeners (`[auth]`): which key may write, and as which tenant.
//!
//! Keys are never stored or compared as given: each is reduced to an HMAC-SHA256 digest under
//! a random per-process secret, and a presented key's digest is compared against every stored
//! digest without an early exit, so response timing tells nothing about how close a guess was.
//! The keys file is parsed and validated fully, then swapped atomically; a bad file keeps the
//! old keys. Keys never appear in logs or error messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::model::TenantId;

/// Why the keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("auth.keys_file {path}: cannot read: {source}")]
    Read {
        /// The keys file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a `[keys]` table of strings (the message has line and column, never a key).
    #[error("auth.keys_file {path}: {message}")]
    Parse {
        /// The keys file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The secret for hashing keys could not be made.
    #[error("cannot make the secret for hashing API keys")]
    Random,
}

/// Why a request was refused for its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key in the configured header.
    Missing,
    /// A key that is not in the keys file.
    Unknown,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

type Digest = [u8; 32];

/// The loaded keys: digests and the tenant each key writes as.
pub struct ApiKeys {
    path: PathBuf,
    header: HeaderName,
    require_key: bool,
    secret: ring::hmac::Key,
    table: ArcSwap<Vec<(Digest, TenantId)>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("keys", &self.table.load().len())
            .finish()
    }
}

impl ApiKeys {
    /// Reads the keys file `config` names; an unusable file stops start-up.
    pub fn load(config: &AuthConfig) -> Result<ApiKeys, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let secret = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| AuthError::Random)?;
        let header = HeaderName::from_bytes(config.header.to_ascii_lowercase().as_bytes())
            .map_err(|_| AuthError::Parse {
                path: PathBuf::from("auth.header"),
                message: format!("{:?} is not a valid header name", config.header),
            })?;
        let keys = ApiKeys {
            path: config.keys_file.clone().unwrap_or_default(),
            header,
            require_key: config.require_key,
            secret,
            table: ArcSwap::from_pointee(Vec::new()),
        };
        if config.keys_file.is_some() {
            let table = keys.read()?;
            tracing::info!(path = %keys.path.display(), keys = table.len(), header = %keys.header, require_key = keys.require_key, "API keys loaded");
            keys.table.store(Arc::new(table));
        }
        Ok(keys)
    }

    /// Re-reads the keys file (SIGHUP, `POST /api/v1/rules/reload`); on failure the old keys
    /// stay and the reason is logged.
    pub fn reload(&self) -> Result<usize, AuthError> {
        if self.path.as_os_str().is_empty() {
            return Ok(0);
        }
        match self.read() {
            Ok(table) => {
                let n = table.len();
                self.table.store(Arc::new(table));
                tracing::info!(path = %self.path.display(), keys = n, "API keys reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "API keys reload failed; the previous keys stay");
                Err(e)
            }
        }
    }

    fn read(&self) -> Result<Vec<(Digest, TenantId)>, AuthError> {
        read_keys(&self.path, |k| self.digest(k))
    }

    fn digest(&self, key: &[u8]) -> Digest {
        let tag = ring::hmac::sign(&self.secret, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The tenant of the request's key: `Ok(None)` when it has none (or an unknown one) and
    /// keys are optional, a refusal when `require_key` is set.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<TenantId>, Refusal> {
        let presented = headers
            .get(&self.header)
            .map(|v| bare_key(v.as_bytes()))
            .filter(|k| !k.is_empty());
        let Some(presented) = presented else {
            return if self.require_key {
                Err(Refusal::Missing)
            } else {
                Ok(None)
            };
        };
        let digest = self.digest(presented);
        let table = self.table.load();
        let mut found: Option<&TenantId> = None;
        // Every entry is compared in full; no comparison stops at the first differing byte.
        for (stored, tenant) in table.iter() {
            if digests_equal(stored, &digest) && found.is_none() {
                found = Some(tenant);
            }
        }
        match found {
            Some(t) => Ok(Some(t.clone())),
            None if self.require_key => Err(Refusal::Unknown),
            None => Ok(None),
        }
    }

    /// The header keys are read from, for refusal messages.
    pub fn header(&self) -> &str {
        self.header.as_str()
    }
}

/// The key in a header value: after `Bearer ` (any case) or the whole value, trimmed.
fn bare_key(value: &[u8]) -> &[u8] {
    let value = value.trim_ascii();
    match value.split_at_checked(6) {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case(b"bearer") && (rest.is_empty() || rest[0] == b' ') =>
        {
            rest.trim_ascii()
        }
        _ => value,
    }
}

/// Compares two digests in time independent of where they differ.
fn digests_equal(a: &Digest, b: &Digest) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Reads and validates a keys file into digests; errors never quote a key.
fn read_keys(
    path: &Path,
    digest: impl Fn(&[u8]) -> Digest,
) -> Result<Vec<(Digest, TenantId)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: KeysFile = toml::from_str(&text).map_err(|e| AuthError::Parse {
        path: path.to_path_buf(),
        // toml quotes the offending source line, which may hold a key: keep position only.
        message: match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                format!(
                    "line {line}: {} (expected a [keys] table of \"<api key>\" = \"<tenant id>\")",
                    e.message()
                )
            }
            None => e.message().to_string(),
        },
    })?;
    let mut table = Vec::with_capacity(parsed.keys.len());
    for (n, (key, tenant)) in parsed.keys.iter().enumerate() {
        if key.trim().is_empty() || key.trim() != key {
            return Err(AuthError::Parse {
                path: path.to_path_buf(),
                message: format!("key number {} is empty or has surrounding spaces", n + 1),
            });
        }
        if tenant.is_empty() {
            return Err(AuthError::Parse {
                path: path.to_path_buf(),
                message: format!("key number {} maps to an empty tenant", n + 1),
            });
        }
        table.push((digest(key.as_bytes()), TenantId::new(tenant)));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, text: &str, require_key: bool) -> ApiKeys {
        let path = dir.join("keys.toml");
        std::fs::write(&path, text).unwrap();
        ApiKeys::load(&AuthConfig {
            keys_file: Some(path),
            header: "authorization".into(),
            require_key,
        })
        .unwrap()
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_bare_keys_name_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(
            dir.path(),
            "[keys]\n\"k-a\" = \"a\"\n\"k-b\" = \"b\"\n",
            true,
        );
        assert_eq!(k.check(&with("Bearer k-a")), Ok(Some(TenantId::new("a"))));
        assert_eq!(k.check(&with("bearer  k-b ")), Ok(Some(TenantId::new("b"))));
        assert_eq!(k.check(&with("k-b")), Ok(Some(TenantId::new("b"))));
        assert_eq!(k.check(&with("Bearer k-c")), Err(Refusal::Unknown));
        assert_eq!(k.check(&with("Bearer ")), Err(Refusal::Missing));
        assert_eq!(k.check(&HeaderMap::new()), Err(Refusal::Missing));
    }

    #[test]
    fn without_require_key_unknown_and_missing_keys_pass_without_a_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), "[keys]\n\"k-a\" = \"a\"\n", false);
        assert_eq!(k.check(&with("nope")), Ok(None));
        assert_eq!(k.check(&HeaderMap::new()), Ok(None));
        assert_eq!(k.check(&with("k-a")), Ok(Some(TenantId::new("a"))));
    }

    #[test]
    fn a_bad_keys_file_keeps_the_old_keys_and_never_quotes_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), "[keys]\n\"k-a\" = \"a\"\n", true);
        std::fs::write(dir.path().join("keys.toml"), "[keys]\n\"s3cret-key\" = 5\n").unwrap();
        let err = k.reload().unwrap_err().to_string();
        assert!(!err.contains("s3cret-key"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(k.check(&with("k-a")), Ok(Some(TenantId::new("a"))));
        std::fs::write(dir.path().join("keys.toml"), "[keys]\n\"k-new\" = \"n\"\n").unwrap();
        assert_eq!(k.reload().unwrap(), 1);
        assert_eq!(k.check(&with("k-a")), Err(Refusal::Unknown));
        assert_eq!(k.check(&with("k-new")), Ok(Some(TenantId::new("n"))));
        assert!(!format!("{k:?}").contains("k-new"));
    }
}
