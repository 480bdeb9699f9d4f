//! The Redis key layout, in one place. Every key of tenant `T` carries the hash tag `{T}`, so
//! all of a tenant's keys live on one Redis Cluster slot and one Lua script can touch them all.

/// Pub/sub channel of tenant `t` (sharded pub/sub on a cluster).
pub fn events_channel(t: &str) -> String {
    format!("license:events:{{{t}}}")
}

/// The tenant of a channel name, if it is a tenant channel.
pub fn tenant_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("license:events:{")?.strip_suffix('}')
}

/// History stream of tenant `t`.
pub fn history_key(t: &str) -> String {
    format!("license:history:{{{t}}}")
}

/// License document of tenant `t`.
pub fn doc_key(t: &str) -> String {
    format!("license:doc:{{{t}}}")
}

/// SCAN pattern matching every tenant's document key.
pub const DOC_PATTERN: &str = "license:doc:{*}";

/// The tenant of a document key, if it is one.
pub fn tenant_of_doc_key(key: &str) -> Option<&str> {
    key.strip_prefix("license:doc:{")?.strip_suffix('}')
}

/// Usage counters of tenant `t`.
pub fn usage_key(t: &str) -> String {
    format!("license:usage:{{{t}}}")
}

/// Notice state of tenant `t` (see `license::rules`).
pub fn notices_key(t: &str) -> String {
    format!("license:notices:{{{t}}}")
}

/// Connections of tenant `t` per node, for `MAX_CONNECTIONS_PER_TENANT` (`seat_claim.lua`).
pub fn seats_key(t: &str) -> String {
    format!("license:seats:{{{t}}}")
}

/// Idempotency keys of tenant `t`: key → `fingerprint\nid\nenvelope`.
pub fn idempotency_key(t: &str) -> String {
    format!("license:idem:{{{t}}}")
}

/// When each idempotency key of tenant `t` is forgotten: key scored by expiry (ms).
pub fn idempotency_expiry_key(t: &str) -> String {
    format!("license:idem-exp:{{{t}}}")
}

/// The notification keys of tenant `t`, in the order the scripts take them: ids (sorted set),
/// items (hash id → envelope), read states (hash user → state), preferences (hash user → JSON).
pub fn notification_keys(t: &str) -> [String; 4] {
    [
        format!("license:notif-ids:{{{t}}}"),
        format!("license:notif:{{{t}}}"),
        format!("license:notif-read:{{{t}}}"),
        format!("license:notif-prefs:{{{t}}}"),
    ]
}

/// The halves of tenant `t`'s stats keys around their kind: `license:notif-<kind>:{t}:<day>`
/// (`stats`: hash `<type>:p|d`; `readers:…:<type>`: HyperLogLog; `ttr:…:<type>`: seconds).
pub fn stats_key_parts(t: &str) -> [String; 2] {
    ["license:notif-".to_owned(), format!(":{{{t}}}:")]
}

/// Tenant `t`'s per-type counts of `day`.
pub fn stats_key(t: &str, day: u64) -> String {
    let [a, b] = stats_key_parts(t);
    format!("{a}stats{b}{day}")
}

/// The delivery keys of tenant `t`, in the order the scripts take them: webhook endpoints
/// (hash name → JSON), the queue (sorted set job → due ms), job envelopes and job attempts.
pub fn delivery_keys(t: &str) -> [String; 4] {
    [
        format!("license:webhooks:{{{t}}}"),
        format!("license:dq:{{{t}}}"),
        format!("license:dq-jobs:{{{t}}}"),
        format!("license:dq-att:{{{t}}}"),
    ]
}

/// SCAN pattern matching every tenant's delivery queue.
pub const DELIVERY_QUEUE_PATTERN: &str = "license:dq:{*}";

/// The tenant of a delivery queue key.
pub fn tenant_of_queue_key(key: &str) -> Option<&str> {
    key.strip_prefix("license:dq:{")?.strip_suffix('}')
}

/// Endpoint `name`'s delivery log of tenant `t`.
pub fn delivery_log_key(t: &str, name: &str) -> String {
    format!("license:dlog:{{{t}}}:{name}")
}

/// Emails sent by tenant `t` in the cap window ending at `end` (ms).
pub fn email_count_key(t: &str, end: u64) -> String {
    format!("license:email-count:{{{t}}}:{end}")
}

/// Envelopes over tenant `t`'s email cap in the window ending at `end`, for its digest.
pub fn email_digest_key(t: &str, end: u64) -> String {
    format!("license:email-digest:{{{t}}}:{end}")
}

/// Sorted set of tenants scored by their earliest queued delivery (ms): a hint for workers,
/// repaired from the queues themselves.
pub const DELIVERY_INDEX_KEY: &str = "license:dq-due";

/// Sorted set of tenants scored by when they next owe a notice (ms).
pub const DEADLINES_KEY: &str = "license:deadlines";

/// Sorted set of node ids scored by their last refresh (ms).
pub const NODES_KEY: &str = "license:nodes";

/// Registry entry of node `id`.
pub fn node_key(id: &str) -> String {
    format!("license:node:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_tenant_hash_tag_and_parse_back() {
        assert_eq!(events_channel("acme"), "license:events:{acme}");
        assert_eq!(history_key("acme"), "license:history:{acme}");
        assert_eq!(tenant_of_channel(&events_channel("acme")), Some("acme"));
        assert_eq!(tenant_of_channel("license:other:{acme}"), None);
        assert_eq!(tenant_of_doc_key(&doc_key("a-1")), Some("a-1"));
        assert_eq!(tenant_of_doc_key(&usage_key("a-1")), None);
        assert_eq!(stats_key("acme", 7), "license:notif-stats:{acme}:7");
        assert_eq!(tenant_of_queue_key(&delivery_keys("a-1")[1]), Some("a-1"));
        assert_eq!(delivery_log_key("acme", "ops"), "license:dlog:{acme}:ops");
        for key in notification_keys("acme") {
            assert!(
                key.starts_with("license:notif") && key.ends_with(":{acme}"),
                "{key}"
            );
        }
    }
}
