//! A local stand-in for the Lambda Runtime API (the HTTP interface a `provided.al2023`
//! function's `bootstrap` polls), so the packaged reaper binary runs for real in a
//! test: it serves the documented paths and headers and hands back what the function
//! answered.
//!
//! - `GET /2018-06-01/runtime/invocation/next`: the next queued event, with
//!   `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//!   `Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id`; with none
//!   queued the request stays open, as Lambda's does while the function is frozen.
//! - `POST /2018-06-01/runtime/invocation/<id>/response` and `…/<id>/error`: the
//!   function's result, answered `202 Accepted`.
//! - `POST /2018-06-01/runtime/init/error`: a failed start.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PREFIX: &str = "/2018-06-01/runtime";
/// The function ARN the emulator says was invoked.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:lease-test-reaper";
/// How long each invocation may run, as the deadline header tells the function.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the function sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Response { request_id: String, body: String },
    Error { request_id: String, body: String },
    InitError { body: String },
}

#[derive(Debug)]
struct State {
    queued: VecDeque<String>,
    served: u32,
}

/// A running emulator; its server task ends when this is dropped.
#[derive(Debug)]
pub struct RuntimeApi {
    /// `127.0.0.1:<port>`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    state: Arc<Mutex<State>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Starts on a free 127.0.0.1 port with these events (JSON texts) queued, served one
    /// per `next` in order.
    pub async fn start(events: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime API emulator on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            queued: events.iter().map(|e| e.to_string()).collect(),
            served: 0,
        }));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), tx.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            address: format!("127.0.0.1:{port}"),
            state,
            outcomes,
            server,
        }
    }

    /// The environment Lambda gives a function's process (the runtime library refuses
    /// to start without these).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.address.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "lease-test-reaper"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/lease-test-reaper"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// How many events the function has taken.
    pub fn served(&self) -> u32 {
        self.state.lock().expect("runtime API state").served
    }

    /// The function's next answer, or `None` when none came within `limit`.
    pub async fn outcome(&mut self, limit: Duration) -> Option<Outcome> {
        tokio::time::timeout(limit, self.outcomes.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    tx: mpsc::UnboundedSender<Outcome>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(reply(StatusCode::NOT_FOUND, r#"{"errorType":"NotFound"}"#));
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["invocation", "next"]) => {
            let next = {
                let mut s = state.lock().expect("runtime API state");
                let event = s.queued.pop_front();
                if event.is_some() {
                    s.served += 1;
                }
                event.map(|e| (e, s.served))
            };
            let Some((event, serial)) = next else {
                // Nothing to run: Lambda freezes the function here, mid-request.
                let never = std::future::pending::<Infallible>().await;
                match never {}
            };
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                + TIMEOUT;
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header(
                    "Lambda-Runtime-Aws-Request-Id",
                    format!("00000000-0000-4000-8000-{serial:012}"),
                )
                .header(
                    "Lambda-Runtime-Deadline-Ms",
                    deadline.as_millis().to_string(),
                )
                .header("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN)
                .header(
                    "Lambda-Runtime-Trace-Id",
                    "Root=1-00000000-000000000000000000000000;Sampled=0",
                )
                .body(Full::new(Bytes::from(event)))
                .expect("event response"))
        }
        (Method::POST, ["invocation", id, "response"]) => {
            let _ = tx.send(Outcome::Response {
                request_id: id.to_string(),
                body,
            });
            Ok(reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
        }
        (Method::POST, ["invocation", id, "error"]) => {
            let _ = tx.send(Outcome::Error {
                request_id: id.to_string(),
                body,
            });
            Ok(reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
        }
        (Method::POST, ["init", "error"]) => {
            let _ = tx.send(Outcome::InitError { body });
            Ok(reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, r#"{"errorType":"NotFound"}"#)),
    }
}
