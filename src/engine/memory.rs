//! The embedded engine: one node, no Redis. Events are numbered, kept for resume and delivered
//! in-process; the node registry holds just this node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, Weak};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Engine, EngineError, EventSink, HistoryConfig, NodeStats, Published};
use crate::protocol::{EventDraft, EventId, now_ms};

/// One tenant's retained events.
#[derive(Default)]
struct TenantLog {
    last: Option<EventId>,
    entries: VecDeque<(EventId, Utf8Bytes)>,
}

/// In-memory engine for single-node mode.
pub struct MemoryEngine {
    history: HistoryConfig,
    // std Mutex: held only for id assignment, a push and a non-blocking delivery, never across
    // an await. Delivery happens under it so concurrent publishes reach sessions in id order.
    tenants: Mutex<HashMap<String, TenantLog>>,
    node: Mutex<Option<NodeStats>>,
    sink: OnceLock<Weak<dyn EventSink>>,
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new(history: HistoryConfig) -> Self {
        Self {
            history,
            tenants: Mutex::new(HashMap::new()),
            node: Mutex::new(None),
            sink: OnceLock::new(),
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn start(
        &self,
        sink: Weak<dyn EventSink>,
        _shutdown: CancellationToken,
        _tracker: &TaskTracker,
    ) -> Result<(), EngineError> {
        let _ = self.sink.set(sink);
        Ok(())
    }

    async fn publish(&self, draft: &EventDraft) -> Result<Published, EngineError> {
        let now = now_ms();
        let mut tenants = self
            .tenants
            .lock()
            .map_err(|_| EngineError::Unavailable("memory engine lock poisoned".into()))?;
        let log = tenants.entry(draft.tenant.clone()).or_default();
        let id = match log.last {
            Some(last) => last.next_after(now),
            None => EventId { ms: now, seq: 0 },
        };
        log.last = Some(id);
        let payload = Utf8Bytes::from(draft.envelope_json(id));
        log.entries.push_back((id, payload.clone()));
        while log.entries.len() > self.history.size as usize {
            log.entries.pop_front();
        }
        let horizon = now.saturating_sub(self.history.ttl.as_millis() as u64);
        while log.entries.front().is_some_and(|(id, _)| id.ms < horizon) {
            log.entries.pop_front();
        }
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.deliver(&draft.tenant, Some(id), payload.clone());
        }
        Ok(Published { id, payload })
    }

    async fn subscribe(&self, _tenant: &str) -> Result<(), EngineError> {
        // Every publish reaches this node's sink; the hub drops tenants without sessions.
        Ok(())
    }

    async fn unsubscribe(&self, _tenant: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn report_node(&self, stats: &NodeStats) -> Result<(), EngineError> {
        if let Ok(mut node) = self.node.lock() {
            *node = Some(stats.clone());
        }
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeStats>, EngineError> {
        Ok(self
            .node
            .lock()
            .ok()
            .and_then(|n| n.clone())
            .into_iter()
            .collect())
    }

    fn is_ready(&self) -> bool {
        true
    }
}
