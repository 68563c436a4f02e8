//! `lease submit`'s task records, `lease tasks`, `lease nodes` and `lease stats` by
//! state, against moto's DynamoDB and SQS. Tables are created here with the key schema
//! `lease_common::records` fixes; records the agent would write are put through the
//! SDK, and every change lease makes is read back through the SDK (GetItem, Scan).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chrono::{TimeDelta, Utc};
use lease_common::records::{self, node, task};
use lease_common::tags::render_time;
use lease_tests::plane::create_table;
use lease_tests::{Cmd, Moto};

const TASKS: &str = "lease-test-tasks";
const NODES: &str = "lease-test-nodes";

type Item = HashMap<String, AttributeValue>;

struct Control {
    moto: Moto,
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

async fn control() -> Control {
    let moto = Moto::start();
    let config = moto.sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&ddb, TASKS, records::TASK_ID).await;
    create_table(&ddb, NODES, records::NODE_ID).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue_url = sqs
        .create_queue()
        .queue_name("lease-test-pool-default")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    Control {
        moto,
        ddb,
        sqs,
        queue_url,
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ago(minutes: i64) -> AttributeValue {
    s(&render_time(Utc::now() - TimeDelta::minutes(minutes)))
}

/// A task record as the agent writes it.
fn task_item(id: &str, state: &str, submitted_min_ago: i64) -> Item {
    HashMap::from([
        (records::TASK_ID.to_string(), s(id)),
        (task::STATE.to_string(), s(state)),
        (task::KIND.to_string(), s("shell")),
        (task::POOL.to_string(), s("default")),
        (task::ATTEMPT.to_string(), n(1)),
        (task::SUBMITTED_AT.to_string(), ago(submitted_min_ago)),
        (task::UPDATED_AT.to_string(), ago(submitted_min_ago)),
        (task::SUMMARY.to_string(), s(&format!("echo {id}"))),
    ])
}

impl Control {
    fn lease(&self) -> Cmd {
        Cmd::new("lease", &self.moto.env())
            .env("LEASE_QUEUE_URL", &self.queue_url)
            .env("LEASE_TASKS_TABLE", TASKS)
            .env("LEASE_NODES_TABLE", NODES)
    }

    async fn put(&self, table: &str, item: Item) {
        self.ddb
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    async fn get(&self, id: &str) -> Option<Item> {
        self.ddb
            .get_item()
            .table_name(TASKS)
            .key(records::TASK_ID, s(id))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item()
            .cloned()
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.lease().args(args).args(["-o", "json"]).ok().await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn text<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .unwrap_or_else(|| panic!("no string '{name}' in {item:?}"))
}

fn number(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number '{name}' in {item:?}"))
}

#[tokio::test]
async fn submit_writes_a_queued_record_for_every_task_it_sends() {
    let c = control().await;
    let before = Utc::now().timestamp();
    let out = c
        .lease()
        .args([
            "submit",
            "--shell",
            "train --seed {index}\n  --fast",
            "--array",
            "3",
            "--pool",
            "gpu",
        ])
        .ok()
        .await;
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3);
    // Sent first: every recorded task is in the queue.
    let received = c
        .sqs
        .receive_message()
        .queue_url(&c.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 3);
    for (k, id) in ids.iter().enumerate() {
        let item = c
            .get(id)
            .await
            .unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(text(&item, task::STATE), "queued");
        assert_eq!(text(&item, task::KIND), "shell");
        assert_eq!(text(&item, task::POOL), "gpu");
        assert_eq!(number(&item, task::ATTEMPT), 1);
        assert_eq!(
            text(&item, task::SUMMARY),
            format!("train --seed {k} --fast"),
            "one line"
        );
        let submitted = text(&item, task::SUBMITTED_AT);
        assert_eq!(submitted, text(&item, task::UPDATED_AT));
        let at = chrono::DateTime::parse_from_rfc3339(submitted).unwrap();
        assert!((at.timestamp() - before).abs() <= 60, "{submitted}");
        let expires = number(&item, records::EXPIRES);
        assert!(
            (expires - (at.timestamp() + records::TASK_RETENTION_SECS)).abs() <= 1,
            "{expires}"
        );
    }

    // Without a table, submit records nothing and still queues.
    let out = Cmd::new("lease", &c.moto.env())
        .env("LEASE_QUEUE_URL", &c.queue_url)
        .args(["submit", "--shell", "true"])
        .ok()
        .await;
    assert!(c.get(out.trim()).await.is_none());
}

#[tokio::test]
async fn a_missing_table_leaves_the_tasks_queued_and_says_so() {
    let c = control().await;
    let out = c
        .lease()
        .env("LEASE_TASKS_TABLE", "no-such-table")
        .args(["submit", "--shell", "true"])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(err.contains(&id) && err.contains("no-such-table"), "{err}");
    let attrs = c
        .sqs
        .get_queue_attributes()
        .queue_url(&c.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attrs.attributes().unwrap()
            [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages],
        "1",
        "the task is queued all the same"
    );
}

#[tokio::test]
async fn tasks_list_show_and_cancel() {
    let c = control().await;
    c.put(TASKS, task_item("t-old-done", "complete", 60)).await;
    let mut running = task_item("t-mid-running", "running", 30);
    running.insert(task::NODE_ID.into(), s("node-a"));
    running.insert(task::INSTANCE_ID.into(), s("i-0123"));
    c.put(TASKS, running).await;
    c.put(TASKS, task_item("t-new-queued", "queued", 1)).await;

    let list = c.json(&["tasks"]).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-new-queued", "t-mid-running", "t-old-done"]);
    assert_eq!(list[1]["node_id"], "node-a");
    let running_only = c.json(&["tasks", "list", "--state", "running"]).await;
    assert_eq!(running_only.as_array().unwrap().len(), 1);
    assert_eq!(running_only[0]["id"], "t-mid-running");
    assert_eq!(
        c.json(&["tasks", "--limit", "1"]).await[0]["id"],
        "t-new-queued"
    );
    let table = c.lease().args(["tasks"]).ok().await;
    assert!(table.lines().nth(2).unwrap().contains("node-a"), "{table}");

    let shown = c
        .json(&["tasks", "show", "t-mid-running", "--bucket", "ctl"])
        .await;
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["attempt"], 1);
    assert_eq!(shown["locations"]["log"], "s3://ctl/logs/t-mid-running.log");
    assert_eq!(
        shown["locations"]["bundle"],
        "s3://ctl/jobs/i-0123/t-mid-running/bundle/"
    );

    // Cancel a queued task: read back through GetItem.
    let out = c
        .lease()
        .args(["tasks", "cancel", "t-new-queued"])
        .output()
        .await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deletes the message"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let item = c.get("t-new-queued").await.unwrap();
    assert_eq!(text(&item, task::STATE), "cancelled");
    assert!(text(&item, task::REASON).contains("cancel"));
    assert_ne!(
        text(&item, task::UPDATED_AT),
        text(&item, task::SUBMITTED_AT)
    );
    assert_eq!(text(&item, task::ENDED_AT), text(&item, task::UPDATED_AT));
    let kept_until = number(&item, records::EXPIRES) - Utc::now().timestamp();
    assert!(
        (kept_until - records::TASK_RETENTION_SECS).abs() <= 60,
        "a cancelled record is kept as long as any finished one: {kept_until}"
    );
    assert_eq!(
        text(&item, task::SUMMARY),
        "echo t-new-queued",
        "the rest is kept"
    );

    // A finished task is refused, and its record is exactly as it was.
    let before = c.get("t-old-done").await.unwrap();
    let (code, err) = c
        .lease()
        .args(["tasks", "cancel", "t-old-done"])
        .fails()
        .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("complete"), "{err}");
    assert_eq!(c.get("t-old-done").await.unwrap(), before);

    for sub in ["cancel", "show"] {
        let (code, err) = c.lease().args(["tasks", sub, "t-nope"]).fails().await;
        assert_eq!(code, 3, "{sub}: {err}");
        assert!(err.contains("'t-nope'"), "{err}");
    }
    assert!(c.get("t-nope").await.is_none(), "cancel creates nothing");

    let (code, err) = Cmd::new("lease", &c.moto.env())
        .args(["tasks"])
        .fails()
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tasks-table"), "{err}");
}

#[tokio::test]
async fn tasks_list_reads_every_page_and_stats_counts_by_state() {
    let c = control().await;
    // About 1.3 MB: more than one Scan page (1 MB), so the list must follow the pages.
    let padding = "x".repeat(4_000);
    let states = ["queued", "running", "complete", "failed"];
    let mut writes = Vec::new();
    for k in 0..320 {
        let mut item = task_item(&format!("t-{k:03}"), states[k % 4], 1);
        item.insert("padding".into(), s(&padding));
        writes.push(
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build(),
        );
    }
    for chunk in writes.chunks(25) {
        c.ddb
            .batch_write_item()
            .request_items(TASKS, chunk.to_vec())
            .send()
            .await
            .unwrap();
    }
    let first_page = c.ddb.scan().table_name(TASKS).send().await.unwrap();
    assert!(
        first_page.last_evaluated_key().is_some(),
        "the fixture must span more than one page"
    );
    let all = c.json(&["tasks", "--limit", "1000"]).await;
    assert_eq!(all.as_array().unwrap().len(), 320);

    let stats = c.json(&["stats"]).await;
    let by_state = &stats["tasks"];
    assert_eq!(by_state["queued"], 80, "{stats}");
    assert_eq!(by_state["running"], 80);
    assert_eq!(by_state["complete"], 80);
    assert_eq!(by_state["failed"], 80);
    assert_eq!(by_state["cancelled"], 0);
    let table = c.lease().args(["stats"]).ok().await;
    assert!(table.contains("Tasks by state"), "{table}");
}

/// A node record as the agent writes it at each heartbeat.
fn node_item(id: &str, status: &str, heartbeat_secs_ago: i64) -> Item {
    let now = Utc::now();
    HashMap::from([
        (records::NODE_ID.to_string(), s(id)),
        (node::NODE_NAME.to_string(), s(&format!("worker-{id}"))),
        (node::INSTANCE_ID.to_string(), s(&format!("i-{id}"))),
        (node::INSTANCE_TYPE.to_string(), s("g5.xlarge")),
        (node::MARKET.to_string(), s("spot")),
        (node::STATUS.to_string(), s(status)),
        (
            node::LAST_HEARTBEAT.to_string(),
            s(&render_time(now - TimeDelta::seconds(heartbeat_secs_ago))),
        ),
        (
            node::DEADLINE.to_string(),
            s(&render_time(now + TimeDelta::hours(3))),
        ),
    ])
}

#[tokio::test]
async fn nodes_lists_live_nodes_and_all_with_the_flag() {
    let c = control().await;
    let mut busy = node_item("a", "running", 5);
    busy.insert(node::TASK_ID.into(), s("t-42"));
    c.put(NODES, busy).await;
    c.put(NODES, node_item("b", "idle", 600)).await;
    c.put(NODES, node_item("c", "deregistered", 30)).await;

    let live = c.json(&["nodes"]).await;
    let live = live.as_array().unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["node_id"], "a");
    assert_eq!(live[0]["task_id"], "t-42");
    assert_eq!(live[0]["status"], "running");

    let all = c.json(&["nodes", "--all"]).await;
    let status: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [("a", "running"), ("b", "stale"), ("c", "deregistered")]
    );

    let table = c.lease().args(["nodes"]).ok().await;
    let row = table.lines().nth(1).unwrap();
    for needle in [
        "worker-a",
        "i-a",
        "g5.xlarge",
        "spot",
        "running",
        "t-42",
        "ago",
        "2h",
    ] {
        assert!(row.contains(needle), "{needle}: {table}");
    }
}
