//! The control plane a worker test or benchmark runs against, created in its own moto:
//! a pool queue with its dead-letter queue, the control bus with an events queue
//! subscribed, the bucket and both tables; and the readers tests check results with.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use lease_common::manifest::{Manifest, sha256_bytes};
use lease_common::messages::{Event, EventKind, ShellSpec, Task, TaskSpec};
use lease_common::records;

use crate::agent::Agent;
use crate::{FakeImds, Moto};

pub const POLL: Duration = Duration::from_millis(100);
pub const BUCKET: &str = "lease-test-results";
pub const TASKS_TABLE: &str = "lease-test-tasks";
pub const NODES_TABLE: &str = "lease-test-nodes";

/// The control plane a test's agents use, created in the test's own moto.
#[derive(Debug)]
pub struct Plane {
    pub moto: Moto,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub queue_url: String,
    pub dlq_url: String,
    pub topic_arn: String,
    pub events_url: String,
    /// Events received so far from the bus queue.
    pub seen: Vec<Event>,
}

pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    (url, arn)
}

pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str, key: &str) {
    ddb.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

impl Plane {
    pub async fn new() -> Self {
        let moto = Moto::start();
        let sdk = moto.sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let sns = aws_sdk_sns::Client::new(&sdk);
        let s3 = lease_common::aws::s3_client(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let (dlq_url, dlq_arn) = create_queue(&sqs, "lease-test-dlq-default").await;
        let (queue_url, _) = create_queue(&sqs, "lease-test-pool-default").await;
        sqs.set_queue_attributes()
            .queue_url(&queue_url)
            .attributes(
                QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"10"}}"#),
            )
            .send()
            .await
            .unwrap();
        let topic_arn = sns
            .create_topic()
            .name("lease-test-bus")
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let (events_url, events_arn) = create_queue(&sqs, "lease-test-events").await;
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(events_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .unwrap();
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        create_table(&ddb, TASKS_TABLE, records::TASK_ID).await;
        create_table(&ddb, NODES_TABLE, records::NODE_ID).await;
        Self {
            moto,
            sqs,
            s3,
            ddb,
            queue_url,
            dlq_url,
            topic_arn,
            events_url,
            seen: Vec::new(),
        }
    }

    /// A managed instance in moto with a lease long enough for any test, and the fake
    /// IMDS that stands for it.
    pub async fn instance(&self) -> (String, FakeImds) {
        let id = self
            .moto
            .run_instance(&[("lease:managed", "true"), ("lease:ttl", "2h")])
            .await;
        let imds = FakeImds::for_instance(self.moto.ec2().await, &id).await;
        (id, imds)
    }

    pub fn agent_config(&self, dir: &Path, extra: &str) -> String {
        format!(
            "state-dir: {}\nruntime-dir: {}\nqueue-url: {}\ntopic-arn: {}\nlog-bucket: {BUCKET}\n\
             tasks-table: {TASKS_TABLE}\nnodes-table: {NODES_TABLE}\nspot-poll-interval: 1s\n\
             tag-refresh-interval: 2s\nheartbeat-interval: 2s\n{extra}",
            dir.join("state").display(),
            dir.join("run").display(),
            self.queue_url,
            self.topic_arn,
        )
    }

    /// An agent serving this plane (test settings plus `extra` config).
    pub fn agent(&self, imds: &FakeImds, dir: &Path, extra: &str) -> Agent {
        self.agent_with(imds, dir, extra, &[])
    }

    pub fn agent_with(
        &self,
        imds: &FakeImds,
        dir: &Path,
        extra: &str,
        env: &[(String, String)],
    ) -> Agent {
        Agent::with_config(&self.moto, imds, dir, &self.agent_config(dir, extra), env)
    }

    pub async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    pub async fn task_item(&self, task_id: &str) -> Option<BTreeMap<String, AttributeValue>> {
        self.ddb
            .get_item()
            .table_name(TASKS_TABLE)
            .key(records::TASK_ID, AttributeValue::S(task_id.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item()
            .map(|i| i.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    pub async fn task_state(&self, task_id: &str) -> Option<String> {
        self.task_item(task_id).await.and_then(|i| {
            i.get(records::task::STATE)
                .and_then(|v| v.as_s().ok())
                .cloned()
        })
    }

    pub async fn wait_for_state(&self, task_id: &str, want: &str, limit: Duration, agent: &Agent) {
        let start = Instant::now();
        loop {
            if self.task_state(task_id).await.as_deref() == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "task {task_id} not {want} within {limit:?} (is {:?})\n{}",
                self.task_state(task_id).await,
                agent.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Visible plus in-flight plus delayed messages of a queue.
    pub async fn queue_count(&self, url: &str) -> u64 {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().unwrap();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|k| {
            attrs
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
    }

    /// The task queue holds nothing at all: a receive returns nothing and every count
    /// is zero.
    pub async fn assert_queue_empty(&self) {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        assert!(out.messages().is_empty(), "{:?}", out.messages());
        assert_eq!(self.queue_count(&self.queue_url).await, 0);
    }

    pub async fn wait_queue_empty(&self, limit: Duration, agent: &Agent) {
        self.wait_queue_empty_every(limit, POLL, agent).await;
    }

    pub async fn wait_queue_empty_every(&self, limit: Duration, every: Duration, agent: &Agent) {
        let start = Instant::now();
        while self.queue_count(&self.queue_url).await != 0 {
            assert!(
                start.elapsed() < limit,
                "queue not empty after {limit:?}\n{}",
                agent.logs()
            );
            tokio::time::sleep(every).await;
        }
    }

    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .s3
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(out.body.collect().await.unwrap().into_bytes().to_vec())
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        crate::s3::keys(&self.s3, BUCKET, prefix).await.unwrap()
    }

    /// Every file of the bundle at `base` (`…/bundle/` + `…/manifest.json`), checked
    /// against its manifest: (relative path → content).
    pub async fn bundle(
        &self,
        files_prefix: &str,
        manifest_key: &str,
    ) -> BTreeMap<String, Vec<u8>> {
        let manifest = self
            .object(manifest_key)
            .await
            .unwrap_or_else(|| panic!("no manifest at {manifest_key}"));
        let manifest = Manifest::parse(std::str::from_utf8(&manifest).unwrap()).unwrap();
        let mut files = BTreeMap::new();
        for f in &manifest.files {
            let body = self
                .object(&format!("{files_prefix}{}", f.path))
                .await
                .unwrap_or_else(|| panic!("{} listed in the manifest, not in S3", f.path));
            assert_eq!(body.len() as u64, f.size, "{}", f.path);
            assert_eq!(sha256_bytes(&body), f.sha256, "{}", f.path);
            files.insert(f.path.clone(), body);
        }
        let stored = self.keys(files_prefix).await;
        assert_eq!(stored.len(), manifest.files.len(), "{stored:?}");
        files
    }

    /// Reads the bus queue until `pred` holds for a received event.
    pub async fn wait_event(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let start = Instant::now();
        loop {
            if let Some(e) = self.seen.iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no {what} on the bus within {limit:?}; saw {:?}",
                self.seen.iter().map(|e| e.type_name()).collect::<Vec<_>>()
            );
            self.drain_events().await;
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn drain_events(&mut self) {
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.events_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .unwrap();
            if out.messages().is_empty() {
                return;
            }
            for m in out.messages() {
                let body = m.body().unwrap();
                self.seen
                    .push(Event::parse(body).unwrap_or_else(|e| panic!("{e}: {body}")));
                self.sqs
                    .delete_message()
                    .queue_url(&self.events_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    pub fn events_of(&self, task_id: &str) -> Vec<&Event> {
        self.seen
            .iter()
            .filter(|e| task_of(e) == Some(task_id))
            .collect()
    }
}

pub fn task_of(e: &Event) -> Option<&str> {
    match &e.kind {
        EventKind::TaskStarted { task_id, .. }
        | EventKind::TaskOutput { task_id, .. }
        | EventKind::TaskCompleted { task_id, .. }
        | EventKind::TaskInterrupted { task_id, .. } => Some(task_id),
        EventKind::TaskFailed { task_id, .. } => task_id.as_deref(),
        _ => None,
    }
}

pub fn shell(id: &str, command: &str) -> Task {
    Task::new(
        id,
        TaskSpec::Shell(ShellSpec {
            command: command.into(),
        }),
    )
}
