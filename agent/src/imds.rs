//! An IMDSv2-only client for the instance metadata service.
//!
//! - One session token, cached, refreshed [`TOKEN_REFRESH_MARGIN`] before it expires and
//!   again whenever IMDS answers 401 (the token was revoked, or IMDS restarted).
//! - `404` means "nothing there" and is `Ok(None)`: no spot notice, no such tag.
//! - Every request runs inside a hard timeout; IMDS is on the instance's own link, so a
//!   slow answer is a broken answer.
//! - No IMDSv1 fallback: the launcher requires tokens, and an agent that silently fell
//!   back would hide a misconfigured instance.
//!
//! The endpoint is `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the AWS SDKs' own variable; the
//! test harness points it at its fake), else EC2's link-local address.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::BoxFuture;

/// The standard variable the AWS SDKs read for the IMDS endpoint.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// The SDKs' variable choosing the IPv6 endpoint when no endpoint is given.
pub const ENDPOINT_MODE_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
/// EC2's IMDS address (IPv4 link-local).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// EC2's IMDS address on IPv6 (Nitro instances, `ENDPOINT_MODE_ENV=IPv6`).
pub const DEFAULT_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";
/// The longest lifetime IMDS grants a token (6 h): one PUT every six hours.
pub const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token is replaced this long before it expires, so no request races its expiry.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The default hard limit on one request, connection included. IMDS answers in
/// about a millisecond; a second is a failure, not a slow success.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("Invalid IMDS endpoint '{endpoint}': {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("IMDS request for '{path}' timed out after {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("IMDS request for '{path}' failed: {reason}")]
    Transport { path: String, reason: String },
    #[error("IMDS answered {status} for '{path}'")]
    Status { path: String, status: u16 },
    #[error("IMDS refused a session token ({status}); IMDSv2 is required and v1 is never used")]
    Token { status: u16 },
    #[error("IMDS returned a body for '{path}' that is not what EC2 documents: {reason}")]
    Body { path: String, reason: String },
}

/// What the agent asks of instance metadata. The real client is [`Imds`]; loop tests
/// hand the watchers a scripted fake.
pub trait Metadata: Send + Sync + Debug {
    /// GET `latest/<path>` (e.g. `meta-data/instance-id`). `Ok(None)` on 404.
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<String>, ImdsError>>;
}

#[derive(Debug, Clone)]
struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// The IMDSv2 client. Cheap to clone through an `Arc`; requests share one token.
#[derive(Debug)]
pub struct Imds {
    endpoint: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    token: Mutex<Option<CachedToken>>,
    timeout: Duration,
    token_ttl: Duration,
}

impl Imds {
    /// A client for `AWS_EC2_METADATA_SERVICE_ENDPOINT`, or EC2's own address (IPv6
    /// when `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, as the SDKs do).
    pub fn from_env() -> Result<Self, ImdsError> {
        let endpoint = std::env::var(ENDPOINT_ENV).unwrap_or_else(|_| {
            let ipv6 = std::env::var(ENDPOINT_MODE_ENV)
                .is_ok_and(|m| m.trim().eq_ignore_ascii_case("ipv6"));
            if ipv6 {
                DEFAULT_ENDPOINT_IPV6
            } else {
                DEFAULT_ENDPOINT
            }
            .to_string()
        });
        Self::new(&endpoint, DEFAULT_TIMEOUT)
    }

    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ImdsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let uri: Uri = endpoint.parse().map_err(|e| ImdsError::Endpoint {
            endpoint: endpoint.clone(),
            reason: format!("{e}"),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ImdsError::Endpoint {
                endpoint,
                reason: "expected http://HOST[:PORT]".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // IMDS closes idle connections quickly; keep ours short so a pooled
            // connection is rarely one the server has already dropped.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            endpoint,
            client,
            token: Mutex::new(None),
            timeout,
            token_ttl: TOKEN_TTL,
        })
    }

    /// Uses a shorter token lifetime (tests of the refresh logic).
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn get_inner(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let token = self.token(false).await?;
        match self.request_get(path, &token).await? {
            Answer::Unauthorized => {
                // Revoked or expired early (IMDS restarted): one fresh token, one retry.
                tracing::debug!(path, "IMDS answered 401; refreshing the session token");
                let token = self.token(true).await?;
                match self.request_get(path, &token).await? {
                    Answer::Unauthorized => Err(ImdsError::Status {
                        path: path.to_string(),
                        status: 401,
                    }),
                    Answer::Found(body) => Ok(Some(body)),
                    Answer::NotFound => Ok(None),
                }
            }
            Answer::Found(body) => Ok(Some(body)),
            Answer::NotFound => Ok(None),
        }
    }

    async fn token(&self, force: bool) -> Result<String, ImdsError> {
        let mut cached = self.token.lock().await;
        if !force
            && let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let value = self.request_token().await?;
        let ttl = self.token_ttl;
        let margin = TOKEN_REFRESH_MARGIN.min(ttl / 10);
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at: Instant::now() + ttl.saturating_sub(margin),
        });
        Ok(value)
    }

    async fn request_token(&self) -> Result<String, ImdsError> {
        let uri = format!("{}{TOKEN_PATH}", self.endpoint);
        let req = Request::builder()
            .method(Method::PUT)
            .uri(&uri)
            .header(TOKEN_TTL_HEADER, self.token_ttl.as_secs().to_string())
            .body(Empty::new())
            .map_err(|e| ImdsError::Transport {
                path: TOKEN_PATH.into(),
                reason: e.to_string(),
            })?;
        let (status, body) = self.send(TOKEN_PATH, req).await?;
        if status != StatusCode::OK {
            return Err(ImdsError::Token {
                status: status.as_u16(),
            });
        }
        let token = body.trim().to_string();
        if token.is_empty() {
            return Err(ImdsError::Body {
                path: TOKEN_PATH.into(),
                reason: "empty token".into(),
            });
        }
        Ok(token)
    }

    async fn request_get(&self, path: &str, token: &str) -> Result<Answer, ImdsError> {
        let uri = format!("{}/latest/{}", self.endpoint, path.trim_start_matches('/'));
        let req = Request::builder()
            .method(Method::GET)
            .uri(&uri)
            .header(TOKEN_HEADER, token)
            .body(Empty::new())
            .map_err(|e| ImdsError::Transport {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        let (status, body) = self.send(path, req).await?;
        match status {
            StatusCode::OK => Ok(Answer::Found(body)),
            StatusCode::NOT_FOUND => Ok(Answer::NotFound),
            StatusCode::UNAUTHORIZED => Ok(Answer::Unauthorized),
            other => Err(ImdsError::Status {
                path: path.to_string(),
                status: other.as_u16(),
            }),
        }
    }

    async fn send(
        &self,
        path: &str,
        req: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, String), ImdsError> {
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ImdsError::Transport {
                    path: path.to_string(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ImdsError::Transport {
                    path: path.to_string(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            let body = String::from_utf8(body.to_vec()).map_err(|_| ImdsError::Body {
                path: path.to_string(),
                reason: "not UTF-8".into(),
            })?;
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ImdsError::Timeout {
                path: path.to_string(),
                timeout: self.timeout,
            }),
        }
    }
}

enum Answer {
    Found(String),
    NotFound,
    Unauthorized,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Metadata for Imds {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<String>, ImdsError>> {
        Box::pin(self.get_inner(path))
    }
}

impl<M: Metadata + ?Sized> Metadata for Arc<M> {
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<String>, ImdsError>> {
        (**self).get(path)
    }
}

/// Who this instance is, from IMDS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub region: String,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub market: String,
    /// When the instance last entered `pending`: its launch, or its last start after
    /// a stop. `None` when the identity document does not say.
    pub launched_at: Option<DateTime<Utc>>,
}

/// The instance identity document, as EC2 documents it (only the fields we read).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    instance_id: String,
    region: String,
    instance_type: String,
    #[serde(default)]
    pending_time: Option<String>,
}

fn required(path: &str, v: Option<String>) -> Result<String, ImdsError> {
    v.map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ImdsError::Body {
            path: path.to_string(),
            reason: "missing (404)".into(),
        })
}

/// Reads the instance's identity: the identity document for id, region, type and
/// launch time, and `instance-life-cycle` for the market.
pub async fn read_identity(m: &dyn Metadata) -> Result<InstanceIdentity, ImdsError> {
    const DOC: &str = "dynamic/instance-identity/document";
    const LIFE_CYCLE: &str = "meta-data/instance-life-cycle";
    let doc = required(DOC, m.get(DOC).await?)?;
    let doc: IdentityDocument = serde_json::from_str(&doc).map_err(|e| ImdsError::Body {
        path: DOC.into(),
        reason: e.to_string(),
    })?;
    let launched_at = match doc.pending_time.as_deref() {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ImdsError::Body {
                    path: DOC.into(),
                    reason: format!("pendingTime '{t}' is not RFC 3339: {e}"),
                })?,
        ),
    };
    // Absent on some instance kinds; "on-demand" is then the truth.
    let market = m
        .get(LIFE_CYCLE)
        .await?
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "on-demand".into());
    Ok(InstanceIdentity {
        instance_id: doc.instance_id,
        region: doc.region,
        instance_type: doc.instance_type,
        market,
        launched_at,
    })
}

/// Reads every instance tag through metadata (`tags/instance`), or `Ok(None)` when
/// metadata tags are switched off for the instance (IMDS answers 404).
pub async fn read_tags(
    m: &dyn Metadata,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ImdsError> {
    const TAGS: &str = "meta-data/tags/instance";
    let Some(list) = m.get(TAGS).await? else {
        return Ok(None);
    };
    let keys: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let paths: Vec<String> = keys.iter().map(|k| format!("{TAGS}/{k}")).collect();
    let values = futures::future::join_all(paths.iter().map(|p| m.get(p))).await;
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in keys.into_iter().zip(values) {
        // A tag deleted between the list and the read is simply gone.
        if let Some(v) = value? {
            out.insert(key, v);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_be_plain_http() {
        assert!(Imds::new("http://127.0.0.1:1234/", DEFAULT_TIMEOUT).is_ok());
        assert!(Imds::new(DEFAULT_ENDPOINT, DEFAULT_TIMEOUT).is_ok());
        assert!(Imds::new(DEFAULT_ENDPOINT_IPV6, DEFAULT_TIMEOUT).is_ok());
        let err = Imds::new("ftp://x", DEFAULT_TIMEOUT).unwrap_err();
        assert!(err.to_string().contains("ftp://x"), "{err}");
    }
}
