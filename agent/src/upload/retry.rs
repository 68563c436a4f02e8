//! Retrying one S3 request: which failures are worth another attempt, and the loop.
//!
//! The SDK's own retry layer already retries throttling and transient errors inside
//! each attempt here; this loop adds attempts for the failures that layer gives up on
//! but that a fresh request can still fix (a dropped connection, a body corrupted in
//! transit), so one bad part does not cost a whole bundle.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use lease_common::sdk_error;

/// Attempts per request (part, small file, manifest, log, abort).
pub const ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each later one (0.2 s, 0.4 s).
pub const BACKOFF: Duration = Duration::from_millis(200);

/// Service error codes that a new attempt can cure although their status is 4xx.
const RETRYABLE_CODES: &[&str] = &[
    "BadDigest",
    "InvalidDigest",
    "RequestTimeout",
    "XAmzContentSHA256Mismatch",
    "SlowDown",
    "InternalError",
];

/// One failed request, reduced to what deciding and reporting need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// S3's error code (`NoSuchBucket`, …), when the response carried one.
    pub code: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn from_sdk<E>(e: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        match e {
            SdkError::ServiceError(_) => Self {
                status,
                code: e.code().map(str::to_string),
                message: e
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| sdk_error::render_chain(e)),
            },
            _ => Self {
                status,
                code: None,
                message: sdk_error::render_chain(e),
            },
        }
    }

    pub fn retryable(&self) -> bool {
        retryable(self.status, self.code.as_deref())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, self.status) {
            (Some(code), _) => write!(f, "{code}: {}", self.message),
            (None, Some(status)) => write!(f, "HTTP {status}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// Whether another attempt can succeed: no response at all (connection, timeout),
/// a server-side error, throttling, or a 4xx that names a transient cause. Other 4xx
/// (no such bucket, access denied, a malformed request) fail the same way every time.
pub fn retryable(status: Option<u16>, code: Option<&str>) -> bool {
    if code.is_some_and(|c| RETRYABLE_CODES.contains(&c)) {
        return true;
    }
    match status {
        None => true,
        Some(s) => s >= 500 || s == 408 || s == 429,
    }
}

/// Runs `op` up to [`ATTEMPTS`] times while its failure is retryable.
pub async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut pause = BACKOFF;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) if attempt < ATTEMPTS && f.retryable() => {
                tracing::debug!(attempt, "S3 request failed, retrying: {f}");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(f) => return Err(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retried_and_permanent_ones_are_not() {
        assert!(retryable(None, None), "no response: connection or timeout");
        assert!(retryable(Some(500), Some("InternalError")));
        assert!(retryable(Some(503), Some("SlowDown")));
        assert!(retryable(Some(400), Some("BadDigest")));
        assert!(retryable(Some(400), Some("RequestTimeout")));
        assert!(retryable(Some(429), None));
        assert!(!retryable(Some(404), Some("NoSuchBucket")));
        assert!(!retryable(Some(404), Some("NoSuchUpload")));
        assert!(!retryable(Some(403), Some("AccessDenied")));
        assert!(!retryable(Some(400), Some("InvalidPart")));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_attempt_and_stops_at_a_permanent_failure() {
        let transient = Failure {
            status: Some(500),
            code: None,
            message: "boom".into(),
        };
        let mut calls = 0;
        let r: Result<(), _> = with_retries(|| {
            calls += 1;
            let f = transient.clone();
            async move { Err(f) }
        })
        .await;
        assert_eq!(r, Err(transient.clone()));
        assert_eq!(calls, ATTEMPTS);

        let permanent = Failure {
            status: Some(404),
            code: Some("NoSuchBucket".into()),
            message: "gone".into(),
        };
        let mut calls = 0;
        let r: Result<(), _> = with_retries(|| {
            calls += 1;
            let f = permanent.clone();
            async move { Err(f) }
        })
        .await;
        assert_eq!(r, Err(permanent));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r = with_retries(|| {
            calls += 1;
            let outcome = if calls < ATTEMPTS {
                Err(transient.clone())
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(r, Ok(ATTEMPTS));
    }
}
