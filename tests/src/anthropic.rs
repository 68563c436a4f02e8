//! A fake of Anthropic's Messages API for the real Claude Code CLI, on 127.0.0.1
//! only: `POST /v1/messages` answered with Server-Sent Events exactly as Anthropic
//! documents streaming (`message_start`, `content_block_start`, `content_block_delta`
//! with `text_delta` or `input_json_delta`, `content_block_stop`, `message_delta`
//! with `stop_reason` and `usage`, `message_stop`), or with an error status and
//! Anthropic's error body (`{"type":"error","error":{"type":…,"message":…}}`), as a
//! test scripts it.
//!
//! A [`Route`] is a list of [`Reply`]s given in order to the requests of a session's
//! conversation (those that offer tools); any other request (a title, a topic check)
//! and requests beyond the script get the route's `after` reply (a short text unless
//! set). Several sessions share one fake through routes chosen by a marker word in the
//! session's first message (its prompt). A request with a key other than
//! [`GOOD_KEY`] is answered 401. Every request is logged with its body, so a test can
//! check what the CLI sent.
//!
//! Claude Code reads `ANTHROPIC_BASE_URL` and sends `ANTHROPIC_API_KEY` as
//! `x-api-key`; [`FakeAnthropic::claude_env`] gives those and the variables that keep
//! it from calling anything else.
//!
//! Bedrock mode (`CLAUDE_CODE_USE_BEDROCK=1`, `ANTHROPIC_BEDROCK_BASE_URL` pointing
//! here): Claude Code 2.1.337 signs its requests with SigV4 (service `bedrock`), asks
//! `GET /inference-profiles` (answered 404 here; it carries on), and sends
//! `POST /model/<model id>/invoke` (a whole message) and
//! `POST /model/<model id>/invoke-with-response-stream`, answered as Bedrock does: the
//! same events, each a `chunk` message of AWS's binary event-stream framing whose
//! payload is `{"bytes": base64(event JSON)}`. A SigV4-signed request counts as
//! authenticated ([`Logged::sigv4`]).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stall::stream_body;
use tokio::net::TcpListener;

/// The key the fake accepts; any other is answered 401.
pub const GOOD_KEY: &str = "sk-ant-test-good-key";
/// The model the fake names in its answers when the request names none.
pub const MODEL: &str = "claude-sonnet-4-5-20250929";

/// A content block of a scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// A `tool_use` block; its input is streamed as `input_json_delta` fragments.
    ToolUse {
        name: String,
        input: Value,
    },
}

/// How the fake answers one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A streamed message.
    Message {
        blocks: Vec<Block>,
        stop_reason: String,
    },
    /// An HTTP error with Anthropic's error body.
    Error {
        status: u16,
        kind: String,
        message: String,
    },
    /// Starts the stream (`message_start` and a text block with `text`), then sends
    /// nothing more, holding the connection open: an API that stalls mid-answer.
    Stall { text: String },
}

impl Reply {
    pub fn text(text: &str) -> Self {
        Reply::Message {
            blocks: vec![Block::Text(text.into())],
            stop_reason: "end_turn".into(),
        }
    }

    pub fn tool(name: &str, input: Value) -> Self {
        Reply::Message {
            blocks: vec![Block::ToolUse {
                name: name.into(),
                input,
            }],
            stop_reason: "tool_use".into(),
        }
    }

    pub fn error(status: u16) -> Self {
        let (kind, message) = match status {
            400 => ("invalid_request_error", "Invalid request"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => ("permission_error", "Your API key does not have permission"),
            404 => ("not_found_error", "Not found"),
            429 => ("rate_limit_error", "Rate limited"),
            529 => ("overloaded_error", "Overloaded"),
            _ => ("api_error", "Internal server error"),
        };
        Reply::Error {
            status,
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub api_key: Option<String>,
    /// The request was signed with SigV4 for Bedrock (`Credential=…/bedrock/…`).
    pub sigv4: bool,
    pub body: Value,
    /// Whether it was one of the conversation's requests (it offered tools).
    pub conversation: bool,
    pub status: u16,
}

/// The script of the sessions whose prompt holds `marker` (every session for an
/// empty marker).
#[derive(Debug, Clone)]
pub struct Route {
    pub marker: String,
    pub script: Vec<Reply>,
    /// For every request once the script is used up, and for requests that are not
    /// the conversation's.
    pub after: Reply,
    next: usize,
}

impl Route {
    pub fn new(marker: &str, script: Vec<Reply>) -> Self {
        Self {
            marker: marker.into(),
            script,
            after: Reply::text("ok"),
            next: 0,
        }
    }

    /// Every request of the session gets `reply` (an API that is down).
    pub fn always(marker: &str, reply: Reply) -> Self {
        Self {
            after: reply,
            ..Self::new(marker, Vec::new())
        }
    }
}

#[derive(Debug)]
struct State {
    routes: Vec<Route>,
    log: Vec<Logged>,
    serial: u64,
}

/// A running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeAnthropic {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAnthropic {
    /// One script for every session.
    pub async fn start(script: Vec<Reply>) -> Self {
        Self::with_routes(vec![Route::new("", script)]).await
    }

    pub async fn with_routes(routes: Vec<Route>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Messages API on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            routes,
            log: Vec::new(),
            serial: 0,
        }));
        let shared = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
            server,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("fake Anthropic state"))
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.with(|s| s.log.clone())
    }

    /// The requests of the sessions whose prompt holds `marker`.
    pub fn requests_of(&self, marker: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| first_message(&r.body).contains(marker))
            .collect()
    }

    /// The environment that points Claude Code at this fake with `key`, and keeps it
    /// from reaching anything else (telemetry, updates, error reports) or retrying
    /// for minutes (`CLAUDE_CODE_MAX_RETRIES`).
    pub fn claude_env(&self, key: &str, retries: u32) -> Vec<(String, String)> {
        [
            ("ANTHROPIC_BASE_URL", self.endpoint.as_str()),
            ("ANTHROPIC_API_KEY", key),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", &retries.to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl FakeAnthropic {
    /// The environment that points Claude Code in Bedrock mode at this fake (the agent
    /// adds `CLAUDE_CODE_USE_BEDROCK=1` and `AWS_REGION` for `claude.bedrock: true`),
    /// with static test credentials standing in for the instance role's.
    pub fn bedrock_env(&self, retries: u32) -> Vec<(String, String)> {
        [
            ("ANTHROPIC_BEDROCK_BASE_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", &retries.to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("request-id", "req_fake")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let api_key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sigv4 = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ") && a.contains("/bedrock/aws4_request"));
    // Bedrock: /model/<id>/invoke[-with-response-stream]; the model is in the path.
    let bedrock_model = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'))
        .filter(|(_, action)| ["invoke", "invoke-with-response-stream"].contains(action))
        .map(|(model, action)| (model.to_string(), action == "invoke-with-response-stream"));
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let conversation = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let streaming = match &bedrock_model {
        Some((_, stream)) => *stream,
        None => body.get("stream").and_then(Value::as_bool) == Some(true),
    };
    let model = match &bedrock_model {
        Some((model, _)) => model.clone(),
        None => body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(MODEL)
            .to_string(),
    };
    let bedrock = bedrock_model.is_some();

    let (reply, id) = {
        let mut s = state.lock().expect("fake Anthropic state");
        s.serial += 1;
        let id = s.serial;
        let reply = if bedrock && !sigv4 {
            Reply::Error {
                status: 403,
                kind: "permission_error".into(),
                message: "Bedrock requests must be signed with SigV4".into(),
            }
        } else if bedrock {
            route_reply(&mut s.routes, &body, conversation)
        } else if method != "POST" || !path.starts_with("/v1/messages") {
            Reply::Error {
                status: 404,
                kind: "not_found_error".into(),
                message: format!("{method} {path} is not served by this fake"),
            }
        } else if path != "/v1/messages" {
            // count_tokens and the like: an honest "not here" is enough for the CLI.
            Reply::error(404)
        } else if api_key.as_deref() != Some(GOOD_KEY) {
            Reply::error(401)
        } else {
            route_reply(&mut s.routes, &body, conversation)
        };
        let status = match &reply {
            Reply::Error { status, .. } => *status,
            _ => 200,
        };
        s.log.push(Logged {
            method,
            path,
            api_key,
            sigv4,
            body: body.clone(),
            conversation,
            status,
        });
        (reply, id)
    };

    Ok(match reply {
        Reply::Error {
            status,
            kind,
            message,
        } => full(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "application/json",
            json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
        ),
        Reply::Message {
            blocks,
            stop_reason,
        } => {
            let id = format!("msg_fake{id:04}");
            if streaming && bedrock {
                let events = message_events(&id, &model, &blocks, &stop_reason);
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/vnd.amazon.eventstream")
                    .body(Full::new(bedrock_frames(&events)).boxed())
                    .expect("a response")
            } else if streaming {
                let events = message_events(&id, &model, &blocks, &stop_reason);
                full(StatusCode::OK, "text/event-stream", events.concat())
            } else {
                full(
                    StatusCode::OK,
                    "application/json",
                    whole_message(&id, &model, &blocks, &stop_reason).to_string(),
                )
            }
        }
        Reply::Stall { text } => {
            let id = format!("msg_fake{id:04}");
            let start = [
                sse("message_start", &message_start(&id, &model)),
                sse(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}),
                ),
                sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": text}}),
                ),
            ]
            .concat();
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/event-stream")
                .body(stream_body(start))
                .expect("a response")
        }
    })
}

/// The reply of the route whose marker the request's first message holds (the
/// longest such marker), taking the script's next reply for a conversation request.
fn route_reply(routes: &mut [Route], body: &Value, conversation: bool) -> Reply {
    let first = first_message(body);
    let route = routes
        .iter_mut()
        .filter(|r| first.contains(&r.marker))
        .max_by_key(|r| r.marker.len());
    match route {
        Some(r) if conversation && r.next < r.script.len() => {
            r.next += 1;
            r.script[r.next - 1].clone()
        }
        Some(r) => r.after.clone(),
        None => Reply::text("ok"),
    }
}

/// SSE events re-framed as Bedrock streams them: one event-stream `chunk` message per
/// event, its payload `{"bytes": base64(the event's JSON)}`.
pub fn bedrock_frames(events: &[String]) -> Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let mut out: Vec<u8> = Vec::new();
    for event in events {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let payload = json!({"bytes": aws_smithy_types::base64::encode(data)}).to_string();
        let message = Message::new(Bytes::from(payload))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String("chunk".into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ));
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
            .expect("an event-stream frame");
    }
    Bytes::from(out)
}

/// The first message of a request, as JSON text: it holds the session's prompt.
fn first_message(body: &Value) -> String {
    body.get("messages")
        .and_then(|m| m.get(0))
        .map(Value::to_string)
        .unwrap_or_default()
}

/// The usage every answer reports: small, fixed numbers, so a test can check the
/// cost the CLI computes from them is passed on.
fn usage(output_tokens: u64) -> Value {
    json!({"input_tokens": 100, "output_tokens": output_tokens,
           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
}

fn message_start(id: &str, model: &str) -> Value {
    json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "content": [],
        "model": model, "stop_reason": null, "stop_sequence": null, "usage": usage(1)}})
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The events of one streamed message, as Anthropic documents them: the text in
/// a few `text_delta`s, a tool's input in `input_json_delta` fragments of the JSON.
pub fn message_events(id: &str, model: &str, blocks: &[Block], stop_reason: &str) -> Vec<String> {
    let mut out = vec![
        sse("message_start", &message_start(id, model)),
        sse("ping", &json!({"type": "ping"})),
    ];
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(text) => {
                out.push(sse(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "text", "text": ""}}),
                ));
                for piece in pieces(text, 3) {
                    out.push(sse(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "text_delta", "text": piece}}),
                    ));
                }
            }
            Block::ToolUse { name, input } => {
                out.push(sse(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use",
                                              "id": format!("toolu_{id}_{index}"),
                                              "name": name, "input": {}}}),
                ));
                for piece in pieces(&input.to_string(), 3) {
                    out.push(sse(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece}}),
                    ));
                }
            }
        }
        out.push(sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    out.push(sse(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": 20}}),
    ));
    out.push(sse("message_stop", &json!({"type": "message_stop"})));
    out
}

fn whole_message(id: &str, model: &str, blocks: &[Block], stop_reason: &str) -> Value {
    let content: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(index, b)| match b {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { name, input } => json!({"type": "tool_use",
                "id": format!("toolu_{id}_{index}"), "name": name, "input": input}),
        })
        .collect();
    json!({"id": id, "type": "message", "role": "assistant", "content": content,
           "model": model, "stop_reason": stop_reason, "stop_sequence": null,
           "usage": usage(20)})
}

/// `s` cut into `n` pieces on character boundaries (the last takes the rest).
fn pieces(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

mod stall {
    //! A body that sends its first bytes and then never ends: what a stalled API
    //! looks like to a client.
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    struct Stalled {
        first: Option<Bytes>,
        sleep: Pin<Box<tokio::time::Sleep>>,
    }

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if let Some(first) = self.first.take() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            // Pending until long after any test has given up; then the stream ends.
            match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    pub fn stream_body(first: String) -> Body {
        BodyExt::boxed(Stalled {
            first: Some(Bytes::from(first)),
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3_600))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_streams_its_input_as_json_fragments() {
        let input = json!({"file_path": "/w/a.txt", "content": "hello"});
        let events = message_events(
            "m",
            MODEL,
            &[Block::ToolUse {
                name: "Write".into(),
                input: input.clone(),
            }],
            "tool_use",
        );
        let datas: Vec<Value> = events
            .iter()
            .map(|e| {
                serde_json::from_str(e.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                    .unwrap()
            })
            .collect();
        let partial: String = datas
            .iter()
            .filter(|d| d["delta"]["type"] == "input_json_delta")
            .map(|d| d["delta"]["partial_json"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), input);
        let types: Vec<&str> = datas.iter().map(|d| d["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"message_start"));
        assert_eq!(types.last(), Some(&"message_stop"));
        assert_eq!(datas[datas.len() - 2]["delta"]["stop_reason"], "tool_use");
    }
}
