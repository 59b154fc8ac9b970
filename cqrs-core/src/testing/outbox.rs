//! Checks of the outbox relay: every claimed message is sent at least once
//! and marked sent, through a transport that fails, hangs or panics, and
//! after the process that claimed it died before sending.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::watch;

use super::fixtures::{ctx, fast_retry, PK_A};
use super::{Interleaved, StorageFactory};
use crate::engine::{Engine, RetryPolicy};
use crate::error::BoxError;
use crate::outbox::{Outbox, OutboxMessage, Transport};
use crate::services::CommandService;

const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// What a transport does with the first send of a message, by the
/// message id's prefix; later sends succeed.
#[derive(Default)]
struct FlakyTransport {
    /// Every call, by message id (failed ones included).
    calls: Mutex<BTreeMap<String, u32>>,
    /// Sends that succeeded, by message id.
    sent: Mutex<BTreeMap<String, u32>>,
}

impl FlakyTransport {
    fn sent(&self) -> BTreeMap<String, u32> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn calls(&self) -> u32 {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }
}

#[async_trait]
impl Transport for FlakyTransport {
    async fn send(&self, message: &OutboxMessage) -> Result<(), BoxError> {
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            let n = calls.entry(message.id.clone()).or_default();
            *n += 1;
            *n
        };
        if call == 1 {
            let id = message.message_id.as_str();
            if id.starts_with("fail-") {
                return Err("the mail server refused".into());
            }
            if id.starts_with("hang-") {
                // Only the pipeline's handler timeout ends this send.
                std::future::pending::<()>().await;
            }
            if id.starts_with("panic-") {
                panic!("the transport crashed");
            }
        }
        *self
            .sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(message.id.clone())
            .or_default() += 1;
        Ok(())
    }
}

/// A transport that never answers, counting the sends it started: a
/// process that dies between the claim and the send.
struct DeadTransport {
    started: watch::Sender<usize>,
}

#[async_trait]
impl Transport for DeadTransport {
    async fn send(&self, _: &OutboxMessage) -> Result<(), BoxError> {
        self.started.send_modify(|n| *n += 1);
        std::future::pending().await
    }
}

/// A transport that fails its first send of some messages, hangs past the
/// handler timeout on others, panics on others: every claim is still sent
/// (at least once), marked sent, and no command is left failed. Claiming
/// again writes nothing.
pub async fn outbox_relay_sends_every_claim_through_faults(factory: &dyn StorageFactory) {
    let outbox = Outbox::new("MAIL#");
    let transport = Arc::new(FlakyTransport::default());
    let relay_transport = transport.clone();
    let relay_outbox = outbox.clone();
    let engine = Engine::builder(Arc::new(Interleaved(factory.storage().await)))
        .retry(RetryPolicy {
            max_attempts: 5,
            ..fast_retry()
        })
        // Long enough for a relay run on a busy server; the hung sends wait it out.
        .handler_timeout(Duration::from_secs(2))
        .handler_with(move |services| relay_outbox.relay(services.clone(), relay_transport))
        .build();
    let services = engine.services();
    let a = ctx("shop-a");
    let ids: Vec<String> = ["ok", "fail", "hang", "panic"]
        .iter()
        .flat_map(|kind| (1..=3).map(move |i| format!("{kind}-{i}")))
        .collect();
    let claims = ids.iter().map(|id| {
        let (outbox, services, a) = (&outbox, &services, &a);
        async move {
            let payload = json!({ "to": "customer@example.com", "body": id });
            let first = outbox.claim(services, PK_A, id, "mail", &payload, a).await;
            let again = outbox.claim(services, PK_A, id, "mail", &payload, a).await;
            (first.expect("claimed"), again.expect("claimed again"))
        }
    });
    for (first, again) in futures::future::join_all(claims).await {
        assert!(first, "the first claim writes");
        assert!(!again, "a second claim of the same id writes nothing");
    }
    tokio::time::timeout(SETTLE_WITHIN, engine.wait_idle())
        .await
        .expect("settled in time");

    let failures = CommandService::list_failures(&engine, &a).await.expect("listed");
    assert!(failures.is_empty(), "{failures:?}");
    let sent = transport.sent();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !sent.contains_key(&outbox.key(PK_A, id).id()))
        .collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    assert_eq!(sent.len(), ids.len(), "one message per claim: {sent:?}");
    assert!(
        transport.calls() >= ids.len() as u32 + 9,
        "9 first sends failed and were retried"
    );
    let unsent = outbox.unsent(&services, PK_A, &a).await.expect("listed");
    assert!(unsent.is_empty(), "left unsent: {unsent:?}");
    let listed = outbox.list(&services, PK_A, &a).await.expect("listed");
    assert_eq!(listed.len(), ids.len());
    for message in &listed {
        assert!(message.sent_at.is_some(), "{message:?}");
        assert_eq!(message.payload["body"], json!(message.message_id));
        assert_eq!(message.id, message.key.id());
    }
}

/// Claims whose process died between the claim and the send (its relay
/// run never ended), and claims written before any relay was registered:
/// the pipeline's recovery of a restarted process sends the first,
/// `resume` the second; each once, none missing.
pub async fn outbox_claims_left_by_a_dead_process_are_sent(factory: &dyn StorageFactory) {
    let storage = Arc::new(Interleaved(factory.storage().await));
    let outbox = Outbox::new("MAIL#");
    let a = ctx("shop-a");
    let payload = json!({ "body": "hello" });

    // A process that claims, then dies before its relay sends: its sends hang.
    let dead_transport = Arc::new(DeadTransport {
        started: watch::channel(0).0,
    });
    let dead = {
        let (outbox, transport) = (outbox.clone(), dead_transport.clone());
        Engine::builder(storage.clone())
            .retry(fast_retry())
            .handler_timeout(Duration::from_secs(3600))
            .handler_with(move |services| outbox.relay(services.clone(), transport))
            .build()
    };
    let dead_services = dead.services();
    let crashed: Vec<String> = (1..=5).map(|i| format!("crashed-{i}")).collect();
    let mut started = dead_transport.started.subscribe();
    for (i, id) in crashed.iter().enumerate() {
        let claim = outbox.claim(&dead_services, PK_A, id, "mail", &payload, &a);
        // The claim is written; its publish waits for the hung relay, and
        // is dropped once the relay started sending.
        tokio::select! {
            _ = claim => panic!("a claim returned before its relay sent it"),
            reached = tokio::time::timeout(SETTLE_WITHIN, started.wait_for(|n| *n > i)) => {
                reached.expect("the claim reached the dead transport").expect("open");
            }
        }
    }

    // Claims written by a process without a relay.
    let bare = Engine::builder(storage.clone()).retry(fast_retry()).build();
    let early: Vec<String> = (1..=4).map(|i| format!("early-{i}")).collect();
    for id in &early {
        assert!(outbox
            .claim(&bare.services(), PK_A, id, "mail", &payload, &a)
            .await
            .expect("claimed"));
    }
    let unsent = outbox.unsent(&bare.services(), PK_A, &a).await.expect("listed");
    assert_eq!(unsent.len(), crashed.len() + early.len());

    // The restarted process: recovery (what the stream consumer or the
    // in-process processor does with commands applied but never finished)
    // runs the relay of the crashed claims; resume sends the early ones.
    let transport = Arc::new(FlakyTransport::default());
    let restarted = {
        let (outbox, transport) = (outbox.clone(), transport.clone());
        Engine::builder(storage.clone())
            .retry(fast_retry())
            .recovery_grace(Duration::ZERO)
            .handler_with(move |services| outbox.relay(services.clone(), transport))
            .build()
    };
    for id in &crashed {
        restarted.settle(&outbox.key(PK_A, id), 1).await.expect("settled");
    }
    let left = outbox
        .unsent(&restarted.services(), PK_A, &a)
        .await
        .expect("listed");
    let left: Vec<&str> = left.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(left, early, "recovery sent every crashed claim");
    let relay = outbox.relay(restarted.services(), transport.clone());
    let resumed = relay.resume(PK_A, &a).await.expect("resumed");
    assert_eq!(resumed, early.len());
    assert_eq!(relay.resume(PK_A, &a).await.expect("resumed"), 0, "nothing left");

    let sent = transport.sent();
    for id in crashed.iter().chain(&early) {
        assert_eq!(sent.get(&outbox.key(PK_A, id).id()), Some(&1), "{id}: {sent:?}");
    }
    assert_eq!(sent.len(), crashed.len() + early.len());
    let unsent = outbox
        .unsent(&restarted.services(), PK_A, &a)
        .await
        .expect("listed");
    assert!(unsent.is_empty(), "{unsent:?}");
}
