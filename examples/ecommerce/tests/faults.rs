//! Real faults against the e-commerce server on DynamoDB Local, with the
//! stream pipeline: a server killed with SIGKILL mid-burst, stopped with
//! SIGTERM with a backlog, DynamoDB Local killed and restarted under load,
//! status requests dropped by their clients, keyed orders whose answers are
//! lost and retried, two replicas with one killed; and an order read right
//! after it was placed, while the stream lags.
//!
//! Each test counts, over the orders that got a 201: how many were *lost*
//! (never applied), *stranded* (applied, but their reservation never
//! settled or their command never finished), *doubled* (stock reserved
//! twice, a notification claimed twice), the stock *held by nobody*, and
//! the notifications *missing* (an order without its confirmation, a failed
//! reservation without its alert) or *unsent* (claimed, never marked sent
//! by the outbox relay). Each must be zero. The counts and times are
//! printed (`--no-capture`).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::audit::settle_and_audit;
use common::*;
use cqrs_core::{tenant_pk, AsyncDispatch, CommandService, DataService, InvocationContext};
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};
use ecommerce::domain::{OrderAttributes, OrderStatus, Reservation};
use serde_json::{json, Value};

/// SIGKILL of the server in the middle of a burst of orders, then a
/// restart, three times: every order that got a 201 is applied and settled.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_burst_loses_nothing() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("kill9");
    let inspector = Inspector::new(&endpoint, &prefix);
    let mut server = Server::start(&endpoint, &prefix, &[]).await;
    let mut accepted = Vec::new();
    for round in 1..=3 {
        let pid = server.pid();
        let codes = burst(&[server.url.clone()], 40, move |n| {
            if n == 15 {
                // Mid-burst: 15 answered, the rest in flight.
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        })
        .await;
        server.kill();
        report(format!(
            "kill -9 round {round}: {} of 40 accepted before the kill",
            codes.len()
        ));
        assert!(codes.len() >= 15, "the kill came after 15 answers");
        accepted.extend(codes);
        server = Server::start(&endpoint, &prefix, &[]).await;
    }
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    report(format!(
        "kill -9 x3: {counts:?}, settled {settle_time:?} after the last restart"
    ));
    counts.assert_clean("kill -9 mid-burst");
}

/// SIGTERM while the stream still holds work, with a short drain: the
/// server exits 0, and what it had not finished is finished after a restart.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_backlog_strands_nothing() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("sigterm");
    let inspector = Inspector::new(&endpoint, &prefix);
    let mut server = Server::start(&endpoint, &prefix, &["--drain-timeout", "0.2"]).await;
    let accepted = burst(&[server.url.clone()], 60, |_| {}).await;
    let backlog = {
        let mut unsettled = 0;
        for order in inspector.items("ORDER#").await {
            let attributes: OrderAttributes = order.attributes_as().expect("an order");
            unsettled += usize::from(attributes.reservation == Reservation::Pending);
        }
        unsettled
            + accepted
                .len()
                .saturating_sub(inspector.items("ORDER#").await.len())
    };
    let shutdown = server.terminate().await;
    report(format!(
        "SIGTERM: {} accepted, backlog {backlog} at the signal, exited 0 in {shutdown:?}",
        accepted.len()
    ));
    let _restarted = Server::start(&endpoint, &prefix, &[]).await;
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    report(format!(
        "SIGTERM: {counts:?}, settled {settle_time:?} after the restart"
    ));
    counts.assert_clean("SIGTERM with a backlog");
}

/// DynamoDB Local killed while orders come in, restarted from its files
/// five seconds later: the server rides it out without a restart, and every
/// order it accepted settles.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_outage_mid_run_strands_nothing() {
    if dynamodb().is_none() || !cqrs_dynamodb::testing::LocalDynamo::available() {
        return;
    }
    let mut local = cqrs_dynamodb::testing::LocalDynamo::start()
        .await
        .expect("DynamoDB Local starts");
    let endpoint = local.endpoint();
    let prefix = prefix("outage");
    let inspector = Inspector::new(&endpoint, &prefix);
    let server = Server::start(&endpoint, &prefix, &[]).await;
    let urls = [server.url.clone()];
    let mut accepted = burst(&urls, 20, |_| {}).await;
    let during = tokio::spawn({
        let urls = urls.clone();
        async move { burst(&urls, 20, |_| {}).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    local.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    local.restart().await.expect("DynamoDB Local restarts");
    let during = during.await.expect("burst");
    report(format!("outage: {} of 20 accepted around the kill", during.len()));
    accepted.extend(during);
    accepted.extend(burst(&urls, 20, |_| {}).await);
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    report(format!(
        "DynamoDB outage: {counts:?}, settled {settle_time:?} after the last burst"
    ));
    counts.assert_clean("DynamoDB Local killed and restarted");
    drop(server);
}

/// Clients that give up on `PATCH /orders/{code}/status` (cancelled) after a
/// few milliseconds: whether or not the cancellation was written, no order
/// ends cancelled with its stock still held.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn dropped_status_requests_hold_no_stock() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("dropped");
    let inspector = Inspector::new(&endpoint, &prefix);
    let server = Server::start(&endpoint, &prefix, &[]).await;
    let urls = [server.url.clone()];
    let orders: Vec<String> = burst(&urls, 12, |_| {}).await;
    let (counts, _) = settle_and_audit(&inspector, &orders).await;
    counts.assert_clean("orders placed");
    let token = token();
    let mut dropped_after_write = 0;
    for (i, code) in orders.iter().enumerate() {
        // 5 to 60 ms: some give up before the write, some after.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(5 + 5 * i as u64))
            .build()
            .expect("client");
        let answered = client
            .patch(format!("{}/orders/{code}/status", server.url))
            .bearer_auth(&token)
            .json(&json!({ "status": "cancelled" }))
            .send()
            .await
            .is_ok();
        if !answered {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let order = inspector
                .shop
                .orders
                .get(code, &inspector.ctx)
                .await
                .expect("read");
            let attributes: OrderAttributes = order.attributes_as().expect("an order");
            dropped_after_write += usize::from(attributes.status == OrderStatus::Cancelled);
        }
    }
    let (counts, settle_time) = settle_and_audit(&inspector, &orders).await;
    report(format!(
        "dropped requests: {dropped_after_write} of {} dropped after the write; {counts:?}, settled {settle_time:?}",
        orders.len()
    ));
    counts.assert_clean("dropped status requests");
}

/// `POST /orders` with an `Idempotency-Key` whose answer is lost — the
/// client drops the connection right after sending, or gives up after a few
/// milliseconds — then retried with the same key until it is answered:
/// exactly one order exists per key, the one the retry was told about.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn lost_answers_to_keyed_orders_place_each_order_once() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("keyed");
    let inspector = Inspector::new(&endpoint, &prefix);
    let server = Server::start(&endpoint, &prefix, &[]).await;
    let token = token();
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    const ORDERS: usize = 16;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut accepted = Vec::new();
    let mut replayed = 0;
    for i in 0..ORDERS {
        let key = format!("lost-{run}-{i}");
        let body = order_body(i);
        if i % 2 == 0 {
            // The request is sent whole, and the connection closed at once:
            // its answer has nowhere to go.
            let json = body.to_string();
            let request = format!(
                "POST /orders HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
                server.url.trim_start_matches("http://"),
                json.len()
            );
            let mut stream = tokio::net::TcpStream::connect(server.url.trim_start_matches("http://"))
                .await
                .expect("connected");
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .expect("sent");
            drop(stream);
        } else {
            // The client gives up after 5 to 40 ms: before or after the write.
            let hasty = reqwest::Client::builder()
                .timeout(Duration::from_millis(5 + 5 * (i as u64 / 2)))
                .build()
                .expect("client");
            let _ = hasty
                .post(format!("{}/orders", server.url))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await;
        }
        // The retry, at once (the first try may still be running) and until answered.
        let started = Instant::now();
        let code = loop {
            let response = patient
                .post(format!("{}/orders", server.url))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let again = response.headers().get("idempotent-replayed").is_some();
            let answer: Value = response.json().await.expect("JSON");
            if status == 201 {
                replayed += usize::from(again);
                break answer["code"].as_str().expect("a code").to_owned();
            }
            assert!(
                status == 503 && started.elapsed() < Duration::from_secs(30),
                "retry of {key}: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        accepted.push(code);
    }
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    // One order per key (each order's customer is its key's), the one answered.
    let orders = inspector.items("ORDER#").await;
    let mut per_customer: HashMap<String, Vec<String>> = HashMap::new();
    for order in &orders {
        let attributes: OrderAttributes = order.attributes_as().expect("an order");
        per_customer
            .entry(attributes.customer_id)
            .or_default()
            .push(order.code.to_string());
    }
    for (i, code) in accepted.iter().enumerate() {
        let placed = per_customer
            .get(&format!("CUST-{i:03}"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            placed.as_slice(),
            std::slice::from_ref(code),
            "the orders of key {i}"
        );
    }
    assert_eq!(orders.len(), ORDERS, "no order without a key's answer");
    report(format!(
        "lost answers: {replayed} of {ORDERS} retries answered by the first try's order; {counts:?}, \
         settled {settle_time:?}"
    ));
    counts.assert_clean("keyed orders retried after lost answers");
}

/// Read-your-writes on the stream pipeline: right after `POST /orders`,
/// `GET /orders/{code}` answers 200 with the order, whether or not the
/// stream consumer has applied it yet.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn an_order_reads_back_at_once_on_the_stream_pipeline() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("ryw");
    let inspector = Inspector::new(&endpoint, &prefix);
    let server = Server::start(&endpoint, &prefix, &[]).await;
    let token = token();
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut not_yet_applied = 0;
    for i in 0..20 {
        let created = client
            .post(format!("{}/orders", server.url))
            .bearer_auth(&token)
            .json(&order_body(i))
            .send()
            .await
            .expect("answered");
        assert_eq!(created.status(), 201);
        let code = created.json::<Value>().await.expect("JSON")["code"]
            .as_str()
            .expect("a code")
            .to_owned();
        let read = client
            .get(format!("{}/orders/{code}", server.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("answered");
        let status = read.status().as_u16();
        let order: Value = read.json().await.expect("JSON");
        assert_eq!(status, 200, "{code} reads back at once: {order}");
        assert_eq!(order["code"], code.as_str());
        assert_eq!(order["attributes"]["customerId"], format!("CUST-{i:03}"));
        let key = cqrs_core::EntityKey::new(tenant_pk(TENANT), format!("ORDER#{code}"));
        let applied = DataService::get_item(&inspector.shop.engine, &key, &inspector.ctx)
            .await
            .expect("read");
        not_yet_applied += usize::from(applied.is_none());
        accepted.push(code);
    }
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    report(format!(
        "read-your-writes: 20 of 20 orders read back at once; {not_yet_applied} of them were not yet \
         applied just after; {counts:?}, settled {settle_time:?}"
    ));
    counts.assert_clean("orders read back at once");
}

/// The lease owner of every shard of the command table's stream.
async fn lease_owners(endpoint: &str, prefix: &str) -> Vec<String> {
    let tables = ecommerce::shop::dynamodb_tables(TableNames::with_prefix(prefix));
    let out = local_client(endpoint)
        .query()
        .table_name(&tables.sequences)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!(
                "{}{}",
                cqrs_dynamodb::stream::CHECKPOINT_PK_PREFIX,
                tables.command
            )),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("queried");
    out.items()
        .iter()
        .filter_map(|item| match item.get("leaseOwner") {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(owner)) => Some(owner.clone()),
            _ => None,
        })
        .collect()
}

/// The process id in a consumer id (`{host}-{pid}-{uuid}`).
fn pid_of(owner: &str) -> Option<u32> {
    owner.rsplit('-').nth(1)?.parse().ok()
}

/// Two replicas started together on fresh tables both come up; the one
/// holding the stream's lease is killed mid-burst; the other takes its
/// shards over and every order accepted by either settles, once.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_survive_the_death_of_the_lease_holder() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("replicas");
    let inspector = Inspector::new(&endpoint, &prefix);
    let test_started = Instant::now();
    let (a, b) = tokio::join!(
        Server::start(&endpoint, &prefix, &[]),
        Server::start(&endpoint, &prefix, &[])
    );
    let mut servers = [a, b];
    report(format!(
        "two replicas: both up after {:?}",
        test_started.elapsed()
    ));
    // Wait for the stream's lease to be taken.
    let started = Instant::now();
    let owner = loop {
        if let Some(owner) = lease_owners(&endpoint, &prefix).await.into_iter().next() {
            break owner;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a replica leased the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let holder_pid = pid_of(&owner).expect("a pid in the consumer id");
    let holder = servers
        .iter()
        .position(|s| s.pid() == holder_pid)
        .expect("a replica holds the lease");
    let survivor = 1 - holder;
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let mut accepted = burst(&urls, 40, move |n| {
        if n == 10 {
            let _ = Command::new("kill")
                .args(["-KILL", &holder_pid.to_string()])
                .status();
        }
    })
    .await;
    let killed_at = Instant::now();
    report(format!(
        "two replicas: lease taken, burst done after {:?}",
        test_started.elapsed()
    ));
    servers[holder].kill();
    let survivor_pid = servers[survivor].pid();
    let takeover = loop {
        let owners = lease_owners(&endpoint, &prefix).await;
        if !owners.is_empty() && owners.iter().all(|o| pid_of(o) == Some(survivor_pid)) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the survivor took the shards over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    accepted.extend(burst(&[servers[survivor].url.clone()], 20, |_| {}).await);
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    report(format!(
        "two replicas, lease holder killed: {counts:?}, takeover {takeover:?}, settled {settle_time:?}"
    ));
    counts.assert_clean("replica killed");
    // Lease 2 s: taken over within the lease, a poll and the time to notice.
    assert!(takeover < Duration::from_secs(10), "takeover took {takeover:?}");
}

/// The versions of the accepted orders left `applied` by a sync publish
/// (they name their publisher): the handler runs a kill interrupted.
async fn interrupted_sync_publishes(inspector: &Inspector, accepted: &[String]) -> usize {
    let mut interrupted = 0;
    for code in accepted {
        let key = cqrs_core::EntityKey::new(tenant_pk(TENANT), format!("ORDER#{code}"));
        let versions = CommandService::list_versions(&inspector.shop.engine, &key, &inspector.ctx)
            .await
            .expect("listed");
        interrupted += versions
            .iter()
            .filter(|c| c.status == cqrs_core::CommandStatus::Applied && c.publisher.is_some())
            .count();
    }
    interrupted
}

/// SIGKILL of a server with the default settings (2-minute recovery grace,
/// 10 s leases) while the handlers of its sync publishes run (a burst of
/// cancellations, each releasing its order's stock in the request), then a
/// restart: the publishes the kill interrupted are finished once the dead
/// process's heartbeat has expired, not after the recovery grace, and every
/// order settles within 30 s of the restart.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_pipeline_settles_within_30_s_with_default_settings() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("liveness");
    let inspector = Inspector::new(&endpoint, &prefix);
    let mut server = Server::start_with(&endpoint, &prefix, &[]).await;
    let accepted = burst(&[server.url.clone()], 30, |_| {}).await;
    let (counts, _) = settle_and_audit(&inspector, &accepted).await;
    counts.assert_clean("orders placed");
    let pid = server.pid();
    cancel_burst(&server.url, &accepted, move |n| {
        if n == 5 {
            // 5 answered, the other cancellations mid-flight.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    })
    .await;
    server.kill();
    let interrupted = interrupted_sync_publishes(&inspector, &accepted).await;
    report(format!(
        "kill -9 with default settings: {} orders, {interrupted} sync publishes interrupted mid-pipeline",
        accepted.len()
    ));
    assert!(interrupted > 0, "the kill landed while handlers ran");
    let restarted = Instant::now();
    let _server = Server::start_with(&endpoint, &prefix, &[]).await;
    let started_in = restarted.elapsed();
    let (counts, settle_time) = settle_and_audit(&inspector, &accepted).await;
    let settled_after_restart = started_in + settle_time;
    let left = interrupted_sync_publishes(&inspector, &accepted).await;
    report(format!(
        "kill -9 with default settings: {counts:?}, {interrupted} interrupted sync publishes ({left} left); \
         settled {settled_after_restart:?} after the restart (up {started_in:?} after it)"
    ));
    counts.assert_clean("kill -9 mid-pipeline with default settings");
    assert_eq!(left, 0, "every interrupted publish finished");
    assert!(
        settled_after_restart <= Duration::from_secs(30),
        "settled within 30 s of the restart: {settled_after_restart:?}"
    );
}

/// A handler that takes a minute: its publisher is busy (and alive) for that long.
struct BusyHandler;

#[async_trait::async_trait]
impl cqrs_core::DataSyncHandler for BusyHandler {
    fn name(&self) -> &str {
        "busy"
    }

    fn interest(&self) -> cqrs_core::Interest {
        cqrs_core::Interest::SkPrefix("DRAIN#".into())
    }

    async fn handle(&self, _: &cqrs_core::DataSyncEvent) -> Result<(), cqrs_core::BoxError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }
}

/// SIGTERM with `--drain-timeout 3` while the server's stream consumer
/// holds a command it cannot finish (its publisher, this test, is alive and
/// busy with its handler): the whole process drains within the one
/// deadline — the consumer's drain included — and exits 0.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_within_the_drain_timeout() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("drain");
    let mut server = Server::start_with(&endpoint, &prefix, &["--drain-timeout", "3"]).await;
    let leased = Instant::now();
    while lease_owners(&endpoint, &prefix).await.is_empty() {
        assert!(
            leased.elapsed() < Duration::from_secs(30),
            "the consumer leased the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let storage = DynamoDbStorage::new(
        local_client(&endpoint),
        ecommerce::shop::dynamodb_tables(TableNames::with_prefix(&prefix)),
    );
    let publisher = cqrs_core::Engine::builder(Arc::new(storage))
        .dispatch(AsyncDispatch::External)
        .handler_timeout(Duration::from_secs(120))
        .handler(BusyHandler)
        .build();
    let ctx = InvocationContext::new(TENANT, "drain-tester");
    let publish = tokio::spawn({
        let publisher = publisher.clone();
        let ctx = ctx.clone();
        async move {
            let command =
                cqrs_core::CommandInput::new(tenant_pk(TENANT), "DRAIN#1").attributes(json!({ "n": 1 }));
            CommandService::publish_sync(&publisher, command, &ctx).await
        }
    });
    let key = cqrs_core::EntityKey::new(tenant_pk(TENANT), "DRAIN#1");
    let written = Instant::now();
    while publisher
        .storage()
        .get_command(&key, 1)
        .await
        .expect("read")
        .is_none()
    {
        assert!(
            written.elapsed() < Duration::from_secs(30),
            "the command was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The consumer reads it (it polls every second) and watches its publisher.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shutdown = server.terminate().await;
    report(format!(
        "SIGTERM with --drain-timeout 3: exited 0 in {shutdown:?}"
    ));
    publish.abort();
    assert!(
        shutdown >= Duration::from_millis(2500),
        "the consumer held the command and drained for the deadline: {shutdown:?}"
    );
    assert!(
        shutdown < Duration::from_secs(6),
        "the process ended within about the drain timeout (3 s): {shutdown:?}"
    );
}
