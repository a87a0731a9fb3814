//! The engine: the one owner of the model, the state store and the dataplane. Every request and
//! every reconciliation goes through it, one at a time, in this order: check the rules (domain),
//! program the kernel (dataplane, atomic per request), make the change durable (store), then
//! commit it to the model and answer. A failure at any step undoes the steps before it, so what was
//! acknowledged is always in the state and the kernel, and nothing else is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Port;
use crate::dataplane::{self, Dataplane, EndSpec, VxcOutcome, VxcSpec, VxcStatus as PlanStatus};
use crate::domain::{Change, KeyId, Model, PortName, RuleError, ServiceKey, Vxc, VxcId};
use crate::inspector::{self, Direction, Expectation, InspectConfig, Inspector, VerifySpec};
use crate::protocol::{
    EndView, Failure, InspectorStatus, KernelView, KeyView, Op, PortView, StatusView, StoreStatus,
    VxcView, PROTOCOL_VERSION,
};
use crate::store::Store;

/// One journal record. A new VXC built from a single-use key is written as one batch of two
/// records (the key, now used, and the VXC) so that replay never sees one without the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", deny_unknown_fields)]
pub enum Record {
    #[serde(rename = "key")]
    Key { key: ServiceKey },
    #[serde(rename = "vxc")]
    Vxc { vxc: Vxc },
    #[serde(rename = "vxc_deleted")]
    VxcDeleted { id: VxcId },
}

/// The snapshot: every key and VXC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub keys: Vec<ServiceKey>,
    pub vxcs: Vec<Vxc>,
}

/// Where a VXC stands in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VxcState {
    Up,
    /// Waiting for a port interface to appear (or its port is no longer configured).
    Pending(String),
    /// The kernel refused it; the reason names the object and the kernel's error.
    Failed(String),
}

impl VxcState {
    fn name(&self) -> &'static str {
        match self {
            VxcState::Up => "up",
            VxcState::Pending(_) => "pending",
            VxcState::Failed(_) => "failed",
        }
    }

    fn reason(&self) -> Option<String> {
        match self {
            VxcState::Up => None,
            VxcState::Pending(r) | VxcState::Failed(r) => Some(r.clone()),
        }
    }
}

pub struct Engine {
    model: Model,
    store: Store<Record>,
    dataplane: Dataplane,
    /// Port name -> kernel interface, from the config.
    ports: BTreeMap<PortName, String>,
    states: HashMap<VxcId, VxcState>,
    started: Instant,
    last_reconcile: Option<OffsetDateTime>,
    drift_repairs: u64,
    /// False: observe-only, drift is reported but not repaired.
    repair: bool,
    /// Journal length at which the state is compacted into a new snapshot (`state.compact_every`).
    /// Compaction is O(state), so doing it every N records keeps the cost per change constant.
    compact_every: usize,
    /// The packet inspector, when enabled.
    inspector: Option<Inspector>,
}

/// Probes each VXC (blocking: a few milliseconds to two seconds per direction) and gathers the
/// results: `{"pass": all passed, "results": [VerifyResult or {"vxc", "pass": false, "error"}]}`.
pub fn run_verify(specs: Vec<VerifySpec>) -> Value {
    let mut pass = true;
    let mut results = Vec::with_capacity(specs.len());
    for spec in &specs {
        match inspector::verify(spec, inspector::VerifyConfig::default()) {
            Ok(result) => {
                pass &= result.pass;
                for d in &result.directions {
                    if d.pass {
                        log::info!(vxc = spec.vxc.as_str(), direction = d.direction.as_str(); "verify {}: {}", spec.vxc, d.detail);
                    } else {
                        log::error!(vxc = spec.vxc.as_str(), direction = d.direction.as_str(); "verify {}: {}", spec.vxc, d.detail);
                    }
                }
                results.push(json!(result));
            }
            Err(e) => {
                pass = false;
                log::error!(vxc = spec.vxc.as_str(); "verify {}: {e}", spec.vxc);
                results.push(json!({"vxc": spec.vxc, "pass": false, "error": e.to_string()}));
            }
        }
    }
    json!({"pass": pass, "results": results})
}

fn missing_text(missing: &[(String, String)]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|(port, interface)| format!("port {port}: interface {interface} is missing"))
        .collect();
    parts.join("; ")
}

/// Whether this kernel can make 802.1Q subinterfaces: the module is loaded (or built in), or
/// can be loaded on first use.
pub fn kernel_has_8021q() -> bool {
    if Path::new("/proc/net/vlan").exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let dir = Path::new("/lib/modules").join(release.trim());
    ["modules.builtin", "modules.dep"].iter().any(|file| {
        std::fs::read_to_string(dir.join(file))
            .map(|text| text.lines().any(|l| l.contains("/8021q.ko")))
            .unwrap_or(false)
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Loads the state directory into a model. A torn tail (a write that a crash cut short, never
/// acknowledged) is reported loudly and dropped; any other damage refuses the start.
pub fn load_state(dir: &Path, ports: &[Port]) -> Result<(Model, Store<Record>), String> {
    let (store, loaded) = Store::<Record>::open::<Snapshot>(dir).map_err(|e| e.to_string())?;
    if let Some(torn) = &loaded.torn_tail {
        log::warn!(
            state_dir = dir.display().to_string().as_str();
            "state journal ended in a torn write (never acknowledged), dropped: {torn}"
        );
    }
    let snapshot = loaded.snapshot.unwrap_or_default();
    let mut keys: BTreeMap<KeyId, ServiceKey> = snapshot
        .keys
        .into_iter()
        .map(|k| (k.id.clone(), k))
        .collect();
    let mut vxcs: BTreeMap<VxcId, Vxc> = snapshot
        .vxcs
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect();
    for record in loaded.records {
        match record {
            Record::Key { key } => {
                keys.insert(key.id.clone(), key);
            }
            Record::Vxc { vxc } => {
                vxcs.insert(vxc.id.clone(), vxc);
            }
            Record::VxcDeleted { id } => {
                vxcs.remove(&id);
            }
        }
    }
    let model = Model::restore(
        ports.iter().map(|p| p.name.clone()),
        keys.into_values(),
        vxcs.into_values(),
    )
    .map_err(|e| format!("state in {} is inconsistent: {e}", dir.display()))?;
    Ok((model, store))
}

impl Engine {
    pub fn new(
        model: Model,
        store: Store<Record>,
        dataplane: Dataplane,
        ports: &[Port],
        repair: bool,
    ) -> Self {
        Engine {
            model,
            store,
            dataplane,
            ports: ports
                .iter()
                .map(|p| (p.name.clone(), p.interface.clone()))
                .collect(),
            states: HashMap::new(),
            started: Instant::now(),
            last_reconcile: None,
            drift_repairs: 0,
            repair,
            compact_every: crate::config::DEFAULT_COMPACT_EVERY,
            inspector: None,
        }
    }

    /// Sets the journal length that triggers a compaction (at least 1).
    pub fn set_compact_every(&mut self, records: usize) {
        self.compact_every = records.max(1);
    }

    /// Why the store refuses writes (`None`: healthy). Tries the repair first, so a store that
    /// failed on a full disk reports healthy again as soon as the disk has room.
    pub fn store_failure(&mut self) -> Option<String> {
        match self.store.recover() {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Starts passive inspection of the ports (`None`: inspection off).
    pub fn start_inspector(&mut self, cfg: Option<InspectConfig>) {
        let Some(cfg) = cfg else {
            log::info!("packet inspection is off");
            return;
        };
        match Inspector::start(cfg, self.expectation()) {
            Ok(inspector) => self.inspector = Some(inspector),
            Err(e) => log::error!("packet inspection could not start: {e}"),
        }
    }

    fn port_pairs(&self) -> Vec<(String, String)> {
        self.ports
            .iter()
            .map(|(name, interface)| (name.to_string(), interface.clone()))
            .collect()
    }

    fn expectation(&self) -> Expectation {
        let desired: Vec<VxcSpec> = self.model.vxcs().filter_map(|v| self.spec(v)).collect();
        Expectation::from_vxcs(&self.port_pairs(), &desired)
    }

    /// A VXC was created or deleted: the inspector learns it before the answer goes out (a VXC
    /// in the kernel but not in the inspector's tables would have its frames counted as
    /// violations, its egress logged as vxcd sending wrong tags). Only the VXC's two ports are
    /// rebuilt, from the model's per-port index: the cost is bounded by the ends on those
    /// ports (at most one per VLAN), not by the VXCs on the host.
    fn inspect_changed(&self, vxc: &Vxc) {
        let Some(inspector) = &self.inspector else {
            return;
        };
        let touched: Vec<(String, String)> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .filter_map(|p| Some((p.to_string(), self.ports.get(p)?.clone())))
            .collect();
        let mut ids = std::collections::HashSet::new();
        let specs: Vec<VxcSpec> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .flat_map(|p| self.model.vxcs_on_port(p))
            .filter(|v| ids.insert(v.id.clone()))
            .filter_map(|v| self.spec(v))
            .collect();
        let expectation = Expectation::from_vxcs(&touched, &specs);
        let ports: Vec<_> = expectation
            .ports
            .into_iter()
            .filter(|p| {
                touched
                    .iter()
                    .any(|(_, interface)| *interface == p.interface)
            })
            .collect();
        inspector.update_ports(&ports);
    }

    /// Hands the inspector the current expectation (it also retries ports that were missing).
    fn refresh_inspector(&mut self) {
        if let Some(inspector) = &self.inspector {
            inspector.update(self.expectation());
        }
    }

    /// What `verify` probes: one VXC, or every VXC.
    pub fn verify_specs(&self, id: Option<&str>) -> Result<Vec<VerifySpec>, Failure> {
        let vxcs: Vec<&Vxc> = match id {
            Some(id) => vec![self.model.vxc(id).ok_or_else(|| RuleError::NotFound {
                what: "VXC",
                id: id.to_owned(),
            })?],
            None => self.model.vxcs().collect(),
        };
        let ports = self.port_pairs();
        vxcs.into_iter()
            .map(|vxc| {
                self.spec(vxc)
                    .map(|spec| VerifySpec::from_vxc(&spec, &ports))
                    .ok_or_else(|| {
                        Failure::dataplane(format!(
                            "VXC {}: port {} or {} is not in the config; nothing to probe",
                            vxc.id, vxc.a_end.port, vxc.b_end.port
                        ))
                    })
            })
            .collect()
    }

    fn inspector_status(&self) -> InspectorStatus {
        let Some(inspector) = &self.inspector else {
            return InspectorStatus::default();
        };
        let view = inspector.snapshot();
        let mut status = InspectorStatus {
            enabled: true,
            ..InspectorStatus::default()
        };
        for port in &view.ports {
            status.capturing += usize::from(port.capturing);
            for v in &port.violations {
                status.violations += v.count;
                if v.direction == Direction::Tx {
                    status.egress_violations += v.count;
                }
            }
        }
        status
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    fn end_spec(&self, port: &PortName, vlan: Option<u16>) -> Option<EndSpec> {
        Some(EndSpec {
            port: port.to_string(),
            interface: self.ports.get(port)?.clone(),
            vlan,
        })
    }

    /// What the kernel should hold for a VXC; `None` while one of its ports is not configured.
    fn spec(&self, vxc: &Vxc) -> Option<VxcSpec> {
        Some(VxcSpec {
            id: vxc.id.to_string(),
            rate_mbps: vxc.rate_mbps,
            a: self.end_spec(&vxc.a_end.port, vxc.a_end.vlan.map(|v| v.get()))?,
            b: self.end_spec(&vxc.b_end.port, Some(vxc.b_end.vlan.get()))?,
        })
    }

    fn unconfigured(vxc: &Vxc) -> VxcState {
        VxcState::Pending(format!(
            "port {} or {} is not in the config",
            vxc.a_end.port, vxc.b_end.port
        ))
    }

    /// Answers one operation (authorization was checked by the server).
    pub async fn handle(&mut self, op: Op) -> Result<Value, Failure> {
        let answer = self.dispatch(op).await;
        // Only here, after the change is committed to the model, may the model be written as the
        // snapshot that replaces the journal: compacting inside `persist` (before the commit) wrote
        // a snapshot without the change that triggered it, then emptied the journal that held it.
        if self.store.journal_len() >= self.compact_every {
            self.compact();
        }
        answer
    }

    async fn dispatch(&mut self, op: Op) -> Result<Value, Failure> {
        let now = OffsetDateTime::now_utc();
        match op {
            Op::Hello {} => {
                Ok(json!({"protocol": PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION")}))
            }
            Op::Status {} => Ok(json!(self.status())),
            Op::PortList {} => Ok(json!({"ports": self.port_views().await})),
            Op::KeyGet { key } => match self.model.key(&key) {
                Some(k) => Ok(json!({"key": self.key_view(k, now)})),
                None => Err(RuleError::NotFound {
                    what: "service key",
                    id: key,
                }
                .into()),
            },
            Op::KeyList {} => {
                let keys: Vec<_> = self.model.keys().map(|k| self.key_view(k, now)).collect();
                Ok(json!({"keys": keys}))
            }
            Op::KeyDelete { key } => Err(RuleError::KeyNotRemovable { key }.into()),
            Op::KeyPut { key } => self.put_key(&key, now),
            Op::VxcGet { id } => match self.model.vxc(&id) {
                Some(v) => Ok(json!({"vxc": self.vxc_view(v, None)})),
                None => Err(RuleError::NotFound { what: "VXC", id }.into()),
            },
            Op::VxcList {} => {
                let vxcs: Vec<_> = self.model.vxcs().map(|v| self.vxc_view(v, None)).collect();
                Ok(json!({"vxcs": vxcs}))
            }
            Op::VxcPlan { vxc } => {
                let plan = self.model.plan_vxc(&vxc, now)?;
                Ok(json!({"vxc": self.vxc_view(plan.change.after(), Some("planned"))}))
            }
            Op::VxcPut { vxc } => self.put_vxc(&vxc, now).await,
            Op::VxcDelete { id } => self.delete_vxc(&id).await,
            Op::Inspect {} => match &self.inspector {
                Some(inspector) => {
                    let view = inspector.snapshot();
                    Ok(json!({"enabled": true, "ports": view.ports}))
                }
                None => Ok(json!({"enabled": false, "ports": []})),
            },
            // The server runs verify outside the engine lock (it waits for probes).
            Op::Verify { id } => {
                let specs = self.verify_specs(id.as_deref())?;
                Ok(json!(run_verify(specs)))
            }
        }
    }

    fn put_key(
        &mut self,
        req: &crate::domain::KeyRequest,
        now: OffsetDateTime,
    ) -> Result<Value, Failure> {
        let change = self.model.plan_key(req)?;
        let key = change.after().clone();
        if !matches!(change, Change::Unchanged(_)) {
            self.persist(&[Record::Key { key: key.clone() }])?;
            log::info!(key = key.id.as_str(), port = key.port.as_str(); "service key {} stored", key.id);
            self.model.commit_key(change);
        }
        Ok(json!({"key": self.key_view(&key, now)}))
    }

    async fn put_vxc(
        &mut self,
        req: &crate::domain::VxcRequest,
        now: OffsetDateTime,
    ) -> Result<Value, Failure> {
        let plan = self.model.plan_vxc(req, now)?;
        match &plan.change {
            Change::Unchanged(vxc) => Ok(json!({"vxc": self.vxc_view(vxc, None)})),
            Change::Created(vxc) => {
                let vxc = vxc.clone();
                let spec = self.spec(&vxc);
                let state = match &spec {
                    None => Self::unconfigured(&vxc),
                    Some(spec) => self.program(spec).await?,
                };
                let mut records = Vec::with_capacity(2);
                if let Some(key) = &plan.key_after {
                    records.push(Record::Key { key: key.clone() });
                }
                records.push(Record::Vxc { vxc: vxc.clone() });
                if let Err(failure) = self.persist(&records) {
                    if let (Some(spec), VxcState::Up) = (&spec, &state) {
                        self.undo(self.dataplane.remove(spec).await, &vxc.id);
                    }
                    return Err(failure);
                }
                log::info!(
                    vxc = vxc.id.as_str(), key = vxc.service_key.as_str(),
                    a_port = vxc.a_end.port.as_str(), a_vlan = vxc.a_end.vlan.map(|v| v.get()).unwrap_or(0),
                    b_port = vxc.b_end.port.as_str(), b_vlan = vxc.b_end.vlan.get(), rate_mbps = vxc.rate_mbps;
                    "VXC {} created: {}", vxc.id, state.name()
                );
                self.states.insert(vxc.id.clone(), state);
                self.model.commit_vxc(plan);
                self.inspect_changed(&vxc);
                Ok(json!({"vxc": self.vxc_view(&vxc, None)}))
            }
            Change::Updated { before, after } => {
                let (before, after) = (before.clone(), after.clone());
                let spec = self.spec(&after);
                let reprogram = before.rate_mbps != after.rate_mbps
                    && self.states.get(&after.id) == Some(&VxcState::Up);
                if let (true, Some(spec)) = (reprogram, &spec) {
                    self.dataplane
                        .apply(spec)
                        .await
                        .map_err(|e| Failure::dataplane(e.to_string()))?;
                }
                if let Err(failure) = self.persist(&[Record::Vxc { vxc: after.clone() }]) {
                    if let (true, Some(old)) = (reprogram, self.spec(&before)) {
                        self.undo(self.dataplane.apply(&old).await.map(|_| ()), &after.id);
                    }
                    return Err(failure);
                }
                log::info!(vxc = after.id.as_str(), rate_mbps = after.rate_mbps; "VXC {} updated", after.id);
                self.model.commit_vxc(plan);
                Ok(json!({"vxc": self.vxc_view(&after, None)}))
            }
        }
    }

    /// Programs one VXC. A missing port interface makes it pending (it is stored and applied when
    /// the interface appears); any other kernel refusal refuses the request.
    async fn program(&mut self, spec: &VxcSpec) -> Result<VxcState, Failure> {
        match self.dataplane.apply(spec).await {
            Ok(_) => Ok(VxcState::Up),
            Err(e) if e.is_port_missing() => Ok(VxcState::Pending(e.to_string())),
            Err(e) => Err(Failure::dataplane(e.to_string())),
        }
    }

    fn undo(&self, result: Result<(), dataplane::DataplaneError>, vxc: &VxcId) {
        if let Err(e) = result {
            // The reconciler removes or restores it on its next pass: the state is the truth.
            log::error!(vxc = vxc.as_str(); "undoing VXC {vxc} in the kernel failed, left to the reconciler: {e}");
        }
    }

    async fn delete_vxc(&mut self, id: &str) -> Result<Value, Failure> {
        let vxc = self.model.plan_delete_vxc(id)?.clone();
        if let Some(spec) = self.spec(&vxc) {
            self.dataplane
                .remove(&spec)
                .await
                .map_err(|e| Failure::dataplane(e.to_string()))?;
        }
        if let Err(failure) = self.persist(&[Record::VxcDeleted { id: vxc.id.clone() }]) {
            if let (Some(spec), Some(VxcState::Up)) = (self.spec(&vxc), self.states.get(&vxc.id)) {
                self.undo(self.dataplane.apply(&spec).await.map(|_| ()), &vxc.id);
            }
            return Err(failure);
        }
        log::info!(vxc = vxc.id.as_str(); "VXC {} deleted", vxc.id);
        self.model.commit_delete_vxc(&vxc.id);
        self.states.remove(&vxc.id);
        self.inspect_changed(&vxc);
        Ok(json!({"deleted": vxc.id}))
    }

    /// Makes records durable. Compaction is left to [`Engine::handle`], after the commit.
    fn persist(&mut self, records: &[Record]) -> Result<(), Failure> {
        let written = if records.len() == 1 {
            self.store.append(&records[0])
        } else {
            self.store.append_batch(records)
        };
        written.map_err(|e| Failure::internal(format!("state not written, nothing changed: {e}")))
    }

    /// Writes the whole state as a snapshot. A failure only costs replay time: the journal stays.
    pub fn compact(&mut self) {
        let snapshot = Snapshot {
            keys: self.model.keys().cloned().collect(),
            vxcs: self.model.vxcs().cloned().collect(),
        };
        if let Err(e) = self.store.compact(&snapshot) {
            log::warn!("state compaction failed, journal kept: {e}");
        }
    }

    /// Compares the kernel with the state and, unless observe-only, repairs the difference. Each
    /// repair is logged and counted.
    pub async fn reconcile(&mut self) {
        let mut desired = Vec::new();
        for vxc in self.model.vxcs() {
            match self.spec(vxc) {
                Some(spec) => desired.push(spec),
                None => {
                    self.states.insert(vxc.id.clone(), Self::unconfigured(vxc));
                }
            }
        }
        let started = Instant::now();
        let first = self.last_reconcile.is_none();
        if first {
            log::info!("converging the kernel to {} VXCs", desired.len());
        }
        let repairs_before = self.drift_repairs;
        let outcome = if self.repair {
            self.converge(&desired).await
        } else {
            self.check(&desired).await
        };
        self.refresh_inspector();
        match outcome {
            Ok(()) => {
                self.last_reconcile = Some(OffsetDateTime::now_utc());
                let repaired = self.drift_repairs - repairs_before;
                if first || repaired > 0 {
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for state in self.states.values() {
                        *counts.entry(state.name()).or_default() += 1;
                    }
                    log::info!(
                        "reconciled in {:.2} s: {repaired} repairs; VXCs {counts:?}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => log::error!("reconcile: reading the kernel failed: {e}"),
        }
    }

    async fn converge(&mut self, desired: &[VxcSpec]) -> Result<(), dataplane::DataplaneError> {
        let report = self.dataplane.converge(desired).await?;
        for (id, outcome) in report.vxcs {
            let Ok(id) = VxcId::parse("id", &id) else {
                continue;
            };
            let state = match outcome {
                VxcOutcome::Ok => VxcState::Up,
                VxcOutcome::Repaired(applied) => {
                    self.drift_repairs += 1;
                    let what: Vec<String> = applied.changes.iter().map(|c| c.to_string()).collect();
                    log::warn!(vxc = id.as_str(); "VXC {id}: repaired: {}", what.join("; "));
                    VxcState::Up
                }
                VxcOutcome::Pending(missing) => VxcState::Pending(missing_text(&missing)),
                VxcOutcome::Failed(e) => {
                    log::error!(vxc = id.as_str(); "VXC {id}: {e}");
                    VxcState::Failed(e.to_string())
                }
            };
            self.set_state(id, state);
        }
        for orphan in report.orphans_removed {
            self.drift_repairs += 1;
            log::warn!("removed {orphan}: owned by vxcd but part of no VXC in the state");
        }
        // Not counted as drift: a port's IPv6 is the host's default, not a change to vxcd's objects.
        for (port, done) in report.ports_quieted {
            log::info!(interface = port.as_str(); "port interface {port}: host IPv6 kept off the customer's wire: {}", done.join(", "));
        }
        for (port, e) in report.port_failures {
            log::error!(interface = port.as_str(); "port interface {port}: {e}");
        }
        for (orphan, e) in report.orphan_failures {
            log::error!("removing {orphan}, owned by vxcd but part of no VXC: {e}");
        }
        Ok(())
    }

    /// Records a VXC's state, logging every change of it (a VXC going pending when its port
    /// interface disappears, coming back up, failing).
    fn set_state(&mut self, id: VxcId, state: VxcState) {
        let before = self.states.get(&id);
        // A VXC found right at start is in the summary; one line each would bury the rest.
        let quiet = before.is_none() && state == VxcState::Up;
        if before != Some(&state) && !quiet {
            let was = before.map(VxcState::name).unwrap_or("new");
            let why = state.reason().unwrap_or_default();
            match state {
                VxcState::Up => log::info!(vxc = id.as_str(); "VXC {id}: {was} -> up"),
                _ => log::warn!(vxc = id.as_str(); "VXC {id}: {was} -> {}: {why}", state.name()),
            }
        }
        self.states.insert(id, state);
    }

    /// Observe-only: report drift, change nothing.
    async fn check(&mut self, desired: &[VxcSpec]) -> Result<(), dataplane::DataplaneError> {
        let observed = self.dataplane.observe().await?;
        let plan = Dataplane::plan(desired, &observed);
        for vxc in plan.vxcs {
            let Ok(id) = VxcId::parse("id", &vxc.id) else {
                continue;
            };
            let state = match vxc.status {
                PlanStatus::Ok => VxcState::Up,
                PlanStatus::Pending { missing } => VxcState::Pending(missing_text(&missing)),
                PlanStatus::Drift(found) => {
                    let what: Vec<String> = found.iter().map(|d| d.to_string()).collect();
                    let what = what.join("; ");
                    log::warn!(vxc = id.as_str(); "VXC {id}: drift, not repaired (observe-only): {what}");
                    VxcState::Failed(format!("drift: {what}"))
                }
                PlanStatus::Invalid(why) => VxcState::Failed(why),
            };
            self.set_state(id, state);
        }
        for orphan in plan.orphans {
            log::warn!("{orphan} is owned by vxcd but part of no VXC (observe-only: left)");
        }
        Ok(())
    }

    fn status(&mut self) -> StatusView {
        let store_error = self.store_failure();
        let mut vxc_states = BTreeMap::new();
        for vxc in self.model.vxcs() {
            *vxc_states
                .entry(self.state_of(&vxc.id).name().to_owned())
                .or_insert(0) += 1;
        }
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            ports: self.model.ports().count(),
            keys: self.model.keys().count(),
            vxcs: self.model.vxcs().count(),
            kernel: KernelView {
                vlan_8021q: kernel_has_8021q(),
            },
            last_reconcile: self.last_reconcile.map(rfc3339),
            drift_repairs: self.drift_repairs,
            vxc_states,
            inspector: self.inspector_status(),
            store: StoreStatus {
                ok: store_error.is_none(),
                error: store_error,
                dir: self.store.dir().display().to_string(),
                last_seq: self.store.last_seq(),
                journal_records: self.store.journal_len(),
            },
        }
    }

    fn state_of(&self, id: &VxcId) -> VxcState {
        self.states
            .get(id)
            .cloned()
            .unwrap_or_else(|| VxcState::Pending("not yet reconciled".into()))
    }

    async fn port_views(&self) -> Vec<PortView> {
        let mut views = Vec::new();
        for usage in self.model.ports() {
            let interface = self.ports.get(&usage.name).cloned();
            let facts = match &interface {
                Some(name) => self
                    .dataplane
                    .port_ipv6_off(name)
                    .await
                    .unwrap_or_else(|e| {
                        log::warn!("port.list: looking up interface {name}: {e}");
                        None
                    }),
                None => None,
            };
            views.push(PortView {
                name: usage.name.to_string(),
                interface,
                present: facts.is_some(),
                host_ipv6_off: facts.unwrap_or(false),
                vlans: usage.vlans.iter().map(|v| v.get()).collect(),
                untagged_vxc: usage.untagged_vxc.map(|v| v.to_string()),
                accepting: usage.accepting,
            });
        }
        views
    }

    fn key_view(&self, key: &ServiceKey, now: OffsetDateTime) -> KeyView {
        let refusal = self.model.key_refusal(key, now);
        KeyView {
            key: key.id.to_string(),
            port: key.port.to_string(),
            description: key.description.clone(),
            single_use: key.single_use,
            max_speed_mbps: key.max_speed_mbps,
            vlan: key.vlan.map(|v| v.get()),
            valid_from: key.valid_from.map(rfc3339),
            valid_until: key.valid_until.map(rfc3339),
            active: key.active,
            used_by: self
                .model
                .key_users(&key.id)
                .iter()
                .map(|v| v.to_string())
                .collect(),
            redeemable: refusal.is_none(),
            reason: refusal.map(|r| r.code().to_owned()),
        }
    }

    /// `state_override` is `Some("planned")` for vxc.plan.
    fn vxc_view(&self, vxc: &Vxc, state_override: Option<&str>) -> VxcView {
        let a_vlan = vxc.a_end.vlan.map(|v| v.get());
        let b_vlan = vxc.b_end.vlan.get();
        let interface = |port: &PortName, vlan: Option<u16>| {
            self.ports
                .get(port)
                .map(|parent| dataplane::end_interface_name(parent, vlan))
        };
        let (state, state_reason) = match state_override {
            Some(s) => (s.to_owned(), None),
            None => {
                let s = self.state_of(&vxc.id);
                (s.name().to_owned(), s.reason())
            }
        };
        VxcView {
            id: vxc.id.to_string(),
            name: vxc.name.clone(),
            service_key: vxc.service_key.to_string(),
            rate_mbps: vxc.rate_mbps,
            service_level_ref: vxc.service_level_ref.clone(),
            a_end: EndView {
                port: vxc.a_end.port.to_string(),
                vlan: a_vlan,
                untagged: Some(a_vlan.is_none()),
                interface: interface(&vxc.a_end.port, a_vlan),
            },
            b_end: EndView {
                port: vxc.b_end.port.to_string(),
                vlan: Some(b_vlan),
                untagged: None,
                interface: interface(&vxc.b_end.port, Some(b_vlan)),
            },
            state,
            state_reason,
            created_at: rfc3339(vxc.created_at),
        }
    }
}
