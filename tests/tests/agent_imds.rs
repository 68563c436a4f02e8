//! The agent's IMDSv2 client against the fake IMDS, and the fake against EC2's
//! documented behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lease_tests::imds::{FakeImds, InstanceInfo, Outage};
use leased::imds::{self, Imds, ImdsError, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fake() -> FakeImds {
    let mut tags = BTreeMap::new();
    tags.insert("lease:ttl".to_string(), "2h".to_string());
    tags.insert("lease:managed".to_string(), "true".to_string());
    FakeImds::start(InstanceInfo::example("i-0123456789abcdef0"), tags).await
}

/// One raw HTTP/1.1 request, returning the status code (to check the fake itself,
/// without our client's opinions).
async fn raw(port: u16, request: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_enforces_imdsv2_as_ec2_documents() {
    let f = fake().await;
    let put = |ttl: Option<&str>| {
        let h = ttl
            .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
            .unwrap_or_default();
        format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{h}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    assert_eq!(raw(f.port, &put(None)).await, 400);
    assert_eq!(raw(f.port, &put(Some("0"))).await, 400);
    assert_eq!(raw(f.port, &put(Some("21601"))).await, 400);
    assert_eq!(raw(f.port, &put(Some("21600"))).await, 200);
    // IMDSv1: a GET without a token.
    let v1 = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(f.port, v1).await, 401);
    let bogus = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: nope\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(f.port, bogus).await, 401);
    let forwarded = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(f.port, forwarded).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_serves_many_requests_and_404_is_none() {
    let f = fake().await;
    let c = Imds::new(&f.endpoint, Duration::from_secs(1)).unwrap();
    for _ in 0..20 {
        assert_eq!(
            c.get("meta-data/instance-id").await.unwrap().as_deref(),
            Some("i-0123456789abcdef0")
        );
    }
    assert_eq!(c.get(leased::spot::INSTANCE_ACTION).await.unwrap(), None);
    assert_eq!(c.get(leased::spot::REBALANCE).await.unwrap(), None);
    assert_eq!(c.get("meta-data/tags/instance/absent").await.unwrap(), None);
    assert_eq!(f.token_puts(), 1);
    assert_eq!(f.unauthorized(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_on_401() {
    let f = fake().await;
    let c = Imds::new(&f.endpoint, Duration::from_secs(1)).unwrap();
    c.get("meta-data/instance-id").await.unwrap();
    f.revoke_tokens();
    assert!(c.get("meta-data/instance-id").await.unwrap().is_some());
    assert_eq!(f.token_puts(), 2);
    assert_eq!(f.unauthorized(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refreshed_before_it_expires() {
    let f = fake().await;
    let c = Imds::new(&f.endpoint, Duration::from_secs(1))
        .unwrap()
        .with_token_ttl(Duration::from_secs(2));
    c.get("meta-data/instance-id").await.unwrap();
    // Refreshed at 90 % of its life, so no request ever meets a 401.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        c.get("meta-data/instance-id").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f.token_puts() >= 2, "token PUTs: {}", f.token_puts());
    assert_eq!(f.unauthorized(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_timeouts_are_errors_and_bounded() {
    let f = fake().await;
    let c = Imds::new(&f.endpoint, Duration::from_millis(300)).unwrap();
    c.get("meta-data/instance-id").await.unwrap();
    f.fail_next(1);
    let err = c.get("meta-data/instance-id").await.unwrap_err();
    assert!(
        matches!(err, ImdsError::Status { status: 500, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("meta-data/instance-id"), "{err}");
    assert!(c.get("meta-data/instance-id").await.unwrap().is_some());

    // Slow but inside the limit is an answer.
    f.set_delay(Some(Duration::from_millis(100)));
    assert!(c.get("meta-data/instance-id").await.unwrap().is_some());
    f.set_delay(None);

    f.set_outage(Some(Outage::Hang(Duration::from_secs(5))));
    let start = Instant::now();
    let err = c.get("meta-data/instance-id").await.unwrap_err();
    assert!(matches!(err, ImdsError::Timeout { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    f.set_outage(None);
    assert!(c.get("meta-data/instance-id").await.unwrap().is_some());

    // Nothing listening at all.
    let dead = Imds::new("http://127.0.0.1:9", Duration::from_millis(300)).unwrap();
    assert!(dead.get("meta-data/instance-id").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tags_and_notices_parse() {
    let f = fake().await;
    let c = Imds::new(&f.endpoint, Duration::from_secs(1)).unwrap();
    let id = imds::read_identity(&c).await.unwrap();
    assert_eq!(id.instance_id, "i-0123456789abcdef0");
    assert_eq!(id.region, "us-east-1");
    assert_eq!(id.market, "on-demand");
    assert!(id.launched_at.is_some());
    let tags = imds::read_tags(&c).await.unwrap().unwrap();
    assert_eq!(tags.get("lease:ttl").map(String::as_str), Some("2h"));
    f.set_metadata_tags(false);
    assert_eq!(imds::read_tags(&c).await.unwrap(), None);

    let when = chrono::Utc::now() + chrono::TimeDelta::minutes(2);
    f.set_spot_action("terminate", when);
    f.set_rebalance(when);
    let n = leased::spot::parse_instance_action(
        &c.get(leased::spot::INSTANCE_ACTION).await.unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(n.action, "terminate");
    assert_eq!(n.time.timestamp(), when.timestamp());
    let r = leased::spot::parse_rebalance(&c.get(leased::spot::REBALANCE).await.unwrap().unwrap())
        .unwrap();
    assert_eq!(r.notice_time.timestamp(), when.timestamp());
}
