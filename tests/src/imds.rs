//! A fake EC2 instance metadata service that serves exactly what EC2 documents for
//! IMDSv2, on 127.0.0.1 only:
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1–21600; a
//!   missing or out-of-range value is 400; a request carrying `X-Forwarded-For` is 403)
//!   returns a token; every other request must carry it in `X-aws-ec2-metadata-token`,
//!   else 401 (missing, unknown or expired). IMDSv1 (a GET without a token) is 401, as
//!   on an instance launched with `HttpTokens=required`.
//! - `meta-data/instance-id`, `instance-type`, `ami-id`, `local-ipv4`,
//!   `placement/region`, `placement/availability-zone`, `instance-life-cycle`;
//!   `meta-data/spot/instance-action` and `meta-data/events/recommendations/rebalance`
//!   (404 with no notice); `meta-data/tags/instance` (keys, one per line; 404 when
//!   metadata tags are off) and `meta-data/tags/instance/<key>` (404 for a missing key);
//!   `dynamic/instance-identity/document` (EC2's JSON); with an instance profile
//!   ([`FakeImds::set_role`]), `meta-data/iam/security-credentials/` (the role's name)
//!   and `meta-data/iam/security-credentials/<role>` (EC2's credentials JSON, with the
//!   key, secret and session token of a real STS AssumeRole of the role: [`assume_role`]).
//!
//! Backed by moto ([`FakeImds::for_instance`]), the identity comes from the emulator's
//! instance and the tags are read from it on every request, so a `lease extend`
//! (CreateTags) is seen through IMDS as on EC2.
//!
//! Test hooks: spot and rebalance notices, the next N answers as 500, an outage (500s
//! or hanging requests), a delay on every answer, and counters (token PUTs, requests).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The most a token may live, per EC2's documentation.
pub const MAX_TOKEN_TTL: u64 = 21_600;

/// What the instance looks like from inside.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    /// `spot` or `on-demand`.
    pub life_cycle: String,
    pub pending_time: DateTime<Utc>,
    pub image_id: String,
    pub private_ip: String,
    pub account_id: String,
    pub architecture: String,
}

impl InstanceInfo {
    pub fn example(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.into(),
            instance_type: "t3.micro".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            life_cycle: "on-demand".into(),
            pending_time: Utc::now(),
            image_id: "ami-12c6146b".into(),
            private_ip: "10.0.0.12".into(),
            account_id: "123456789012".into(),
            architecture: "x86_64".into(),
        }
    }
}

/// How IMDS misbehaves during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Every request (token PUTs included) answers 500.
    Errors,
    /// Every request hangs for this long, then answers 500 (clients time out first).
    Hang(Duration),
}

#[derive(Debug)]
struct State {
    info: InstanceInfo,
    /// Read the tags from this emulator instead of `static_tags`.
    moto: Option<aws_sdk_ec2::Client>,
    /// The last tags read from the emulator, reused for this long so one client read
    /// (list, then one request per key) sees one consistent set.
    moto_cache: Option<(Instant, BTreeMap<String, String>)>,
    static_tags: BTreeMap<String, String>,
    metadata_tags: bool,
    tokens: HashMap<String, Instant>,
    token_serial: u64,
    token_puts: u64,
    requests: u64,
    unauthorized: u64,
    spot_action: Option<String>,
    rebalance: Option<String>,
    /// The instance profile's role name and its credentials.
    role: Option<(String, RoleCredentials)>,
    /// How many times the role's credentials were served.
    credentials_served: u64,
    fail_next: u32,
    outage: Option<Outage>,
    delay: Option<Duration>,
}

const MOTO_CACHE: Duration = Duration::from_millis(150);

/// A running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeImds {
    pub endpoint: String,
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeImds {
    /// A fake for a made-up instance with fixed tags.
    pub async fn start(info: InstanceInfo, tags: BTreeMap<String, String>) -> Self {
        Self::serve(info, None, tags).await
    }

    /// A fake for an instance in moto: identity from DescribeInstances, tags read from
    /// moto on every request.
    pub async fn for_instance(ec2: aws_sdk_ec2::Client, instance_id: &str) -> Self {
        let resp = ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .expect("describe the instance the fake IMDS stands for");
        let inst = resp
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()
            .expect("instance exists in moto");
        let launch = inst
            .launch_time()
            .map(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0).expect("valid launch time"))
            .unwrap_or_else(Utc::now);
        let info = InstanceInfo {
            instance_id: instance_id.to_string(),
            instance_type: inst
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "t3.micro".into()),
            region: crate::moto::REGION.into(),
            availability_zone: inst
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or("us-east-1a")
                .to_string(),
            life_cycle: match inst.instance_lifecycle().map(|l| l.as_str()) {
                Some("spot") => "spot".into(),
                _ => "on-demand".into(),
            },
            pending_time: launch,
            image_id: inst.image_id().unwrap_or("ami-12c6146b").to_string(),
            private_ip: inst.private_ip_address().unwrap_or("10.0.0.12").to_string(),
            account_id: "123456789012".into(),
            architecture: inst
                .architecture()
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| "x86_64".into()),
        };
        Self::serve(info, Some(ec2), BTreeMap::new()).await
    }

    async fn serve(
        info: InstanceInfo,
        moto: Option<aws_sdk_ec2::Client>,
        static_tags: BTreeMap<String, String>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake IMDS on 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            info,
            moto,
            moto_cache: None,
            static_tags,
            metadata_tags: true,
            tokens: HashMap::new(),
            token_serial: 0,
            token_puts: 0,
            requests: 0,
            unauthorized: 0,
            spot_action: None,
            role: None,
            credentials_served: 0,
            rebalance: None,
            fail_next: 0,
            outage: None,
            delay: None,
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
            port,
            state,
            server,
        }
    }

    /// The variable that points the agent (and the AWS SDKs) at this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(),
            self.endpoint.clone(),
        )]
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("fake IMDS state"))
    }

    pub fn info(&self) -> InstanceInfo {
        self.with(|s| s.info.clone())
    }

    /// Serves a spot interruption notice, as EC2 does two minutes before reclaiming.
    pub fn set_spot_action(&self, action: &str, time: DateTime<Utc>) {
        let body = format!(
            "{{\"action\": \"{action}\", \"time\": \"{}\"}}",
            time.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        self.with(|s| s.spot_action = Some(body));
    }

    pub fn clear_spot_action(&self) {
        self.with(|s| s.spot_action = None);
    }

    pub fn set_rebalance(&self, notice_time: DateTime<Utc>) {
        let body = format!(
            "{{\"noticeTime\": \"{}\"}}",
            notice_time.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        self.with(|s| s.rebalance = Some(body));
    }

    /// Gives the instance a profile whose role's credentials are `credentials`
    /// (real ones: [`assume_role`]).
    pub fn set_role(&self, role: &str, credentials: RoleCredentials) {
        self.with(|s| s.role = Some((role.into(), credentials)));
    }

    /// The instance profile's role and the credentials served for it, if it has one.
    pub fn role(&self) -> Option<(String, RoleCredentials)> {
        self.with(|s| s.role.clone())
    }

    /// The role's credentials as the standard variables, for the one case where the
    /// SDK cannot fetch them from this fake: a process started during an outage.
    pub fn role_env(&self) -> Vec<(String, String)> {
        let (_, c) = self
            .role()
            .expect("the fake IMDS has no role whose credentials to hand out");
        vec![
            ("AWS_ACCESS_KEY_ID".into(), c.access_key_id),
            ("AWS_SECRET_ACCESS_KEY".into(), c.secret_access_key),
            ("AWS_SESSION_TOKEN".into(), c.session_token),
        ]
    }

    /// The next `n` requests (of any kind) answer 500.
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    pub fn set_outage(&self, outage: Option<Outage>) {
        self.with(|s| s.outage = outage);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.with(|s| s.delay = delay);
    }

    /// Switches instance metadata tags on or off (`tags/instance` then answers 404).
    pub fn set_metadata_tags(&self, on: bool) {
        self.with(|s| s.metadata_tags = on);
    }

    /// Sets a tag (fixed-tag fakes only; moto-backed fakes read moto).
    pub fn set_tag(&self, key: &str, value: &str) {
        self.with(|s| {
            s.static_tags.insert(key.into(), value.into());
        });
    }

    /// Forgets every token issued, as an IMDS restart would: the next GET is 401.
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// How many times a client fetched the role's credentials.
    pub fn credentials_served(&self) -> u64 {
        self.with(|s| s.credentials_served)
    }

    /// Waits until a client (the agent's SDK) has fetched the role's credentials, so
    /// a test can take IMDS away knowing the client holds them.
    pub async fn credentials_fetched(&self) {
        crate::wait_until(
            "a client to fetch the role's credentials from IMDS",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async { (self.credentials_served() > 0).then_some(()) },
        )
        .await;
    }

    pub fn token_puts(&self) -> u64 {
        self.with(|s| s.token_puts)
    }

    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    pub fn unauthorized(&self) -> u64 {
        self.with(|s| s.unauthorized)
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("server", "EC2ws")
        .body(Full::new(Bytes::from(body.into())))
        .expect("static response")
}

fn not_found() -> Response<Full<Bytes>> {
    // What EC2 sends for a path with nothing behind it.
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "text/html")
        .header("server", "EC2ws")
        .body(Full::new(Bytes::from_static(
            b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html>\n<html><head><title>404 - Not Found</title></head><body><h1>404 - Not Found</h1></body></html>\n",
        )))
        .expect("static response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (delay, outage, fail) = {
        let mut s = state.lock().expect("fake IMDS state");
        s.requests += 1;
        let fail = if s.fail_next > 0 {
            s.fail_next -= 1;
            true
        } else {
            false
        };
        (s.delay, s.outage, fail)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match outage {
        Some(Outage::Errors) => return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "")),
        Some(Outage::Hang(d)) => {
            tokio::time::sleep(d).await;
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, ""));
        }
        None => {}
    }
    if fail {
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    let path = req.uri().path().to_string();
    if path == "/latest/api/token" {
        return Ok(token(&state, &req));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, ""));
    }
    // IMDSv2 only: a valid, unexpired token or 401.
    let authorized = {
        let mut s = state.lock().expect("fake IMDS state");
        let ok = req
            .headers()
            .get("x-aws-ec2-metadata-token")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| s.tokens.get(t))
            .is_some_and(|exp| Instant::now() < *exp);
        if !ok {
            s.unauthorized += 1;
        }
        ok
    };
    if !authorized {
        return Ok(text(StatusCode::UNAUTHORIZED, ""));
    }
    let Some(rest) = path.strip_prefix("/latest/") else {
        return Ok(not_found());
    };
    Ok(match answer(&state, rest).await {
        Some(body) => text(StatusCode::OK, body),
        None => not_found(),
    })
}

fn token(state: &Arc<Mutex<State>>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::PUT {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    if req.headers().contains_key("x-forwarded-for") {
        return text(StatusCode::FORBIDDEN, "");
    }
    let ttl = req
        .headers()
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| (1..=MAX_TOKEN_TTL).contains(t));
    let Some(ttl) = ttl else {
        return text(StatusCode::BAD_REQUEST, "");
    };
    let mut s = state.lock().expect("fake IMDS state");
    s.token_puts += 1;
    s.token_serial += 1;
    let nanos = Utc::now().timestamp_subsec_nanos();
    let token = format!("AQAEA{:012x}{:08x}fake==", s.token_serial, nanos);
    s.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .header("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())
        .body(Full::new(Bytes::from(token)))
        .expect("static response")
}

async fn tags(state: &Arc<Mutex<State>>) -> Option<BTreeMap<String, String>> {
    let (moto, id, cached) = {
        let s = state.lock().expect("fake IMDS state");
        if !s.metadata_tags {
            return None;
        }
        match &s.moto {
            None => return Some(s.static_tags.clone()),
            Some(c) => (
                c.clone(),
                s.info.instance_id.clone(),
                s.moto_cache
                    .as_ref()
                    .filter(|(at, _)| at.elapsed() < MOTO_CACHE)
                    .map(|(_, t)| t.clone()),
            ),
        }
    };
    if let Some(t) = cached {
        return Some(t);
    }
    let resp = moto
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .ok()?;
    let map: BTreeMap<String, String> = resp
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect();
    state.lock().expect("fake IMDS state").moto_cache = Some((Instant::now(), map.clone()));
    Some(map)
}

async fn answer(state: &Arc<Mutex<State>>, path: &str) -> Option<String> {
    let (info, spot, rebalance, role) = {
        let s = state.lock().expect("fake IMDS state");
        (
            s.info.clone(),
            s.spot_action.clone(),
            s.rebalance.clone(),
            s.role.clone(),
        )
    };
    let path = path.trim_end_matches('/');
    match path {
        "meta-data/instance-id" => Some(info.instance_id),
        "meta-data/instance-type" => Some(info.instance_type),
        "meta-data/ami-id" => Some(info.image_id),
        "meta-data/local-ipv4" => Some(info.private_ip),
        "meta-data/placement/region" => Some(info.region),
        "meta-data/placement/availability-zone" => Some(info.availability_zone),
        "meta-data/instance-life-cycle" => Some(info.life_cycle),
        "meta-data/spot/instance-action" => spot,
        "meta-data/events/recommendations/rebalance" => rebalance,
        "meta-data/tags/instance" => {
            let t = tags(state).await?;
            Some(t.keys().cloned().collect::<Vec<_>>().join("\n"))
        }
        "dynamic/instance-identity/document" => Some(identity_document(&info)),
        "meta-data/iam/security-credentials" => role.map(|(name, _)| name),
        other => {
            if let Some(asked) = other.strip_prefix("meta-data/iam/security-credentials/") {
                let (name, credentials) = role?;
                if asked != name {
                    return None;
                }
                state.lock().expect("fake IMDS state").credentials_served += 1;
                return Some(role_credentials(&credentials));
            }
            let key = other.strip_prefix("meta-data/tags/instance/")?;
            tags(state).await?.get(key).cloned()
        }
    }
}

/// Temporary credentials of a role, as STS issued them.
#[derive(Debug, Clone)]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: DateTime<Utc>,
}

/// The agents' role of the stack the harness's `lease` commands use (`main`, the
/// default): the role every agent the harness starts signs as, unless its test gave
/// the fake IMDS another one.
pub const AGENT_ROLE: &str = "lease-main-agent";

/// What EC2 does for an instance profile: STS AssumeRole of `role` (in the emulator
/// at `moto`), the session named after the instance, so the agent signs with the
/// role's real (emulated) credentials and not a key the test made up. The role is
/// created when the emulator has none by that name (no `lease setup` ran) as setup
/// would make it: trusting EC2 only, with the policy `lease iam-policy agent` prints
/// for its stack. The emulator does not enforce that policy: tests/iam_check.py
/// checks every call signed with the session's key against it.
pub async fn assume_role(moto: &crate::Moto, role: &str, instance_id: &str) -> RoleCredentials {
    let config = moto.sdk_config().await;
    let iam = aws_sdk_iam::Client::new(&config);
    let arn = match iam.get_role().role_name(role).send().await {
        Ok(out) => out.role().map(|r| r.arn().to_string()),
        Err(_) => None,
    };
    let arn = match arn {
        Some(a) => a,
        None => {
            let trust = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "Service": "ec2.amazonaws.com" },
                    "Action": "sts:AssumeRole",
                }],
            });
            let arn = iam
                .create_role()
                .role_name(role)
                .assume_role_policy_document(trust.to_string())
                .send()
                .await
                .unwrap_or_else(|e| panic!("CreateRole {role}: {e:?}"))
                .role()
                .map(|r| r.arn().to_string())
                .expect("the created role's ARN");
            if let Some(policy) = agent_policy(moto, role).await {
                iam.put_role_policy()
                    .role_name(role)
                    .policy_name(role)
                    .policy_document(policy)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("PutRolePolicy {role}: {e:?}"));
            }
            arn
        }
    };
    session(&config, &arn, instance_id).await
}

/// STS AssumeRole of the role `arn`, the session named after the instance.
async fn session(config: &aws_types::SdkConfig, arn: &str, instance_id: &str) -> RoleCredentials {
    let out = aws_sdk_sts::Client::new(config)
        .assume_role()
        .role_arn(arn)
        .role_session_name(instance_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole {arn}: {e:?}"));
    let c = out.credentials().expect("AssumeRole returned credentials");
    RoleCredentials {
        access_key_id: c.access_key_id().to_string(),
        secret_access_key: c.secret_access_key().to_string(),
        session_token: c.session_token().to_string(),
        expiration: DateTime::<Utc>::from_timestamp(c.expiration().secs(), 0)
            .unwrap_or_else(|| Utc::now() + chrono::TimeDelta::hours(1)),
    }
}

/// The policy `lease iam-policy agent` prints for the stack whose agents' role is
/// `role` (`lease-<stack>-agent`); None for a role named otherwise.
async fn agent_policy(moto: &crate::Moto, role: &str) -> Option<String> {
    let stack = role.strip_prefix("lease-")?.strip_suffix("-agent")?;
    let account = InstanceInfo::example("i-0").account_id;
    let policy = crate::Cmd::new("lease", &moto.env())
        .args([
            "iam-policy",
            "agent",
            "--account",
            &account,
            "--stack",
            stack,
        ])
        // As tests/iam_check.py reads it: the suite's Claude tasks read the API key
        // from SSM, as on a stack set up with `--claude-auth api-key`.
        .args(["--claude-auth", "api-key"])
        .ok()
        .await;
    Some(policy)
}

/// An STS session of the role `role` of moto's account for an agent's start, which
/// cannot await: one AssumeRole (STS here does not look the role up), on a thread with
/// a runtime of its own, since the caller's runtime may be single-threaded and busy
/// waiting here. Creating the role too ([`assume_role`]) would make IAM's first
/// answer, slow in a fresh emulator, part of every agent's start, which tests with
/// leases of a few seconds cannot afford.
pub fn role_session_blocking(moto: &crate::Moto, role: &str, instance_id: &str) -> RoleCredentials {
    let arn = format!(
        "arn:aws:iam::{}:role/{role}",
        InstanceInfo::example(instance_id).account_id
    );
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for AssumeRole")
                    .block_on(async { session(&moto.sdk_config().await, &arn, instance_id).await })
            })
            .join()
            .expect("AssumeRole for the agent's instance profile")
    })
}

/// The role's temporary credentials in the document EC2 serves.
fn role_credentials(c: &RoleCredentials) -> String {
    let doc = serde_json::json!({
        "Code": "Success",
        "LastUpdated": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "Type": "AWS-HMAC",
        "AccessKeyId": c.access_key_id,
        "SecretAccessKey": c.secret_access_key,
        "Token": c.session_token,
        "Expiration": c.expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    serde_json::to_string_pretty(&doc).expect("serialise role credentials")
}

fn identity_document(i: &InstanceInfo) -> String {
    // EC2's layout, nulls included.
    let doc = serde_json::json!({
        "accountId": i.account_id,
        "architecture": i.architecture,
        "availabilityZone": i.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": i.image_id,
        "instanceId": i.instance_id,
        "instanceType": i.instance_type,
        "kernelId": null,
        "pendingTime": i.pending_time.to_rfc3339_opts(SecondsFormat::Secs, true),
        "privateIp": i.private_ip,
        "ramdiskId": null,
        "region": i.region,
        "version": "2017-09-30"
    });
    serde_json::to_string_pretty(&doc).expect("serialise identity document")
}
