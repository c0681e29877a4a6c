//! A small client of the admin API, for the CLI (`tailsift tenants ...`): plain HTTP/1 JSON
//! requests through hyper-util's legacy client.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why an admin request failed before an answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The admin address plus path is not a valid URL.
    #[error("invalid admin URL {url:?}: {source}")]
    Url {
        /// The URL that was built.
        url: String,
        /// What was wrong with it.
        source: http::Error,
    },
    /// The node could not be reached.
    #[error("cannot reach the admin API at {url}: {source} (is tailsift running? see --admin)")]
    Connect {
        /// The URL requested.
        url: String,
        /// The transport failure.
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body could not be read.
    #[error("reading the answer from {url}: {source}")]
    Body {
        /// The URL requested.
        url: String,
        /// The failure.
        source: hyper::Error,
    },
}

/// An answer: status and body text.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, as text.
    pub body: String,
}

/// Sends one request to `admin` (`http://127.0.0.1:8080`) + `path`, with an optional JSON body
/// and an optional `Authorization` header value (`Bearer <token>`, see [`bearer`]).
pub async fn request(
    admin: &str,
    method: Method,
    path: &str,
    json: Option<&serde_json::Value>,
    authorization: Option<&str>,
) -> Result<Answer, ClientError> {
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let mut builder = Request::builder().method(method).uri(&url);
    if let Some(value) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let body = match json {
        Some(v) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = builder
        .body(Full::new(body))
        .map_err(|source| ClientError::Url {
            url: url.clone(),
            source,
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(req)
        .await
        .map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Body { url, source })?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The `Authorization` header value that carries `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token the CLI sends: the content of `token_file` when given, else
/// `TAILSIFT_ADMIN_TOKEN`, else none.
pub fn cli_token(
    token_file: Option<&std::path::Path>,
) -> Result<Option<String>, super::auth::TokenError> {
    match token_file {
        Some(path) => super::auth::read_file(path, "--token-file").map(Some),
        None => Ok(std::env::var(super::auth::TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())),
    }
}

/// Percent-encodes everything but unreserved characters, for one URL path segment (a tenant id).
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
