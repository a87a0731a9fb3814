//! Control protocol, version 1: one JSON object per line each way over a Unix stream socket.
//!
//! Request: `{"id": <any, optional, echoed>, "op": "<op>", ...arguments}`; unknown fields are refused.
//! Success: `{"id": ..., "ok": true, "result": {...}}`.
//! Failure: `{"id": ..., "ok": false, "error": {"code": "...", "message": "...", ...details}}`.
//! This module holds the wire shapes only: parsing requests, the views the daemon answers with, and
//! the rendering of failures. The rules live in [`crate::domain`], the behaviour in the server.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::domain::{KeyRequest, RuleError, VxcRequest};

/// The protocol version `hello` announces.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 1 << 20;

/// Every operation with its arguments.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Op {
    #[serde(rename = "hello")]
    Hello {},
    #[serde(rename = "status")]
    Status {},
    #[serde(rename = "port.list")]
    PortList {},
    #[serde(rename = "key.put")]
    KeyPut { key: KeyRequest },
    #[serde(rename = "key.get")]
    KeyGet { key: String },
    #[serde(rename = "key.list")]
    KeyList {},
    #[serde(rename = "key.delete")]
    KeyDelete { key: String },
    #[serde(rename = "vxc.put")]
    VxcPut { vxc: VxcRequest },
    #[serde(rename = "vxc.plan")]
    VxcPlan { vxc: VxcRequest },
    #[serde(rename = "vxc.get")]
    VxcGet { id: String },
    #[serde(rename = "vxc.list")]
    VxcList {},
    #[serde(rename = "vxc.delete")]
    VxcDelete { id: String },
    /// Probe a VXC (or, without id, every VXC) and prove its tags on the wire.
    #[serde(rename = "verify")]
    Verify {
        #[serde(default)]
        id: Option<String>,
    },
    /// The packet inspector's counters and violations.
    #[serde(rename = "inspect")]
    Inspect {},
    /// The kernel's counters of a VXC's ends and shapers (or, without id, of every VXC).
    #[serde(rename = "vxc.stats")]
    VxcStats {
        #[serde(default)]
        id: Option<String>,
    },
    /// The complete desired state: applied so that exactly these VXCs exist (keys cannot be
    /// removed: those absent are left and listed).
    #[serde(rename = "sync")]
    Sync {
        generation: u64,
        #[serde(default)]
        keys: Vec<KeyRequest>,
        #[serde(default)]
        vxcs: Vec<VxcRequest>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Many changes in one request: one result per op, in order; `atomic`: all or none.
    #[serde(rename = "batch")]
    Batch {
        ops: Vec<Op>,
        #[serde(default)]
        atomic: bool,
    },
    /// Turns the connection into a stream of events (after `since`, from the ring, then live).
    #[serde(rename = "watch")]
    Watch {
        #[serde(default)]
        since: Option<u64>,
    },
}

/// The operation names, for `unknown_op` and for clients.
pub const OPS: &[&str] = &[
    "hello",
    "status",
    "port.list",
    "key.put",
    "key.get",
    "key.list",
    "key.delete",
    "vxc.put",
    "vxc.plan",
    "vxc.get",
    "vxc.list",
    "vxc.delete",
    "verify",
    "inspect",
    "vxc.stats",
    "watch",
    "sync",
    "batch",
];

/// Operations whose argument is named `id`, like the request id: one field serves as both.
const ID_IS_ARGUMENT: &[&str] = &["vxc.get", "vxc.delete", "verify", "vxc.stats"];

impl Op {
    /// The operation's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello {} => "hello",
            Op::Status {} => "status",
            Op::PortList {} => "port.list",
            Op::KeyPut { .. } => "key.put",
            Op::KeyGet { .. } => "key.get",
            Op::KeyList {} => "key.list",
            Op::KeyDelete { .. } => "key.delete",
            Op::VxcPut { .. } => "vxc.put",
            Op::VxcPlan { .. } => "vxc.plan",
            Op::VxcGet { .. } => "vxc.get",
            Op::VxcList {} => "vxc.list",
            Op::VxcDelete { .. } => "vxc.delete",
            Op::Verify { .. } => "verify",
            Op::Inspect {} => "inspect",
            Op::VxcStats { .. } => "vxc.stats",
            Op::Watch { .. } => "watch",
            Op::Sync { .. } => "sync",
            Op::Batch { .. } => "batch",
        }
    }

    /// The object an operation is about, for the audit log ("key k-1", "VXC v-7", "every VXC").
    pub fn object(&self) -> String {
        match self {
            Op::KeyPut { key } => format!("key {}", key.key),
            Op::KeyGet { key } | Op::KeyDelete { key } => format!("key {key}"),
            Op::VxcPut { vxc } | Op::VxcPlan { vxc } => format!("VXC {}", vxc.id),
            Op::VxcGet { id } | Op::VxcDelete { id } => format!("VXC {id}"),
            Op::Verify { id: Some(id) } | Op::VxcStats { id: Some(id) } => format!("VXC {id}"),
            Op::Verify { id: None } | Op::VxcStats { id: None } => "every VXC".into(),
            Op::Sync { generation, .. } => format!("generation {generation}"),
            Op::Batch { ops, atomic } => format!(
                "{} ops{}",
                ops.len(),
                if *atomic { " (atomic)" } else { "" }
            ),
            _ => String::new(),
        }
    }

    /// Whether the operation needs a writer: it changes state, or (verify) sends frames into
    /// customer ports.
    pub fn needs_writer(&self) -> bool {
        matches!(
            self,
            Op::KeyPut { .. }
                | Op::KeyDelete { .. }
                | Op::VxcPut { .. }
                | Op::VxcDelete { .. }
                | Op::Verify { .. }
                | Op::Sync { .. }
                | Op::Batch { .. }
        )
    }
}

/// A parsed request line.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Value,
    pub op: Op,
}

/// A refused request: the code, a sentence naming object and cause, and the code's details.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    pub fn with(mut self, field: &str, value: impl Serialize) -> Self {
        self.details.insert(
            field.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new("bad_request", message)
    }

    pub fn too_large() -> Self {
        Failure::new(
            "too_large",
            format!("request line is longer than {MAX_LINE} bytes; closing the connection"),
        )
    }

    /// The kernel refused; `message` carries the kernel's error.
    pub fn dataplane(message: impl Into<String>) -> Self {
        Failure::new("dataplane", message)
    }

    /// Something on this host (the state file, the engine) failed; not the request's fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Failure::new("internal", message)
    }
}

impl From<RuleError> for Failure {
    fn from(err: RuleError) -> Self {
        let failure = Failure::new(err.code(), err.to_string());
        match err {
            RuleError::ImmutableField { field, .. } => failure.with("field", field),
            RuleError::VlanInUse {
                port,
                vlan,
                held_by,
                next_available,
            } => failure
                .with("port", port)
                .with("vlan", vlan)
                .with("held_by", held_by.id())
                .with("held_by_kind", held_by.kind())
                .with("next_available", next_available),
            RuleError::NoFreeVlan { port } => failure
                .with("port", port)
                .with("vlan", Value::Null)
                .with("held_by", Value::Null)
                .with("next_available", Value::Null),
            RuleError::PortUntaggedBusy { port, vxc } => {
                failure.with("port", port).with("vxc", vxc)
            }
            RuleError::PortNotEmpty { port, vxcs } => failure.with("port", port).with("vxcs", vxcs),
            RuleError::RateExceedsKey { max_speed_mbps, .. } => {
                failure.with("max_speed_mbps", max_speed_mbps)
            }
            RuleError::KeyUsed { by, .. } => failure.with("used_by", by),
            _ => failure,
        }
    }
}

/// Parses one request line. A failure carries the request's id when it could be read, so the
/// answer can still echo it.
pub fn parse_request(line: &[u8]) -> Result<Request, (Value, Failure)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            Failure::bad_request(format!("request is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err((
            Value::Null,
            Failure::bad_request("request must be a JSON object"),
        ));
    };
    let op_name = match fields.get("op") {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    };
    // `vxc.get {"id"}` and `vxc.delete {"id"}`: there the VXC id is also the request id, so it
    // is both echoed and kept as the argument.
    let id = if op_name
        .as_deref()
        .is_some_and(|op| ID_IS_ARGUMENT.contains(&op))
    {
        fields.get("id").cloned().unwrap_or(Value::Null)
    } else {
        fields.remove("id").unwrap_or(Value::Null)
    };
    let op_name = match fields.get("op") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err((id, Failure::bad_request("field op must be a string"))),
        None => return Err((id, Failure::bad_request("missing field op"))),
    };
    if !OPS.contains(&op_name.as_str()) {
        let failure = Failure::new(
            "unknown_op",
            format!("unknown operation {op_name:?}; known: {}", OPS.join(", ")),
        )
        .with("op", &op_name);
        return Err((id, failure));
    }
    match Op::deserialize(Value::Object(fields)) {
        Ok(op) => match check_ids(&op) {
            Ok(()) => Ok(Request { id, op }),
            Err(e) => Err((id, Failure::bad_request(format!("{op_name}: {e}")))),
        },
        Err(e) => Err((id, Failure::bad_request(format!("{op_name}: {e}")))),
    }
}

/// An id argument outside the id grammar cannot name anything: it is a malformed request
/// (`bad_request`), not a lookup that failed (`not_found`).
pub(crate) fn check_ids(op: &Op) -> Result<(), crate::domain::RuleError> {
    use crate::domain::{KeyId, VxcId};
    match op {
        Op::Batch { ops, .. } => ops.iter().try_for_each(check_ids),
        Op::KeyGet { key } | Op::KeyDelete { key } => KeyId::parse("key", key).map(drop),
        Op::VxcGet { id }
        | Op::VxcDelete { id }
        | Op::Verify { id: Some(id) }
        | Op::VxcStats { id: Some(id) } => VxcId::parse("id", id).map(drop),
        _ => Ok(()),
    }
}

/// The answer line for a success (without the newline).
pub fn success_line(id: &Value, result: Value) -> String {
    json!({"id": id, "ok": true, "result": result}).to_string()
}

/// The answer line for a success whose result is serialized straight from `result` (without
/// the newline): for lists of thousands of objects, which as a `Value` tree would take several
/// times the memory of the line.
pub fn success_line_of<R: Serialize>(id: &Value, result: &R) -> Result<String, Failure> {
    #[derive(Serialize)]
    struct Success<'a, R> {
        id: &'a Value,
        ok: bool,
        result: &'a R,
    }
    serde_json::to_string(&Success {
        id,
        ok: true,
        result,
    })
    .map_err(|e| Failure::internal(format!("encoding the answer: {e}")))
}

/// The error object of a failure: `{"code", "message", ...details}`.
pub fn failure_value(failure: &Failure) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(failure.code));
    error.insert("message".into(), Value::from(failure.message.clone()));
    for (k, v) in &failure.details {
        error.insert(k.clone(), v.clone());
    }
    Value::Object(error)
}

/// The answer line for a failure (without the newline).
pub fn failure_line(id: &Value, failure: &Failure) -> String {
    json!({"id": id, "ok": false, "error": failure_value(failure)}).to_string()
}

/// A key as answered: the stored fields plus who uses it and whether it can be redeemed now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub key: String,
    pub port: String,
    pub description: String,
    pub single_use: bool,
    pub max_speed_mbps: u32,
    pub vlan: Option<u16>,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    pub active: bool,
    pub used_by: Vec<String>,
    /// The peer edge host holding the key's port; null: this host.
    #[serde(default)]
    pub host: Option<String>,
    pub redeemable: bool,
    /// The error code a redemption would get now, or null.
    pub reason: Option<String>,
}

/// A VXC end as answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndView {
    pub port: String,
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<bool>,
    /// The kernel interface that carries this end (for an end on a peer: the tunnel device).
    pub interface: Option<String>,
    /// The peer edge host holding this end; null: this host.
    #[serde(default)]
    pub host: Option<String>,
}

/// A VXC as answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VxcView {
    pub id: String,
    pub name: String,
    pub service_key: String,
    pub rate_mbps: u32,
    pub service_level_ref: Option<String>,
    pub a_end: EndView,
    pub b_end: EndView,
    /// `up`, `shutdown` (shut down by the operator, its objects right), `pending`, `failed`,
    /// or `planned` (vxc.plan).
    pub state: String,
    /// Why the VXC is pending or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub created_at: String,
    /// As put: true while the VXC is shut down.
    #[serde(default)]
    pub shutdown: bool,
    /// The VXLAN network identifier carrying it to the peer; null for a VXC of this host alone.
    #[serde(default)]
    pub vni: Option<u32>,
}

/// `vxc.stats`: one VXC's ends with the kernel's counters, read at `read_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VxcStatsView {
    pub id: String,
    pub state: String,
    pub rate_mbps: u32,
    pub read_at: String,
    pub a_end: EndStatsView,
    pub b_end: EndStatsView,
}

/// One end's counters: `counters` of the end interface and `shaper` of its TBF, `null` where
/// the object is not in the kernel (a pending VXC, a port not configured).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndStatsView {
    pub port: String,
    pub vlan: Option<u16>,
    pub interface: Option<String>,
    pub counters: Option<crate::dataplane::InterfaceCounters>,
    pub shaper: Option<crate::dataplane::ShaperCounters>,
}

/// A port as answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub name: String,
    pub interface: Option<String>,
    pub present: bool,
    /// The host's own IPv6 is off on the interface: it sends the customer no ND, MLD or router
    /// solicitation of its own.
    #[serde(default)]
    pub host_ipv6_off: bool,
    pub vlans: Vec<u16>,
    pub untagged_vxc: Option<String>,
    pub accepting: bool,
}

/// `status`'s result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_s: u64,
    pub ports: usize,
    pub keys: usize,
    pub vxcs: usize,
    pub kernel: KernelView,
    pub last_reconcile: Option<String>,
    pub drift_repairs: u64,
    /// VXCs per state, for the operator's first glance.
    #[serde(default)]
    pub vxc_states: std::collections::BTreeMap<String, usize>,
    /// The packet inspector at a glance.
    #[serde(default)]
    pub inspector: InspectorStatus,
    /// Whether the state can be written.
    #[serde(default)]
    pub store: StoreStatus,
    /// The last full-state `sync` generation applied (`null`: none yet).
    #[serde(default)]
    pub generation: Option<u64>,
    /// Reconcile passes run since start (at start, periodic, on drift events).
    #[serde(default)]
    pub reconcile_passes: u64,
    /// Bursts of kernel events that were all vxcd's own changes, so ran no pass.
    #[serde(default)]
    pub own_event_bursts: u64,
    /// This host's place on the VXLAN core; null without `[core]`.
    #[serde(default)]
    pub core: Option<CoreView>,
}

/// `status.core`: the VXLAN core as this host uses it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreView {
    pub address: String,
    pub udp_port: u16,
    /// The uplink (`[core] interface`), null when not configured.
    pub interface: Option<String>,
    /// The uplink's MTU as last read; null when unknown.
    pub interface_mtu: Option<u32>,
    /// VXCs with an end on a peer (one tunnel device each).
    pub tunnels: usize,
    /// Ports whose customers' full-size frames cannot cross the core, each a sentence.
    pub mtu_warnings: Vec<String>,
}

/// `status.store`: `ok` false while the store refuses writes (e.g. the disk is full); `error` says
/// why. Changes are refused with `internal` meanwhile, and the systemd watchdog is not pinged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub ok: bool,
    pub error: Option<String>,
    pub dir: String,
    /// Sequence number of the last record written.
    #[serde(default)]
    pub last_seq: u64,
    /// Records in the journal since the last snapshot (a compaction empties it).
    #[serde(default)]
    pub journal_records: usize,
}

/// `status.inspector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InspectorStatus {
    pub enabled: bool,
    /// Ports whose capture runs.
    pub capturing: usize,
    /// Frames counted as violations, all ports and kinds.
    pub violations: u64,
    /// Of which sent by this host (vxcd's own egress carried a wrong tag).
    pub egress_violations: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelView {
    pub vlan_8021q: bool,
}

#[cfg(test)]
mod tests;
