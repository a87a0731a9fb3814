//! The engine: the one owner of the model, the state store and the dataplane. Every change and
//! every reconciliation goes through it, one at a time, in this order: check the rules (domain),
//! program the kernel (dataplane, atomic per request), make the change durable (store), then
//! commit it to the published state (read side) and answer. A failure at any step undoes the
//! steps before it, so what was acknowledged is always in the state and the kernel, and nothing
//! else is. Reads never come here: they are answered from the published state ([`read`]).

mod batch;
mod events;
mod journal;
mod kernel;
mod read;
mod record;
mod sync;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::config::Port;
use crate::dataplane::{self, Dataplane, VxcOutcome, VxcSpec, VxcStatus as PlanStatus};
use crate::domain::{Change, Model, PortName, RuleError, Vxc, VxcId};
use crate::inspector::{self, InspectConfig, Inspector};
use crate::protocol::{Failure, Op, StoreStatus};
use crate::store::{Store, StoreError};

pub use events::{report_violations, Event, EventKind, Events, Subscription, RING_SIZE};
pub use journal::Journal;
pub use kernel::Kernel;
pub use read::{is_read, rfc3339, Published, ReadState, Reader, VxcState};
pub use record::{load_state, Loaded, Record, Snapshot};
pub use verify::run_verify;

/// Generic over its two seams so that its transactions are unit-tested without root
/// (`engine/tests.rs`); the daemon's is `Engine<Dataplane, Store<Record>>`.
pub struct Engine<K = Dataplane, J = Store<Record>> {
    store: J,
    dataplane: K,
    /// The model and what readers see, edited only here, after each commit.
    published: Published,
    /// False: observe-only, drift is reported but not repaired.
    repair: bool,
    /// Journal length at which the state is compacted into a new snapshot (`state.compact_every`).
    /// Compaction is O(state), so doing it every N records keeps the cost per change constant.
    compact_every: usize,
    /// The inspector's settings it was started with (`None`: off).
    inspect_config: Option<InspectConfig>,
    /// The snapshot being written on a blocking thread, if any: requests do not wait for it.
    compaction: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
    /// What `watch` streams.
    events: Arc<Events>,
}

fn missing_text(missing: &[(String, String)]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|(port, interface)| format!("port {port}: interface {interface} is missing"))
        .collect();
    parts.join("; ")
}

/// The fields a VXC update changed, as `vxc_updated` events name them.
pub(crate) fn changed_fields(before: &Vxc, after: &Vxc) -> Vec<String> {
    [
        ("name", before.name != after.name),
        ("rate_mbps", before.rate_mbps != after.rate_mbps),
        (
            "service_level_ref",
            before.service_level_ref != after.service_level_ref,
        ),
        ("a_end.vlan", before.a_end.vlan != after.a_end.vlan),
        ("shutdown", before.shutdown != after.shutdown),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(field, _)| field.to_owned())
    .collect()
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

fn store_status(store: &impl Journal, error: Option<String>) -> StoreStatus {
    StoreStatus {
        ok: error.is_none(),
        error,
        dir: store.dir().display().to_string(),
        last_seq: store.last_seq(),
        journal_records: store.journal_len(),
    }
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    pub fn new(model: Model, store: J, dataplane: K, ports: &[Port], repair: bool) -> Self {
        let published = Published::new(ReadState {
            model,
            ports: ports
                .iter()
                .map(|p| (p.name.clone(), p.interface.clone()))
                .collect(),
            states: HashMap::new(),
            started: Instant::now(),
            last_reconcile: None,
            drift_repairs: 0,
            kernel_8021q: kernel_has_8021q(),
            generation: None,
            store: store_status(&store, None),
            inspector: None,
            core: None,
            core_mtu: None,
        });
        Engine {
            store,
            dataplane,
            published,
            repair,
            compact_every: crate::config::DEFAULT_COMPACT_EVERY,
            compaction: None,
            events: Arc::new(Events::default()),
            inspect_config: None,
        }
    }

    /// The read side, for the server: answers from what this engine publishes.
    pub fn reader(&self) -> Reader<K> {
        Reader::new(self.published.clone(), self.dataplane.clone())
    }

    /// The event stream, for `watch`.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    /// This host's place on the VXLAN core (`[core]`); without it, no end may be on a peer.
    /// Restart-only: tunnels already made name this address.
    pub fn set_core(&mut self, core: Option<crate::config::Core>) {
        self.published.edit(|s| {
            s.model.set_core(core.as_ref().map(|c| c.address));
            s.core = core;
        });
    }

    /// The last `sync` generation applied, as read from the state at start.
    pub fn restore_generation(&mut self, generation: Option<u64>) {
        self.published.edit(|s| s.generation = generation);
    }

    /// Sets the journal length that triggers a compaction (at least 1).
    pub fn set_compact_every(&mut self, records: usize) {
        self.compact_every = records.max(1);
    }

    /// Publishes the store's health (and counters) for `status`.
    fn publish_store(&self) {
        let status = store_status(&self.store, self.store.failure().map(str::to_owned));
        self.published.edit(|s| {
            if s.store != status {
                s.store = status;
            }
        });
    }

    /// Why the store refuses writes (`None`: healthy). Tries the repair first, so a store that
    /// failed on a full disk reports healthy again as soon as the disk has room.
    pub fn store_failure(&mut self) -> Option<String> {
        let failure = self.store.recover().err().map(|e| e.to_string());
        self.publish_store();
        failure
    }

    /// Starts passive inspection of the ports (`None`: inspection off).
    pub fn start_inspector(&mut self, cfg: Option<InspectConfig>) {
        self.inspect_config = cfg.clone();
        let Some(cfg) = cfg else {
            log::info!("packet inspection is off");
            return;
        };
        let expectation = self.published.load().expectation();
        match Inspector::start(cfg, expectation) {
            Ok(inspector) => {
                let inspector = Arc::new(inspector);
                self.published.edit(|s| s.inspector = Some(inspector));
            }
            Err(e) => log::error!("packet inspection could not start: {e}"),
        }
    }

    /// A config reload: the ports (added, removed, moved to another interface), whether drift
    /// is repaired, and the inspector's settings. Nothing in the kernel is changed here: VXCs
    /// on a port that came or went become appliable or pending at the reconciler's next pass,
    /// which the caller triggers. Returns what changed, for the log.
    pub fn reconfigure(
        &mut self,
        ports: &[Port],
        repair: bool,
        inspect: Option<InspectConfig>,
    ) -> Result<Vec<String>, String> {
        let state = self.published.load();
        let old: BTreeMap<PortName, String> = state.ports.clone();
        let new: BTreeMap<PortName, String> = ports
            .iter()
            .map(|p| (p.name.clone(), p.interface.clone()))
            .collect();
        let mut said = Vec::new();
        for (name, interface) in &new {
            match old.get(name) {
                None => said.push(format!("port {name} added on {interface}")),
                Some(was) if was != interface => {
                    said.push(format!("port {name} moved from {was} to {interface}"))
                }
                _ => {}
            }
        }
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            let held = state.model.vxcs_on_port(name).count();
            said.push(format!(
                "port {name} removed ({held} VXCs on it wait, pending, until it is back)"
            ));
        }
        let model = if old.keys().eq(new.keys()) {
            None
        } else {
            Some(
                Model::restore(
                    new.keys().cloned(),
                    state.model.keys().cloned(),
                    state.model.vxcs().cloned(),
                )
                .map(|m| m.with_core(state.model.core()))
                .map_err(|e| format!("the state does not fit the new ports: {e}"))?,
            )
        };
        drop(state);
        if self.repair != repair {
            said.push(format!("reconcile.repair {} -> {repair}", self.repair));
            self.repair = repair;
        }
        self.dataplane
            .set_port_interfaces(new.values().cloned().collect());
        self.published.edit(|s| {
            if let Some(model) = model {
                s.model = model;
            }
            s.ports = new;
        });
        if inspect != self.inspect_config {
            said.push("inspector settings changed: inspection restarted".into());
            self.published.edit(|s| s.inspector = None);
            self.start_inspector(inspect);
        } else {
            self.refresh_inspector();
        }
        Ok(said)
    }

    /// A VXC was created or deleted: the inspector learns it before the answer goes out (a VXC
    /// in the kernel but not in the inspector's tables would have its frames counted as
    /// violations, its egress logged as vxcd sending wrong tags). Only the VXC's two ports are
    /// rebuilt, from the model's per-port index: the cost is bounded by the ends on those
    /// ports (at most one per VLAN), not by the VXCs on the host.
    fn inspect_changed(&self, vxc: &Vxc) {
        let state = self.published.load();
        let Some(inspector) = &state.inspector else {
            return;
        };
        let touched: Vec<(String, String)> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .filter_map(|p| Some((p.to_string(), state.ports.get(p)?.clone())))
            .collect();
        let mut ids = std::collections::HashSet::new();
        let specs: Vec<VxcSpec> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .flat_map(|p| state.model.vxcs_on_port(p))
            .filter(|v| ids.insert(v.id.clone()))
            .filter_map(|v| state.spec(v))
            .collect();
        let expectation = inspector::Expectation::from_vxcs(&touched, &specs);
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
    fn refresh_inspector(&self) {
        let state = self.published.load();
        if let Some(inspector) = &state.inspector {
            inspector.update(state.expectation());
        }
    }

    fn unconfigured(vxc: &Vxc) -> VxcState {
        match vxc.peer() {
            Some(peer) => {
                VxcState::Pending(format!(
                "port {} is not in the config, or [core] is not (needed for the tunnel to peer \
                 {peer})",
                if vxc.a_end.is_local() { &vxc.a_end.port } else { &vxc.b_end.port }
            ))
            }
            None => VxcState::Pending(format!(
                "port {} or {} is not in the config",
                vxc.a_end.port, vxc.b_end.port
            )),
        }
    }

    fn spec(&self, vxc: &Vxc) -> Option<VxcSpec> {
        self.published.load().spec(vxc)
    }

    /// Applies one operation that changes state (authorization was checked by the server).
    /// A read is answered here too, from the published state, for callers without a reader.
    pub async fn handle(&mut self, op: Op) -> Result<Value, Failure> {
        let answer = self.dispatch(op).await;
        // Only here, after the change is committed to the model, may the model be written as the
        // snapshot that replaces the journal: compacting inside `persist` (before the commit) wrote
        // a snapshot without the change that triggered it, then emptied the journal that held it.
        self.compaction_step().await;
        answer
    }

    /// Finishes a compaction whose snapshot is written, and starts one when the journal is long
    /// enough. The snapshot is encoded and synced on a blocking thread from the published state
    /// (which is exactly what the store holds: every record appended is committed by now), so
    /// no request waits for it (8,000 keys: 177 ms in a debug build, in the request path).
    async fn compaction_step(&mut self) {
        if self
            .compaction
            .as_ref()
            .is_some_and(|job| job.is_finished())
        {
            self.finish_compaction().await;
        }
        if self.compaction.is_some() || self.store.journal_len() < self.compact_every {
            return;
        }
        let job = match self.store.begin_compaction() {
            Ok(job) => job,
            Err(e) => {
                log::warn!("state compaction not started, journal kept: {e}");
                return;
            }
        };
        let state = self.published.load();
        self.compaction = Some(tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot {
                keys: state.model.keys().cloned().collect(),
                vxcs: state.model.vxcs().cloned().collect(),
                generation: state.generation,
            };
            // Let the state go before the long part: the engine copies it while it is held.
            drop(state);
            job.write(&snapshot)
        }));
    }

    /// Waits for the running compaction, if any, and ends it (at shutdown, and when it is done).
    pub async fn finish_compaction(&mut self) {
        let Some(job) = self.compaction.take() else {
            return;
        };
        let written = job.await.unwrap_or_else(|e| {
            Err(StoreError::Io {
                action: "writing the snapshot",
                path: self.store.dir().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        if let Err(e) = self.store.finish_compaction(written) {
            log::warn!("state compaction failed, journal kept: {e}");
        }
        self.publish_store();
    }

    async fn dispatch(&mut self, op: Op) -> Result<Value, Failure> {
        let now = OffsetDateTime::now_utc();
        match op {
            Op::KeyDelete { key } => Err(RuleError::KeyNotRemovable { key }.into()),
            Op::KeyPut { key } => self.put_key(&key, now),
            Op::VxcPut { vxc } => self.put_vxc(&vxc, now).await,
            Op::VxcDelete { id } => self.delete_vxc(&id).await,
            Op::PortList {} => Ok(json!({"ports": self.reader().port_views().await})),
            Op::VxcStats { id } => self.reader().vxc_stats(id.as_deref()).await,
            Op::Sync {
                generation,
                keys,
                vxcs,
                dry_run,
            } => self.sync(generation, &keys, &vxcs, dry_run, now).await,
            Op::Batch { ops, atomic } => self.batch(ops, atomic, now).await,
            Op::Verify { id } => {
                let specs = self.published.load().verify_specs(id.as_deref())?;
                Ok(run_verify(specs))
            }
            // The server answers reads from the published state without the engine; they reach
            // here only inside a non-atomic batch.
            read => match self.published.load().answer(&read) {
                Some(answer) => answer,
                None => Err(Failure::internal(format!("{read:?} has no handler"))),
            },
        }
    }

    fn put_key(
        &mut self,
        req: &crate::domain::KeyRequest,
        now: OffsetDateTime,
    ) -> Result<Value, Failure> {
        let change = self.published.load().model.plan_key(req)?;
        let key = change.after().clone();
        if !matches!(change, Change::Unchanged(_)) {
            self.persist(&[Record::Key { key: key.clone() }])?;
            log::info!(key = key.id.as_str(), port = key.port.as_str(); "service key {} stored", key.id);
            self.published.edit(|s| s.model.commit_key(change));
            self.events.emit(EventKind::KeyStored {
                key: key.id.to_string(),
            });
        }
        Ok(json!({"key": self.published.load().key_view(&key, now)}))
    }

    async fn put_vxc(
        &mut self,
        req: &crate::domain::VxcRequest,
        now: OffsetDateTime,
    ) -> Result<Value, Failure> {
        let plan = self.published.load().model.plan_vxc(req, now)?;
        match &plan.change {
            Change::Unchanged(vxc) => Ok(json!({"vxc": self.published.load().vxc_view(vxc, None)})),
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
                    b_port = vxc.b_end.port.as_str(), b_vlan = vxc.b_end.vlan.map(|v| v.get()).unwrap_or(0), rate_mbps = vxc.rate_mbps;
                    "VXC {} created: {}", vxc.id, state.name()
                );
                let used = plan
                    .key_after
                    .as_ref()
                    .filter(|k| k.single_use)
                    .map(|k| k.id.to_string());
                let state_name = state.name();
                let reason = state.reason();
                self.published.edit(|s| {
                    s.states.insert(vxc.id.clone(), state);
                    s.model.commit_vxc(plan);
                });
                if vxc.peer().is_some() {
                    // Its answer says at once whether its customers' frames fit the core.
                    let core_mtu = self.read_core_mtu().await;
                    self.published.edit(|s| s.core_mtu = core_mtu);
                }
                self.inspect_changed(&vxc);
                let id = vxc.id.to_string();
                self.events.emit(EventKind::VxcCreated { vxc: id.clone() });
                if let Some(key) = used {
                    self.events.emit(EventKind::KeyUsed {
                        key,
                        vxc: id.clone(),
                    });
                }
                self.events.emit(EventKind::VxcState {
                    vxc: id,
                    old: "new".into(),
                    new: state_name.into(),
                    reason,
                });
                Ok(json!({"vxc": self.published.load().vxc_view(&vxc, None)}))
            }
            Change::Updated { before, after } => {
                let (before, after) = (before.clone(), after.clone());
                let was_up = self.published.load().states.get(&after.id) == Some(&VxcState::Up);
                let moved = before.a_end.vlan != after.a_end.vlan;
                let reprogram = was_up
                    && (before.rate_mbps != after.rate_mbps
                        || before.shutdown != after.shutdown
                        || moved);
                let specs = (self.spec(&before), self.spec(&after));
                if let (true, (Some(old), Some(new))) = (reprogram, &specs) {
                    self.reprogram(old, new, moved).await?;
                }
                if let Err(failure) = self.persist(&[Record::Vxc { vxc: after.clone() }]) {
                    if let (true, (Some(old), Some(new))) = (reprogram, &specs) {
                        let undone = self.reprogram(new, old, moved).await;
                        self.undo(undone.map_err(|f| f.message), &after.id);
                    }
                    return Err(failure);
                }
                log::info!(
                    vxc = after.id.as_str(), rate_mbps = after.rate_mbps,
                    a_vlan = after.a_end.vlan.map(|v| v.get()).unwrap_or(0), shutdown = after.shutdown;
                    "VXC {} updated{}{}", after.id,
                    if moved { format!(": A-End VLAN {} -> {}", before.a_end.vlan.map(|v| v.get()).unwrap_or(0), after.a_end.vlan.map(|v| v.get()).unwrap_or(0)) } else { String::new() },
                    match (before.shutdown, after.shutdown) { (false, true) => ": shut down", (true, false) => ": enabled", _ => "" }
                );
                self.published.edit(|s| s.model.commit_vxc(plan));
                let changed = changed_fields(&before, &after);
                self.events.emit(EventKind::VxcUpdated {
                    vxc: after.id.to_string(),
                    changed,
                });
                if moved {
                    self.inspect_changed(&before);
                    self.inspect_changed(&after);
                }
                Ok(json!({"vxc": self.published.load().vxc_view(&after, None)}))
            }
        }
    }

    /// Brings a live VXC from `old` to `new` in the kernel. A new A-End VLAN is made before the
    /// old one is broken: the new subinterface is created, shaped and joined both ways (the
    /// B-End's pipe now leads to it) and read back before the old subinterface is deleted, so
    /// the answer comes only once the new tag works.
    async fn reprogram(&self, old: &VxcSpec, new: &VxcSpec, moved: bool) -> Result<(), Failure> {
        self.dataplane
            .apply(new)
            .await
            .map_err(|e| Failure::dataplane(e.to_string()))?;
        if moved {
            if let Err(e) = self.dataplane.remove_end(old, dataplane::Side::A).await {
                // Part of no VXC now: the reconciler removes it as an orphan.
                log::error!(vxc = new.id.as_str(); "VXC {}: removing the old A-End failed, left to the reconciler: {e}", new.id);
            }
        }
        Ok(())
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

    fn undo<E: std::fmt::Display>(&self, result: Result<(), E>, vxc: &VxcId) {
        if let Err(e) = result {
            // The reconciler removes or restores it on its next pass: the state is the truth.
            log::error!(vxc = vxc.as_str(); "undoing VXC {vxc} in the kernel failed, left to the reconciler: {e}");
        }
    }

    async fn delete_vxc(&mut self, id: &str) -> Result<Value, Failure> {
        let (vxc, was_up) = {
            let state = self.published.load();
            let vxc = state.model.plan_delete_vxc(id)?.clone();
            let was_up = state.states.get(&vxc.id) == Some(&VxcState::Up);
            (vxc, was_up)
        };
        if let Some(spec) = self.spec(&vxc) {
            self.dataplane
                .remove(&spec)
                .await
                .map_err(|e| Failure::dataplane(e.to_string()))?;
        }
        if let Err(failure) = self.persist(&[Record::VxcDeleted { id: vxc.id.clone() }]) {
            if let (Some(spec), true) = (self.spec(&vxc), was_up) {
                self.undo(self.dataplane.apply(&spec).await.map(|_| ()), &vxc.id);
            }
            return Err(failure);
        }
        log::info!(vxc = vxc.id.as_str(); "VXC {} deleted", vxc.id);
        self.published.edit(|s| {
            s.model.commit_delete_vxc(&vxc.id);
            s.states.remove(&vxc.id);
        });
        self.inspect_changed(&vxc);
        self.events.emit(EventKind::VxcDeleted {
            vxc: vxc.id.to_string(),
        });
        Ok(json!({"deleted": vxc.id}))
    }

    /// Makes records durable. Compaction is left to [`Engine::handle`], after the commit.
    fn persist(&mut self, records: &[Record]) -> Result<(), Failure> {
        let started = Instant::now();
        let written = self.store.append_batch(records);
        crate::metrics::daemon()
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.publish_store();
        written.map_err(|e| Failure::internal(format!("state not written, nothing changed: {e}")))
    }

    /// Compares the kernel with the state and, unless observe-only, repairs the difference. Each
    /// repair is logged and counted.
    pub async fn reconcile(&mut self) {
        let mut desired = Vec::new();
        let mut unconfigured = Vec::new();
        let first = {
            let state = self.published.load();
            for vxc in state.model.vxcs() {
                match state.spec(vxc) {
                    Some(spec) => desired.push(spec),
                    None => unconfigured.push((vxc.id.clone(), Self::unconfigured(vxc))),
                }
            }
            state.last_reconcile.is_none()
        };
        let started = Instant::now();
        if first {
            log::info!("converging the kernel to {} VXCs", desired.len());
        }
        let outcome = if self.repair {
            self.converge(&desired).await
        } else {
            self.check(&desired).await
        };
        let kernel_8021q = kernel_has_8021q();
        let core_mtu = self.read_core_mtu().await;
        let metrics = crate::metrics::daemon();
        metrics.reconcile_passes.inc();
        metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok((states, repaired)) => {
                metrics.drift_repairs.inc_by(repaired);
                let (counts, changes) = self.published.edit(|s| {
                    let changes: Vec<EventKind> = unconfigured
                        .into_iter()
                        .chain(states)
                        .filter_map(|(id, state)| set_state(&mut s.states, id, state))
                        .collect();
                    s.drift_repairs += repaired;
                    s.last_reconcile = Some(OffsetDateTime::now_utc());
                    s.kernel_8021q = kernel_8021q;
                    s.core_mtu = core_mtu;
                    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                    for state in s.states.values() {
                        *counts.entry(state.name()).or_default() += 1;
                    }
                    (counts, changes)
                });
                for change in changes {
                    self.events.emit(change);
                }
                if first || repaired > 0 {
                    log::info!(
                        "reconciled in {:.2} s: {repaired} repairs; VXCs {counts:?}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                let changes: Vec<EventKind> = self.published.edit(|s| {
                    unconfigured
                        .into_iter()
                        .filter_map(|(id, state)| set_state(&mut s.states, id, state))
                        .collect()
                });
                for change in changes {
                    self.events.emit(change);
                }
                log::error!("reconcile: reading the kernel failed: {e}");
            }
        }
        self.refresh_inspector();
    }

    /// The MTUs of the uplink and of the local ports of VXCs to peers (a few link reads: one per
    /// such port, not per VXC); `None` without `[core]` or without an uplink to compare with.
    async fn read_core_mtu(&self) -> Option<read::CoreMtu> {
        let state = self.published.load();
        let uplink = state.core.as_ref()?.interface.clone()?;
        let ports: std::collections::BTreeSet<PortName> = state
            .model
            .vxcs()
            .filter(|v| v.peer().is_some())
            .map(|v| {
                if v.a_end.is_local() {
                    v.a_end.port.clone()
                } else {
                    v.b_end.port.clone()
                }
            })
            .collect();
        let interfaces: Vec<(PortName, String)> = ports
            .into_iter()
            .filter_map(|p| Some((p.clone(), state.ports.get(&p)?.clone())))
            .collect();
        drop(state);
        let mut mtus = read::CoreMtu {
            uplink: self.dataplane.link_mtu(&uplink).await.ok().flatten(),
            ports: BTreeMap::new(),
        };
        for (port, interface) in interfaces {
            if let Ok(Some(mtu)) = self.dataplane.link_mtu(&interface).await {
                mtus.ports.insert(port, mtu);
            }
        }
        Some(mtus)
    }

    /// Repairs the kernel towards `desired`: each VXC's new state and the number of repairs.
    async fn converge(
        &mut self,
        desired: &[VxcSpec],
    ) -> Result<(Vec<(VxcId, VxcState)>, u64), dataplane::DataplaneError> {
        let report = self.dataplane.converge(desired).await?;
        let mut repairs = 0;
        let mut states = Vec::with_capacity(report.vxcs.len());
        for (id, outcome) in report.vxcs {
            let Ok(id) = VxcId::parse("id", &id) else {
                continue;
            };
            let state = match outcome {
                VxcOutcome::Ok => VxcState::Up,
                VxcOutcome::Repaired(applied) => {
                    repairs += 1;
                    let what: Vec<String> = applied.changes.iter().map(|c| c.to_string()).collect();
                    log::warn!(vxc = id.as_str(); "VXC {id}: repaired: {}", what.join("; "));
                    self.events.emit(EventKind::DriftRepaired {
                        vxc: Some(id.to_string()),
                        what,
                    });
                    VxcState::Up
                }
                VxcOutcome::Pending(missing) => VxcState::Pending(missing_text(&missing)),
                VxcOutcome::Failed(e) => {
                    log::error!(vxc = id.as_str(); "VXC {id}: {e}");
                    VxcState::Failed(e.to_string())
                }
            };
            states.push((id, state));
        }
        for orphan in report.orphans_removed {
            repairs += 1;
            log::warn!("removed {orphan}: owned by vxcd but part of no VXC in the state");
            self.events.emit(EventKind::DriftRepaired {
                vxc: None,
                what: vec![format!("removed {orphan}")],
            });
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
        Ok((states, repairs))
    }

    /// Observe-only: report drift, change nothing.
    async fn check(
        &mut self,
        desired: &[VxcSpec],
    ) -> Result<(Vec<(VxcId, VxcState)>, u64), dataplane::DataplaneError> {
        let observed = self.dataplane.observe().await?;
        let plan = Dataplane::plan(desired, &observed);
        let mut states = Vec::with_capacity(plan.vxcs.len());
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
            states.push((id, state));
        }
        for orphan in plan.orphans {
            log::warn!("{orphan} is owned by vxcd but part of no VXC (observe-only: left)");
        }
        Ok((states, 0))
    }
}

/// Records a VXC's state, logging every change of it (a VXC going pending when its port
/// interface disappears, coming back up, failing); the change as an event.
fn set_state(
    states: &mut HashMap<VxcId, VxcState>,
    id: VxcId,
    state: VxcState,
) -> Option<EventKind> {
    let before = states.get(&id);
    let event = (before != Some(&state)).then(|| EventKind::VxcState {
        vxc: id.to_string(),
        old: before.map_or("new", VxcState::name).to_owned(),
        new: state.name().to_owned(),
        reason: state.reason(),
    });
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
    states.insert(id, state);
    event
}
