//! A subscriber's end of a change feed in the shell: the node thread renders each feed
//! event to its JSON message once and queues it, shared, in the bounded buffer of every
//! subscription it is for; the subscriber's connection (WebSocket or Server-Sent Events)
//! drains its buffer.
//!
//! Invariants: a buffer never holds more than its limits (the core's `FeedBuffer`), and all
//! buffers of the node together not more than `feed_memory_mib` (plus one message per
//! subscriber); a subscriber that falls behind gets a final `resync` message naming the
//! revision it reached, and nothing more; a sink whose connection closed is dropped by the
//! node thread at its next event, and its subscription ended.

use crate::feeds::{ChangeKindView, FeedBuffer, FeedBufferLimits, FeedEvent, Pushed};
use crate::production::config::FeedLimits;
use axum::extract::ws::Utf8Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One feed message, rendered once for every subscriber it goes to.
#[derive(Debug)]
pub struct RenderedEvent {
    /// `ready`, `resumed`, `set`, `delete` or `resync` (the SSE event name).
    pub kind: &'static str,
    /// The message: a JSON object with `type` and `revision` (shared bytes: a WebSocket
    /// frame takes it without a copy).
    pub json: Utf8Bytes,
    pub revision: u64,
}

impl RenderedEvent {
    pub fn render(event: &FeedEvent) -> Self {
        let revision = event.revision();
        let (kind, json) = match event {
            FeedEvent::Ready(map) => {
                let mut json = format!("{{\"type\":\"ready\",\"revision\":{revision},\"entries\":{{");
                for (index, (key, value)) in map.entries.iter().enumerate() {
                    if index > 0 {
                        json.push(',');
                    }
                    json.push_str(&json_string(key.as_str()));
                    json.push(':');
                    json.push_str(value.as_json());
                }
                json.push_str("}}");
                ("ready", json)
            }
            FeedEvent::Resumed { .. } => (
                "resumed",
                format!("{{\"type\":\"resumed\",\"revision\":{revision}}}"),
            ),
            FeedEvent::Change(change) => match ChangeKindView::of(change) {
                ChangeKindView::Set(value) => (
                    "set",
                    format!(
                        "{{\"type\":\"set\",\"key\":{},\"value\":{},\"revision\":{revision}}}",
                        json_string(change.key.as_str()),
                        value.as_json()
                    ),
                ),
                ChangeKindView::Delete(old_value) => (
                    "delete",
                    format!(
                        "{{\"type\":\"delete\",\"key\":{},\"old_value\":{},\"revision\":{revision}}}",
                        json_string(change.key.as_str()),
                        old_value.as_json()
                    ),
                ),
            },
            FeedEvent::Resync { reason, .. } => (
                "resync",
                format!(
                    "{{\"type\":\"resync\",\"revision\":{revision},\"reason\":{}}}",
                    json_string(reason)
                ),
            ),
        };
        Self {
            kind,
            json: Utf8Bytes::from(json),
            revision,
        }
    }

    /// The resync that ends a subscription cut off after `revision`.
    pub fn resync(revision: Option<u64>, reason: &str) -> Self {
        let revision_json = revision.map_or("null".to_string(), |revision| revision.to_string());
        Self {
            kind: "resync",
            json: Utf8Bytes::from(format!(
                "{{\"type\":\"resync\",\"revision\":{revision_json},\"reason\":{}}}",
                json_string(reason)
            )),
            revision: revision.unwrap_or(0),
        }
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialise")
}

/// The feed memory of a node: what all its subscribers have queued, against its bound.
#[derive(Debug)]
pub struct FeedMemory {
    queued_bytes: AtomicUsize,
    bytes_max: usize,
    /// Per subscriber.
    limits: FeedBufferLimits,
}

impl FeedMemory {
    pub fn new(limits: FeedLimits) -> Arc<Self> {
        Arc::new(Self {
            queued_bytes: AtomicUsize::new(0),
            bytes_max: limits.memory_bytes_max,
            limits: FeedBufferLimits {
                messages_max: FEED_BUFFER_MESSAGES_MAX,
                bytes_max: limits.buffer_bytes_max,
            },
        })
    }

    /// Bytes queued for all subscribers now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// Messages one subscriber may have queued (its bytes are bounded apart).
const FEED_BUFFER_MESSAGES_MAX: usize = 16 * 1024;

/// The queue between the node thread and one subscriber's connection.
#[derive(Debug)]
pub struct FeedSink {
    buffer: Mutex<FeedBuffer<Arc<RenderedEvent>>>,
    memory: Arc<FeedMemory>,
    notify: Notify,
    closed: AtomicBool,
}

/// What the reason of a cut-off says.
pub const CUT_OFF_REASON: &str =
    "this subscriber fell too far behind the feed; resume from the revision given";

impl FeedSink {
    pub fn new(memory: &Arc<FeedMemory>) -> Arc<Self> {
        Arc::new(Self {
            buffer: Mutex::new(FeedBuffer::new(memory.limits)),
            memory: Arc::clone(memory),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues an event (node thread). `false`: the subscription is over (cut off now, cut
    /// off before, or its connection closed), and the node should end it.
    pub fn push(&self, event: Arc<RenderedEvent>) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let bytes = event.json.len();
        let revision = event.revision;
        let pushed = {
            let mut buffer = self
                .buffer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // The node's bound: past it, a subscriber that has anything queued is the one
            // cut off (one that has nothing queued always takes its next message).
            let over_memory =
                self.memory.queued_bytes() + bytes > self.memory.bytes_max && !buffer.is_empty();
            let pushed = if over_memory {
                buffer.cut_off()
            } else {
                let pushed = buffer.push(event, bytes, revision);
                if pushed == Pushed::Taken {
                    self.memory.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                pushed
            };
            if pushed == Pushed::CutOff {
                let resync = RenderedEvent::resync(buffer.cut_off_revision(), CUT_OFF_REASON);
                let resync_bytes = resync.json.len();
                buffer.push_final(Arc::new(resync), resync_bytes);
                self.memory
                    .queued_bytes
                    .fetch_add(resync_bytes, Ordering::Relaxed);
            }
            pushed
        };
        self.notify.notify_one();
        pushed == Pushed::Taken
    }

    /// Ends the feed with a final message (node thread: the node stopped serving it).
    pub fn end(&self, event: RenderedEvent) {
        {
            let mut buffer = self
                .buffer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let bytes = event.json.len();
            buffer.push_final(Arc::new(event), bytes);
            self.memory.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// Takes everything queued (connection), and whether the feed ended after it.
    pub fn take(&self) -> (Vec<Arc<RenderedEvent>>, bool) {
        let mut buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut events = Vec::with_capacity(buffer.len());
        let before = buffer.bytes();
        while let Some(event) = buffer.pop() {
            events.push(event);
        }
        self.memory
            .queued_bytes
            .fetch_sub(before, Ordering::Relaxed);
        (events, buffer.is_cut_off())
    }

    /// Waits until something is queued (or was since the last take).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// The connection closed: the node thread drops the sink at its next event, and what
    /// it had queued no longer counts.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            let _ = self.take();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.buffer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .bytes()
    }
}
