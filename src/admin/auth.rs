//! The admin API's bearer token: where it comes from, how a request proves it, and which
//! endpoints ask for it.
//!
//! ```text
//! [admin] token_file ──┐ (the file wins; re-read on SIGHUP and POST /api/v1/rules/reload)
//! TAILSIFT_ADMIN_TOKEN ┴─> AdminToken ─> guard (middleware) ─> 401 {"error": ...} or the handler
//!                                     └> bearer() for the cluster fanout and the CLI
//! ```
//! Tokens are compared as HMAC-SHA256 tags under a key drawn at start (`ring::hmac::verify`),
//! so the comparison takes the same time whatever the presented bytes are, and neither the
//! token nor what a client presented is ever logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::AdminConfig;

/// The environment variable that holds the token when `[admin] token_file` is not set (the
/// proxy reads it at start; the CLI reads it for every command that calls the admin API).
pub const TOKEN_ENV: &str = "TAILSIFT_ADMIN_TOKEN";

/// What the CLI prints when the admin API answers 401 to a request that carried no token.
pub const NEEDS_TOKEN: &str = "the admin API needs a token: --token-file or TAILSIFT_ADMIN_TOKEN";

/// Paths that never ask for a token: probes and the Prometheus scrape (scrapers usually
/// cannot send one), and the dashboard page itself, which holds no data and must load to
/// ask for the token its fetches then send.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/"];

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("{origin} {}: cannot read: {source}", path.display())]
    Io {
        /// What named the file (`admin.token_file`, `--token-file`).
        origin: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The token is empty after trimming whitespace, or not usable in an HTTP header.
    #[error("{origin}: {why}")]
    Unusable {
        /// The file or variable it came from.
        origin: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The system random generator failed (no key for the comparison).
    #[error("cannot draw a random key to compare admin tokens")]
    Random,
}

/// One token: its HMAC tag for comparisons and the text for outgoing requests.
struct Secret {
    tag: ring::hmac::Tag,
    text: String,
}

/// Where the token comes from, so a reload knows what to re-read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    None,
    Env,
    File(PathBuf),
}

/// The admin token shared by the admin API's guard and the cluster fanout; swapped on reload.
pub struct AdminToken {
    source: Source,
    require_for_reads: bool,
    key: ring::hmac::Key,
    current: ArcSwapOption<Secret>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("source", &self.source)
            .field("set", &self.is_set())
            .field("require_for_reads", &self.require_for_reads)
            .finish()
    }
}

impl AdminToken {
    /// Reads the token `config` names (or `env`, the value of [`TOKEN_ENV`], when no file is
    /// set); an unreadable or empty token stops start-up.
    pub fn load(config: &AdminConfig, env: Option<String>) -> Result<AdminToken, TokenError> {
        let env = env.filter(|v| !v.trim().is_empty());
        let source = match (&config.token_file, &env) {
            (Some(path), env) => {
                if env.is_some() {
                    tracing::warn!(path = %path.display(), "both admin.token_file and {TOKEN_ENV} are set: the file is used");
                }
                Source::File(path.clone())
            }
            (None, Some(_)) => Source::Env,
            (None, None) => Source::None,
        };
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| TokenError::Random)?;
        let token = AdminToken {
            source,
            require_for_reads: config.require_token_for_reads,
            key,
            current: ArcSwapOption::empty(),
        };
        let text = match &token.source {
            Source::None => None,
            Source::Env => Some(checked(env.unwrap_or_default(), TOKEN_ENV)?),
            Source::File(path) => Some(read_file(path, "admin.token_file")?),
        };
        if text.is_none() && token.require_for_reads {
            return Err(TokenError::Unusable {
                origin: "admin.require_token_for_reads".into(),
                why: "there is no token to require: set admin.token_file or TAILSIFT_ADMIN_TOKEN",
            });
        }
        token.current.store(text.map(|t| Arc::new(token.secret(t))));
        Ok(token)
    }

    /// No token: every endpoint open (tests, and nodes built without a config).
    pub fn none() -> AdminToken {
        let rng = ring::rand::SystemRandom::new();
        // Drawing 32 random bytes does not fail on the platforms tailsift runs on; a fixed
        // key would do as well here, since nothing is ever compared against it.
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0; 32]));
        AdminToken {
            source: Source::None,
            require_for_reads: false,
            key,
            current: ArcSwapOption::empty(),
        }
    }

    fn secret(&self, text: String) -> Secret {
        Secret {
            tag: ring::hmac::sign(&self.key, text.as_bytes()),
            text,
        }
    }

    /// Re-reads the token file (SIGHUP, rules reload); on failure the old token stays and the
    /// reason is logged. Without a file there is nothing to re-read.
    pub fn reload(&self) -> Result<(), TokenError> {
        let Source::File(path) = &self.source else {
            return Ok(());
        };
        match read_file(path, "admin.token_file") {
            Ok(text) => {
                self.current.store(Some(Arc::new(self.secret(text))));
                tracing::info!(path = %path.display(), "admin token reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "admin token reload failed; the previous token stays");
                Err(e)
            }
        }
    }

    /// Whether a token is configured (and so mutating endpoints are guarded).
    pub fn is_set(&self) -> bool {
        self.current.load().is_some()
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn verify(&self, presented: &[u8]) -> bool {
        match &*self.current.load() {
            Some(s) => ring::hmac::verify(&self.key, presented, s.tag.as_ref()).is_ok(),
            None => false,
        }
    }

    /// The `Authorization` header value this node sends to the other members' admin APIs.
    pub fn bearer(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .map(|s| format!("Bearer {}", s.text))
    }

    /// Whether a request for `method` on `path` must carry the token.
    pub fn required(&self, method: &Method, path: &str) -> bool {
        if !self.is_set() || OPEN_PATHS.contains(&path) {
            return false;
        }
        let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        !read || self.require_for_reads
    }

    /// Logs a warning when the admin API is reachable beyond this host and nothing guards it.
    pub fn warn_if_open(&self, listen: SocketAddr) {
        if !listen.ip().is_loopback() && !self.is_set() {
            tracing::warn!(admin = %listen, "the admin API listens on a non-loopback address without a token: anyone who reaches it can reload rules and tag tenants; set [admin] token_file or {TOKEN_ENV}");
        }
    }
}

/// Reads a token file (its content without surrounding whitespace); `origin` names the
/// setting that named the file in errors (`admin.token_file`, `--token-file`).
pub fn read_file(path: &Path, origin: &'static str) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
        origin,
        path: path.to_path_buf(),
        source,
    })?;
    checked(text, &format!("{origin} {}", path.display()))
}

/// The token without surrounding whitespace, refused when empty or not a header value.
fn checked(text: String, origin: &str) -> Result<String, TokenError> {
    let token = text.trim();
    let why = if token.is_empty() {
        "the token is empty"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "the token must be printable ASCII without spaces (it travels in an HTTP header)"
    } else {
        return Ok(token.to_string());
    };
    Err(TokenError::Unusable {
        origin: origin.to_string(),
        why,
    })
}

/// The middleware in front of every admin route: a request that needs the token and does
/// not carry it as `Authorization: Bearer <token>` gets 401 with a JSON error.
pub async fn guard(State(token): State<Arc<AdminToken>>, req: Request, next: Next) -> Response {
    if !token.required(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    match presented {
        Some(p) if token.verify(p) => next.run(req).await,
        presented => {
            let message = if presented.is_some() {
                "the admin token does not match"
            } else {
                "this admin endpoint needs Authorization: Bearer <token> (see docs/admin-api.md#authentication)"
            };
            tracing::debug!(path = req.uri().path(), method = %req.method(), "admin request refused: no valid token");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"tailsift-admin\"")],
                Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive,
/// RFC 6750); `None` for another scheme.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

/// `router` with every route behind [`guard`].
pub fn protect(router: axum::Router, token: Arc<AdminToken>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(token, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: Option<PathBuf>, reads: bool) -> AdminConfig {
        AdminConfig {
            token_file: file,
            require_token_for_reads: reads,
            ..AdminConfig::default()
        }
    }

    #[test]
    fn only_the_exact_token_verifies() {
        let t = AdminToken::load(&config(None, false), Some("s3cret\n".into())).unwrap();
        assert!(t.verify(b"s3cret"));
        assert!(!t.verify(b"s3cre"));
        assert!(!t.verify(b"s3cret2"));
        assert!(!t.verify(b""));
        assert_eq!(t.bearer().as_deref(), Some("Bearer s3cret"));
    }

    /// What `f` logs, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        text
    }

    #[test]
    fn an_open_admin_api_beyond_loopback_is_warned_about() {
        let public: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(logged(|| AdminToken::none().warn_if_open(public)).contains("without a token"));
        assert!(logged(|| AdminToken::none().warn_if_open(local)).is_empty());
        let guarded = AdminToken::load(&config(None, false), Some("t".into())).unwrap();
        assert!(logged(|| guarded.warn_if_open(public)).is_empty());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_carry_no_token() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn mutations_need_the_token_and_reads_only_when_asked() {
        let open = AdminToken::load(&config(None, false), Some("t".into())).unwrap();
        assert!(open.required(&Method::POST, "/api/v1/rules/reload"));
        assert!(open.required(&Method::DELETE, "/api/v1/tenants/a/tag"));
        assert!(!open.required(&Method::GET, "/api/v1/rules"));
        let closed = AdminToken::load(&config(None, true), Some("t".into())).unwrap();
        assert!(closed.required(&Method::GET, "/api/v1/rules"));
        for path in ["/healthz", "/readyz", "/metrics", "/"] {
            assert!(!closed.required(&Method::GET, path), "{path}");
        }
        assert!(!AdminToken::none().required(&Method::POST, "/api/v1/rules/reload"));
    }

    #[test]
    fn the_file_wins_over_the_environment_and_a_bad_reload_keeps_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let t =
            AdminToken::load(&config(Some(path.clone()), false), Some("from-env".into())).unwrap();
        assert!(t.verify(b"from-file") && !t.verify(b"from-env"));
        std::fs::write(&path, "").unwrap();
        assert!(t.reload().is_err());
        assert!(t.verify(b"from-file"));
        std::fs::write(&path, "rotated").unwrap();
        t.reload().unwrap();
        assert!(t.verify(b"rotated") && !t.verify(b"from-file"));
    }

    #[test]
    fn an_empty_token_is_refused_at_start() {
        let err = AdminToken::load(&config(None, false), Some("  ".into())).unwrap();
        assert!(!err.is_set(), "a blank variable counts as unset");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let e = AdminToken::load(&config(Some(path), false), None).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = AdminToken::load(&config(None, true), None).unwrap_err();
        assert!(e.to_string().contains("require_token_for_reads"), "{e}");
    }
}
