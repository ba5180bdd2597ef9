//! The nodes' counters in the Prometheus text format: checks by result and mode, staleness,
//! sync state, unacknowledged records, refusals, damage — never member data.

use shikaku_node::Node;

/// The node's counters in the Prometheus text format (no member data).
pub fn metrics_text<D: shikaku_log::storage::Directory>(n: &Node<D>, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let c = n.counters();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by: Vec<(String, u64)> = c
        .checks_by
        .iter()
        .map(|((code, online), count)| {
            let code = shikaku_core::text::code_name(*code);
            let mode = if *online { "online" } else { "offline" };
            (format!("{{result=\"{code}\",mode=\"{mode}\"}}"), *count)
        })
        .collect();
    metric("shikaku_checks_total", "counter", "Checks answered, by result and mode.", by);
    let freshness = n.freshness(now_ms);
    let staleness = freshness.staleness_s();
    metric(
        "shikaku_in_sync",
        "gauge",
        "1 while a session with the hub is in sync.",
        vec![(String::new(), u64::from(n.in_sync()))],
    );
    metric(
        "shikaku_ever_synced",
        "gauge",
        "1 once the node has completed a sync with its hub.",
        vec![(String::new(), u64::from(staleness.is_some()))],
    );
    metric(
        "shikaku_staleness_seconds",
        "gauge",
        "Seconds since the last completed hub sync (0 before the first).",
        vec![(String::new(), staleness.unwrap_or(0))],
    );
    metric(
        "shikaku_sync_unacked_records",
        "gauge",
        "This clinic's records (checks, declarations) not yet acknowledged by the hub: the upload lag.",
        vec![(String::new(), n.unacked_own())],
    );
    let damage = n.damage_note();
    metric(
        "shikaku_ledger_damaged_ranges",
        "gauge",
        "Damaged ranges in the ledger not yet repaired (answers carry the damage while > 0).",
        vec![(String::new(), damage.map_or(0, |d| u64::from(d.ranges)))],
    );
    metric(
        "shikaku_ledger_damaged_records",
        "gauge",
        "Records unreadable or missing in those ranges, waiting to be re-fetched from the hub.",
        vec![(String::new(), damage.map_or(0, |d| d.records))],
    );
    metric(
        "shikaku_hub_position",
        "gauge",
        "Hub log position of the last receipt kept.",
        vec![(String::new(), freshness.hub_position.unwrap_or(0))],
    );
    metric(
        "shikaku_events_held",
        "gauge",
        "Events in the ledger.",
        vec![(String::new(), n.ledger().len())],
    );
    metric(
        "shikaku_connections",
        "gauge",
        "Open sessions.",
        vec![(String::new(), n.connections() as u64)],
    );
    let refusals = c
        .refusals
        .iter()
        .map(|(reason, count)| (format!("{{reason=\"{reason}\"}}"), *count))
        .collect();
    metric(
        "shikaku_refusals_total",
        "counter",
        "Refused events, subscriptions and connections, by reason.",
        refusals,
    );
    for (name, help, value) in [
        (
            "shikaku_events_received_total",
            "Events stored that came from a peer.",
            c.events_received,
        ),
        ("shikaku_events_sent_total", "Events sent to peers.", c.events_sent),
        ("shikaku_receipts_total", "Receipts kept (clinic) or signed (hub).", c.receipts),
        (
            "shikaku_receipt_mismatches_total",
            "Complete receipts that disagreed with this clinic's set.",
            c.receipt_mismatches,
        ),
        ("shikaku_repairs_total", "Reconciliations started.", c.repairs),
        ("shikaku_repaired_events_total", "Events fetched by repair.", c.repaired_events),
        ("shikaku_connect_failures_total", "Failed attempts to reach the hub.", c.connect_failures),
        (
            "shikaku_protocol_errors_total",
            "Sessions closed for a protocol error.",
            c.protocol_errors,
        ),
    ] {
        metric(name, "counter", help, vec![(String::new(), value)]);
    }
    out
}
