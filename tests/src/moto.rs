//! moto's server, one per test, on a free 127.0.0.1 port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_types::SdkConfig;

use crate::recorder::{CALL_LOG_ENV, CallLog};

pub const REGION: &str = "us-east-1";

/// A running `moto_server`, killed when dropped. Each test gets its own, so tests run
/// in parallel without seeing each other's instances.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub port: u16,
    /// Where clients talk to the emulator: moto itself, or, when calls are logged
    /// ([`CALL_LOG_ENV`]), the logging proxy in front of it.
    pub endpoint: String,
    /// The logging proxy, kept alive with the emulator.
    _call_log: Option<CallLog>,
}

/// `LEASE_MOTO_SERVER` (set by tests/run to its virtual environment's copy) or
/// `moto_server` on PATH.
fn moto_server_path() -> PathBuf {
    std::env::var_os("LEASE_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("moto_server"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

impl Moto {
    pub fn start() -> Self {
        // A port can be taken between choosing and binding; try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(moto_server_path())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {}: {e} (tests/run installs moto into a virtual environment)",
                        moto_server_path().display()
                    )
                });
            let endpoint = format!("http://127.0.0.1:{port}");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let call_log = std::env::var_os(CALL_LOG_ENV).map(|dir| {
                        std::fs::create_dir_all(&dir).expect("create the call log directory");
                        let file =
                            PathBuf::from(dir).join(format!("{}-{port}.jsonl", std::process::id()));
                        CallLog::start(&endpoint, &file)
                    });
                    let endpoint = call_log
                        .as_ref()
                        .map_or(endpoint, |l| l.endpoint().to_string());
                    return Self {
                        child,
                        port,
                        endpoint,
                        _call_log: call_log,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start listening on 127.0.0.1");
    }

    /// The server's process id, for benchmarks that weigh what it spends.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Environment for a child process (`lease`, `leased`, `aws`) that must talk to this
    /// emulator and nothing else.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("NO_COLOR", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// SDK config for the test's own reads of the emulator's state.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "lease-tests",
            ))
            .load()
            .await
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk_config().await)
    }

    /// Launches one instance directly through EC2 (not through lease), with these tags set
    /// by RunInstances itself; no tags makes an instance lease does not manage.
    pub async fn run_instance(&self, tags: &[(&str, &str)]) -> String {
        let mut req = self
            .ec2()
            .await
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1);
        if !tags.is_empty() {
            let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
            }
            req = req.tag_specifications(spec.build());
        }
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("RunInstances: {e:?}"));
        out.instances()[0]
            .instance_id()
            .expect("RunInstances returns an instance id")
            .to_string()
    }

    /// One instance as DescribeInstances shows it: what tests assert on.
    pub async fn instance(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        let out = self
            .ec2()
            .await
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeInstances {id}: {e:?}"));
        out.reservations()[0].instances()[0].clone()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
