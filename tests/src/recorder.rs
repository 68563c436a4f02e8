//! A pass-through HTTP proxy in front of moto that notes when each AWS API call
//! arrived, so a benchmark can time an agent's calls (the terminate at a deadline, a
//! requeue after a spot notice) from outside the agent, not from its own log.
//!
//! Point the process under test's `AWS_ENDPOINT_URL` at [`Recorder::endpoint`]; the
//! action is read from the EC2/SQS query body (`Action=…`), or the JSON protocols'
//! `X-Amz-Target` header (`AmazonSQS.SendMessage` → `SendMessage`); S3's REST calls
//! are named by method and shape (`S3 PUT object`, `S3 POST ?uploads`, …).
//!
//! [`CallLog`] is the same proxy on a thread of its own that also appends every call,
//! as a JSON line, to a file: [`crate::Moto`] puts one in front of every emulator when
//! [`CALL_LOG_ENV`] names a directory, and `tests/iam_check.py` checks each logged
//! call of `lease`, `leased` and the reaper against the policy of its component. The
//! component is the SDK's `app/<name>` user-agent token, which [`crate::Cmd`] sets
//! (`AWS_SDK_UA_APP_ID`) to the binary's name; the test's own reads carry none.

use std::convert::Infallible;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A directory: when set, every emulator a test starts logs the calls made to it into
/// a file there (see [`CallLog`]).
pub const CALL_LOG_ENV: &str = "LEASE_AWS_CALL_LOG";

/// Where a proxy's calls go besides memory.
type Log = Option<Arc<Mutex<File>>>;

/// One call as the proxy saw it arrive.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: DateTime<Utc>,
    pub action: String,
    pub body: String,
    /// The access key id the request was signed with (SigV4 `Credential=`).
    pub access_key: Option<String>,
}

#[derive(Debug)]
pub struct Recorder {
    endpoint: String,
    calls: Arc<Mutex<Vec<Call>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Recorder {
    /// Starts the proxy on 127.0.0.1 in front of `upstream` (moto's endpoint).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recorder on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve(listener, upstream.to_string(), calls.clone(), None));
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            calls,
            server,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How many calls of each action so far.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for c in self.calls.lock().expect("recorder state").iter() {
            *counts.entry(c.action.clone()).or_default() += 1;
        }
        counts
    }

    /// Every call so far with this action, oldest first.
    pub fn calls(&self, action: &str) -> Vec<Call> {
        self.calls
            .lock()
            .expect("recorder state")
            .iter()
            .filter(|c| c.action == action)
            .cloned()
            .collect()
    }
}

/// Accepts connections for ever, forwarding each request to `upstream`.
async fn serve(listener: TcpListener, upstream: String, calls: Arc<Mutex<Vec<Call>>>, log: Log) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstream = upstream.trim_end_matches('/').to_string();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (calls, client, upstream, log) =
            (calls.clone(), client.clone(), upstream.clone(), log.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                forward(
                    calls.clone(),
                    log.clone(),
                    client.clone(),
                    upstream.clone(),
                    req,
                )
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A recording proxy with a runtime of its own (so it serves whatever runtime, or
/// none, the test uses) that appends each call to a JSON-lines file: the time, the
/// component (`app`, from the user agent), the signing service and key, the action,
/// method, path, query, the body (not S3's, which is data), and the status moto
/// answered. Stops when dropped.
#[derive(Debug)]
pub struct CallLog {
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl CallLog {
    /// Starts the proxy in front of `upstream`, appending to `file`.
    pub fn start(upstream: &str, file: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("open the call log {}: {e}", file.display()));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the call log on 127.0.0.1");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = std_listener.local_addr().expect("local addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the call log");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                let log = Some(Arc::new(Mutex::new(out)));
                tokio::select! {
                    () = serve(listener, upstream, Arc::new(Mutex::new(Vec::new())), log) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop: Some(stop),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The `app/<name>` token of the SDK's user agent: which program made the call.
fn app_of(headers: &hyper::HeaderMap) -> Option<String> {
    ["x-amz-user-agent", "user-agent"].iter().find_map(|h| {
        headers
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| {
                ua.split_whitespace()
                    .find_map(|t| t.strip_prefix("app/"))
                    .map(str::to_string)
            })
    })
}

/// The service of the SigV4 credential scope (`Credential=KEY/date/region/service/…`).
fn service_of(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(3))
        .map(str::to_string)
}

async fn forward(
    calls: Arc<Mutex<Vec<Call>>>,
    log: Log,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Utc::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let action = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .map(str::to_string)
        .or_else(|| {
            text.split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| s3_action(&parts.method, &parts.uri));
    let access_key = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .map(str::to_string);
    let entry = log.as_ref().map(|_| {
        let service = service_of(&parts.headers);
        serde_json::json!({
            "at": at.to_rfc3339(),
            "app": app_of(&parts.headers),
            "service": service,
            "access_key": access_key,
            "action": action,
            "target": parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()),
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query().unwrap_or_default(),
            "body": if service.as_deref() == Some("s3") { "" } else { text.as_str() },
        })
    });
    calls.lock().expect("recorder state").push(Call {
        at,
        action,
        body: text,
        access_key,
    });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = Request::builder()
        .method(parts.method)
        .uri(format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        out = out.header(k, v);
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let resp = match client.request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => status(StatusCode::BAD_GATEWAY),
    };
    if let (Some(log), Some(mut entry)) = (log, entry) {
        entry["status"] = resp.status().as_u16().into();
        let line = format!("{entry}\n");
        let _ = log.lock().expect("call log").write_all(line.as_bytes());
    }
    Ok(resp)
}

/// A name for an S3 REST call: the operation the SDK names, else its method and what
/// it addresses (the query's sub-resource, else an object or a bucket, path-style).
fn s3_action(method: &hyper::Method, uri: &hyper::Uri) -> String {
    let query = uri.query().unwrap_or_default();
    // The SDK names the operation itself (`?x-id=PutObject`) where the REST shape does not.
    if let Some(op) = query.split('&').find_map(|kv| kv.strip_prefix("x-id=")) {
        return format!("S3 {op}");
    }
    let what = match query.split('&').next() {
        Some(q) if !q.is_empty() => format!("?{}", q.split('=').next().unwrap_or(q)),
        _ if uri.path().trim_matches('/').contains('/') => "object".to_string(),
        _ => "bucket".to_string(),
    };
    format!("S3 {method} {what}")
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
