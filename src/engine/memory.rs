//! The embedded engine: one node, no Redis. Events are numbered, kept for resume and delivered
//! in-process; the node registry holds just this node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, Weak};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Applied, Change, Engine, EngineError, EventSink, Expect, History, HistoryConfig, NodeStats,
    Position, Published, TenantRecord,
};
use crate::protocol::{EventDraft, EventId, now_ms};

/// One tenant's retained events and license state.
#[derive(Default)]
struct TenantLog {
    last: Option<EventId>,
    entries: VecDeque<(EventId, Utf8Bytes)>,
    record: TenantRecord,
}

/// In-memory engine for single-node mode.
pub struct MemoryEngine {
    history: HistoryConfig,
    // std Mutex: held only for id assignment, a push and a non-blocking delivery, never across
    // an await. Delivery happens under it so concurrent publishes reach sessions in id order.
    tenants: Mutex<HashMap<String, TenantLog>>,
    node: Mutex<Option<NodeStats>>,
    deadlines: Mutex<BTreeMap<String, u64>>,
    sink: OnceLock<Weak<dyn EventSink>>,
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new(history: HistoryConfig) -> Self {
        Self {
            history,
            tenants: Mutex::new(HashMap::new()),
            node: Mutex::new(None),
            deadlines: Mutex::new(BTreeMap::new()),
            sink: OnceLock::new(),
        }
    }
}

impl MemoryEngine {
    fn lock_tenants(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, TenantLog>>, EngineError> {
        self.tenants
            .lock()
            .map_err(|_| EngineError::Unavailable("memory engine lock poisoned".into()))
    }

    /// Numbers, retains and delivers one event; the caller holds the tenants lock, so delivery
    /// order is id order.
    fn append(&self, log: &mut TenantLog, draft: &EventDraft, trace: Option<&str>) -> Published {
        let now = now_ms();
        let id = match log.last {
            Some(last) => last.next_after(now),
            None => EventId { ms: now, seq: 0 },
        };
        log.last = Some(id);
        let payload = Utf8Bytes::from(draft.envelope_json(id, trace));
        crate::metrics::event_published(draft.event_type);
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
        Published { id, payload }
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

    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", engine = "memory", tenant = %tenant, events = change.events.len()))]
    async fn apply(&self, tenant: &str, change: &Change) -> Result<Applied, EngineError> {
        let mut tenants = self.lock_tenants()?;
        let log = tenants.entry(tenant.to_owned()).or_default();
        let record = &mut log.record;
        let doc_ok = match &change.doc_expect {
            Expect::Any => true,
            Expect::Absent => record.doc.is_none(),
            Expect::Value(v) => record.doc.as_ref() == Some(v),
        };
        let fields_ok = change
            .notices
            .iter()
            .all(|f| record.notices.get(&f.field) == f.expect.as_ref());
        if !doc_ok || !fields_ok {
            return Ok(Applied::Conflict);
        }
        if let Some(doc) = &change.doc_set {
            record.doc = doc.clone();
        }
        for swap in &change.notices {
            match &swap.set {
                Some(v) => record.notices.insert(swap.field.clone(), v.clone()),
                None => record.notices.remove(&swap.field),
            };
        }
        let trace = crate::telemetry::current_traceparent();
        let published = change
            .events
            .iter()
            .map(|draft| self.append(log, draft, trace.as_deref()))
            .collect();
        Ok(Applied::Done(published))
    }

    async fn load(&self, tenant: &str) -> Result<TenantRecord, EngineError> {
        Ok(self
            .lock_tenants()?
            .get(tenant)
            .map(|log| log.record.clone())
            .unwrap_or_default())
    }

    async fn merge_usage(
        &self,
        tenant: &str,
        usage: &[(String, String)],
    ) -> Result<(), EngineError> {
        let mut tenants = self.lock_tenants()?;
        let record = &mut tenants.entry(tenant.to_owned()).or_default().record;
        for (metric, value) in usage {
            record.usage.insert(metric.clone(), value.clone());
        }
        Ok(())
    }

    async fn licensed_tenants(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .lock_tenants()?
            .iter()
            .filter(|(_, log)| log.record.doc.is_some())
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn set_deadline(&self, tenant: &str, at_ms: Option<u64>) -> Result<(), EngineError> {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        match at_ms {
            Some(ms) => deadlines.insert(tenant.to_owned(), ms),
            None => deadlines.remove(tenant),
        };
        Ok(())
    }

    async fn due_tenants(&self, now_ms: u64) -> Result<Vec<String>, EngineError> {
        let deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        Ok(deadlines
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn subscribe(&self, tenant: &str) -> Result<Option<EventId>, EngineError> {
        // Every publish reaches this node's sink; the hub drops tenants without sessions.
        Ok(self
            .lock_tenants()?
            .get(tenant)
            .and_then(|log| log.entries.back().map(|(id, _)| *id)))
    }

    async fn history_after(
        &self,
        tenant: &str,
        after: Option<EventId>,
        position: Position,
    ) -> Result<History, EngineError> {
        let tenants = self.lock_tenants()?;
        let Some(entries) = tenants
            .get(tenant)
            .map(|log| &log.entries)
            .filter(|e| !e.is_empty())
        else {
            return Ok(History::Empty);
        };
        let start = match after {
            None => 0,
            Some(after) => match entries.binary_search_by(|(id, _)| id.cmp(&after)) {
                Ok(i) => i + 1,
                Err(i) if position == Position::ByOrder && i > 0 => i,
                Err(_) => {
                    let (first, last) = (entries[0].0, entries[entries.len() - 1].0);
                    return Ok(History::miss(after, first, last));
                }
            },
        };
        Ok(History::After(entries.range(start..).cloned().collect()))
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
