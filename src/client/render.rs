//! vxcctl's tables and field lists, from the protocol's result objects.

use crate::inspector::{DirectionResult, PortView as InspectPort};
use crate::protocol::{EndView, KeyView, PortView, StatusView, VxcView};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Turns an op's `result` into text for people; fails when the result has another shape.
pub type Renderer = fn(&Value) -> Result<String, String>;

pub(super) fn field<T: DeserializeOwned>(result: &Value, name: &str) -> Result<T, String> {
    let value = result
        .get(name)
        .ok_or_else(|| format!("result has no field {name:?}"))?;
    T::deserialize(value).map_err(|e| format!("result field {name:?}: {e}"))
}

/// A table with a header row, columns separated by two spaces, no trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label: value` lines with the values aligned.
pub fn field_list(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(label, _)| label.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in fields {
        let label = format!("{label}:");
        out.push_str(format!("{label:<width$} {value}").trim_end());
        out.push('\n');
    }
    out
}

/// VLANs as ascending ranges: `100-130,200`; `-` for none.
pub fn compress_vlans(vlans: &[u16]) -> String {
    let mut sorted = vlans.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while let Some(&next) = iter.peek() {
            if next != last.saturating_add(1) {
                break;
            }
            last = next;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

pub(super) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

pub(super) fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(super) fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

pub(super) fn mbps(rate: u32) -> String {
    format!("{rate} Mbps")
}

/// A VXC end: `syd-1/200 (eth1.200)`, `syd-1/untagged (eth1)`.
pub fn end_text(end: &EndView) -> String {
    let tag = match end.vlan {
        Some(vlan) => vlan.to_string(),
        None => "untagged".into(),
    };
    // An end on a peer: its port there, and the tunnel device that reaches it.
    let port = match &end.host {
        Some(host) => format!("{}@{host}", end.port),
        None => end.port.clone(),
    };
    match &end.interface {
        Some(ifname) => format!("{port}/{tag} ({ifname})"),
        None => format!("{port}/{tag}"),
    }
}

pub(super) fn duration_text(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// `status`: field lines.
pub fn render_status(result: &Value) -> Result<String, String> {
    let status = StatusView::deserialize(result).map_err(|e| format!("result: {e}"))?;
    let mut vxcs = status.vxcs.to_string();
    if !status.vxc_states.is_empty() {
        let states: Vec<String> = status
            .vxc_states
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        vxcs = format!("{vxcs} ({})", states.join(", "));
    }
    let mut fields = vec![
        ("version", status.version),
        ("uptime", duration_text(status.uptime_s)),
        ("ports", status.ports.to_string()),
        ("keys", status.keys.to_string()),
        ("vxcs", vxcs),
        ("kernel 802.1Q", yes_no(status.kernel.vlan_8021q)),
        ("last reconcile", or_dash(status.last_reconcile)),
        ("drift repairs", status.drift_repairs.to_string()),
        ("inspector", inspector_text(&status.inspector)),
    ];
    // A host without `[core]` reads as it always did.
    if let Some(core) = &status.core {
        fields.push(("core", core_text(core)));
    }
    Ok(field_list(&fields))
}

/// `status.core` on one line: the address, the tunnels, and any MTU shortfall.
pub(super) fn core_text(core: &crate::protocol::CoreView) -> String {
    let uplink = match (&core.interface, core.interface_mtu) {
        (Some(i), Some(mtu)) => format!(" via {i} (MTU {mtu})"),
        (Some(i), None) => format!(" via {i}"),
        _ => String::new(),
    };
    let mut text = format!(
        "{} udp {}{uplink}, {} tunnels",
        core.address, core.udp_port, core.tunnels
    );
    for warning in &core.mtu_warnings {
        text.push_str(&format!("; {warning}"));
    }
    text
}

pub(super) fn inspector_text(status: &crate::protocol::InspectorStatus) -> String {
    if !status.enabled {
        return "off".to_owned();
    }
    let mut text = format!(
        "on, {} ports capturing, {} violation frames",
        status.capturing, status.violations
    );
    if status.egress_violations > 0 {
        text.push_str(&format!(
            " ({} SENT by this host)",
            status.egress_violations
        ));
    }
    text
}

/// `port.list`: NAME INTERFACE PRESENT VLANS UNTAGGED ACCEPTING.
pub fn render_ports(result: &Value) -> Result<String, String> {
    let ports: Vec<PortView> = field(result, "ports")?;
    let rows: Vec<Vec<String>> = ports
        .into_iter()
        .map(|p| {
            vec![
                p.name,
                or_dash(p.interface),
                yes_no(p.present),
                compress_vlans(&p.vlans),
                or_dash(p.untagged_vxc),
                yes_no(p.accepting),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "INTERFACE",
            "PRESENT",
            "VLANS",
            "UNTAGGED",
            "ACCEPTING",
        ],
        &rows,
    ))
}

/// `key.list`: KEY PORT USE MAX VLAN ACTIVE REDEEMABLE REASON USED-BY.
pub fn render_keys(result: &Value) -> Result<String, String> {
    let keys: Vec<KeyView> = field(result, "keys")?;
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .map(|k| {
            vec![
                k.key,
                k.port,
                if k.single_use { "single" } else { "multi" }.into(),
                mbps(k.max_speed_mbps),
                or_dash(k.vlan),
                yes_no(k.active),
                yes_no(k.redeemable),
                or_dash(k.reason),
                list_or_dash(&k.used_by),
            ]
        })
        .collect();
    Ok(table(
        &[
            "KEY",
            "PORT",
            "USE",
            "MAX",
            "VLAN",
            "ACTIVE",
            "REDEEMABLE",
            "REASON",
            "USED-BY",
        ],
        &rows,
    ))
}

/// `key.get` / `key.put`: the key's fields.
pub fn render_key(result: &Value) -> Result<String, String> {
    let k: KeyView = field(result, "key")?;
    let redeemable = match (&k.redeemable, &k.reason) {
        (true, _) => "yes".to_owned(),
        (false, Some(reason)) => format!("no ({reason})"),
        (false, None) => "no".to_owned(),
    };
    Ok(field_list(&[
        ("key", k.key),
        ("port", k.port),
        ("description", k.description),
        ("use", if k.single_use { "single" } else { "multi" }.into()),
        ("max speed", mbps(k.max_speed_mbps)),
        ("vlan", or_dash(k.vlan)),
        ("valid from", or_dash(k.valid_from)),
        ("valid until", or_dash(k.valid_until)),
        ("active", yes_no(k.active)),
        ("redeemable", redeemable),
        ("used by", list_or_dash(&k.used_by)),
    ]))
}

/// `vxc.list`: ID NAME STATE RATE A-END B-END KEY.
pub fn render_vxcs(result: &Value) -> Result<String, String> {
    let vxcs: Vec<VxcView> = field(result, "vxcs")?;
    let rows: Vec<Vec<String>> = vxcs
        .into_iter()
        .map(|v| {
            vec![
                v.id,
                v.name,
                v.state,
                mbps(v.rate_mbps),
                end_text(&v.a_end),
                end_text(&v.b_end),
                v.service_key,
            ]
        })
        .collect();
    Ok(table(
        &["ID", "NAME", "STATE", "RATE", "A-END", "B-END", "KEY"],
        &rows,
    ))
}

/// `vxc.stats`: one row per VXC end: the end interface's counters and its shaper's.
pub fn render_stats(result: &Value) -> Result<String, String> {
    let vxcs: Vec<crate::protocol::VxcStatsView> = match result.get("vxc") {
        Some(_) => vec![field(result, "vxc")?],
        None => field(result, "vxcs")?,
    };
    let num = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
    let mut rows = Vec::new();
    for v in vxcs {
        for (side, end) in [("a", &v.a_end), ("b", &v.b_end)] {
            let c = end.counters.as_ref();
            let s = end.shaper.as_ref();
            rows.push(vec![
                v.id.clone(),
                side.to_owned(),
                end.interface.clone().unwrap_or_else(|| "-".into()),
                num(c.map(|c| c.rx_packets)),
                num(c.map(|c| c.rx_bytes)),
                num(c.map(|c| c.tx_packets)),
                num(c.map(|c| c.tx_bytes)),
                num(c.map(|c| c.rx_dropped + c.tx_dropped)),
                num(s.map(|s| s.sent_packets)),
                num(s.map(|s| s.drops)),
                num(s.map(|s| s.overlimits)),
            ]);
        }
    }
    Ok(table(
        &[
            "VXC",
            "END",
            "INTERFACE",
            "RX PKTS",
            "RX BYTES",
            "TX PKTS",
            "TX BYTES",
            "DROPS",
            "SHAPED PKTS",
            "SHAPER DROPS",
            "OVERLIMITS",
        ],
        &rows,
    ))
}

/// One `watch` event as a line: seq, time, kind, then its fields.
pub fn render_event(event: &Value) -> String {
    let mut fields: Vec<String> = event
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "seq" | "time" | "event"))
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    format!(
        "{} {} {} {}\n",
        event["seq"],
        event["time"].as_str().unwrap_or("-"),
        event["event"].as_str().unwrap_or("?"),
        fields.join(" ")
    )
}

/// `vxc.get` / `vxc.put` / `vxc.plan`: the VXC's fields.
pub fn render_vxc(result: &Value) -> Result<String, String> {
    let v: VxcView = field(result, "vxc")?;
    let mut state = match v.state_reason {
        Some(reason) => format!("{} ({reason})", v.state),
        None => v.state,
    };
    if v.shutdown && state != "shutdown" {
        // Shut down while pending or failed: say both.
        state.push_str(", shutdown: yes");
    }
    let mut fields = vec![
        ("id", v.id),
        ("name", v.name),
        ("state", state),
        ("rate", mbps(v.rate_mbps)),
        ("a-end", end_text(&v.a_end)),
        ("b-end", end_text(&v.b_end)),
    ];
    // Only a VXC with an end on a peer has a VNI: the others read as they always did.
    if let Some(vni) = v.vni {
        fields.push(("vni", vni.to_string()));
    }
    fields.extend([
        ("service key", v.service_key),
        ("service level ref", or_dash(v.service_level_ref)),
        ("created at", v.created_at),
    ]);
    Ok(field_list(&fields))
}

/// `vxc.delete`: one line naming what went.
pub fn render_deleted_vxc(result: &Value) -> Result<String, String> {
    let id: String = field(result, "deleted")?;
    Ok(format!("deleted VXC {id}\n"))
}

/// `--json`: the result object, pretty.
/// `verify`: one line per VXC direction, then the verdict.
pub fn render_verify(result: &Value) -> Result<String, String> {
    let results: Vec<Value> = field(result, "results")?;
    let pass: bool = field(result, "pass")?;
    let mut rows = Vec::new();
    for r in &results {
        let vxc = r["vxc"].as_str().unwrap_or("?").to_owned();
        if let Some(error) = r["error"].as_str() {
            rows.push(vec![
                vxc,
                "-".into(),
                "FAIL".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error.to_owned(),
            ]);
            continue;
        }
        let directions: Vec<DirectionResult> = serde_json::from_value(r["directions"].clone())
            .map_err(|e| format!("result: directions: {e}"))?;
        for d in directions {
            let observed = match (d.seen, d.observed_tag) {
                (false, _) => "not seen".to_owned(),
                (true, None) => "untagged".to_owned(),
                (true, Some(tag)) if tag.tpid == 0x8100 => format!("VLAN {}", tag.vid),
                (true, Some(tag)) => format!("VLAN {} (TPID {:#06x})", tag.vid, tag.tpid),
            };
            rows.push(vec![
                vxc.clone(),
                d.direction,
                if d.pass { "pass" } else { "FAIL" }.into(),
                d.expected_vlan
                    .map_or("untagged".into(), |v| format!("VLAN {v}")),
                observed,
                format!("{:.1} ms", d.elapsed_us as f64 / 1000.0),
                d.detail,
            ]);
        }
    }
    let mut text = table(
        &[
            "VXC",
            "DIRECTION",
            "RESULT",
            "EXPECTED",
            "OBSERVED",
            "TIME",
            "DETAIL",
        ],
        &rows,
    );
    text.push_str(if pass {
        "all passed\n"
    } else {
        "verification FAILED\n"
    });
    Ok(text)
}

/// `inspect`: per port and VXC end the counters, then the violations.
pub fn render_inspect(result: &Value) -> Result<String, String> {
    if result["enabled"] == Value::Bool(false) {
        return Ok("packet inspection is off ([inspector] enabled = false)\n".to_owned());
    }
    let ports: Vec<InspectPort> = field(result, "ports")?;
    let mut ends = Vec::new();
    let mut violations = Vec::new();
    let mut notes = String::new();
    for port in &ports {
        if let Some(error) = &port.error {
            notes.push_str(&format!(
                "port {} ({}): not capturing: {error}\n",
                port.port, port.interface
            ));
        }
        if port.kernel_drops > 0 {
            notes.push_str(&format!(
                "port {} ({}): the kernel dropped {} frames (counts are low)\n",
                port.port, port.interface, port.kernel_drops
            ));
        }
        for end in &port.ends {
            ends.push(vec![
                port.port.clone(),
                end.vxc.clone(),
                end.side.clone(),
                end.vlan.map_or("untagged".into(), |v| v.to_string()),
                end.rx_frames.to_string(),
                end.rx_bytes.to_string(),
                end.tx_frames.to_string(),
                end.tx_bytes.to_string(),
            ]);
        }
        for v in &port.violations {
            violations.push(vec![
                port.port.clone(),
                v.kind.as_str().to_owned(),
                v.vlan.map_or("untagged".into(), |vlan| vlan.to_string()),
                serde_json::to_value(v.direction)
                    .ok()
                    .and_then(|k| k.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                v.count.to_string(),
                v.last_seen.clone(),
            ]);
        }
    }
    let mut text = table(
        &[
            "PORT",
            "VXC",
            "END",
            "VLAN",
            "RX-FRAMES",
            "RX-BYTES",
            "TX-FRAMES",
            "TX-BYTES",
        ],
        &ends,
    );
    text.push('\n');
    if violations.is_empty() {
        text.push_str("no violations\n");
    } else {
        text.push_str(&table(
            &[
                "PORT",
                "VIOLATION",
                "VLAN",
                "DIRECTION",
                "COUNT",
                "LAST-SEEN",
            ],
            &violations,
        ));
    }
    text.push_str(&notes);
    Ok(text)
}

pub fn render_json(result: &Value) -> Result<String, String> {
    serde_json::to_string_pretty(result)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| format!("result: {e}"))
}
