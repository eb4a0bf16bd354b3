//! Delivering published events to the daemons subscribed to them.
//!
//! Each subscribed daemon gets a queue and a delivery task. The task sends
//! events as `on_event` notifications over the daemon's persistent RPC
//! connection, one at a time and in publish order, and only while the
//! daemon is `Running`. When a send fails (the daemon crashed, or the
//! connection belonged to an incarnation that is gone) the task tries once
//! more on a fresh connection, then waits for the next incarnation to be
//! ready and sends the same event again. Delivery is at most once per
//! incarnation: a notification written just before a daemon dies may be
//! lost with it.

use std::{collections::BTreeSet, sync::Arc, sync::Mutex};

use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{rpc, shared::Readiness, state::ProcessState};

/// The JSON-RPC method daemons receive events with.
pub const EVENT_METHOD: &str = "on_event";

/// One published event, shared by every queue it is put on.
#[derive(Debug)]
pub(crate) struct PublishedEvent {
    pub name: String,
    pub data: Value,
}

/// The subscriptions and delivery task of one daemon.
pub(crate) struct EventDelivery {
    subscriptions: Mutex<BTreeSet<String>>,
    queue: mpsc::Sender<Arc<PublishedEvent>>,
    task: JoinHandle<()>,
}

impl Drop for EventDelivery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventDelivery {
    /// Starts the delivery task for a daemon reached through `client`.
    pub fn start(
        client: rpc::Client,
        readiness: watch::Receiver<Readiness>,
        capacity: usize,
    ) -> Self {
        let (queue, pending) = mpsc::channel(capacity);
        EventDelivery {
            subscriptions: Mutex::new(BTreeSet::new()),
            queue,
            task: tokio::spawn(deliver(client, readiness, pending)),
        }
    }

    /// Adds event names to the subscriptions.
    pub fn subscribe(&self, events: impl IntoIterator<Item = String>) {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
    }

    /// Whether the daemon subscribed to `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(event)
    }

    /// Queues `event`; false when the queue is full (the daemon has not
    /// been reachable for a long time).
    pub fn enqueue(&self, event: Arc<PublishedEvent>) -> bool {
        self.queue.try_send(event).is_ok()
    }
}

async fn deliver(
    client: rpc::Client,
    mut readiness: watch::Receiver<Readiness>,
    mut pending: mpsc::Receiver<Arc<PublishedEvent>>,
) {
    while let Some(event) = pending.recv().await {
        let params = json!({ "event": event.name, "data": event.data });
        loop {
            let ready = match readiness
                .wait_for(|r| r.state == ProcessState::Running)
                .await
            {
                Ok(r) => r.incarnation,
                Err(_) => return,
            };
            // The first failure may only mean the connection belonged to an
            // earlier incarnation; the retry connects afresh.
            if client.notify(EVENT_METHOD, params.clone()).await.is_ok()
                || client.notify(EVENT_METHOD, params.clone()).await.is_ok()
            {
                break;
            }
            tracing::debug!(event = %event.name, "delivery failed; waiting for the next incarnation");
            if readiness
                .wait_for(|r| r.state == ProcessState::Running && r.incarnation > ready)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
