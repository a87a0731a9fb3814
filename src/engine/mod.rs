//! The engine: the one owner of the model, the state store and the dataplane. Every change and
//! every reconciliation goes through it, one at a time, in this order: check the rules (domain),
//! program the kernel (dataplane, atomic per request), make the change durable (store), then
//! commit it to the published state (read side) and answer. A failure at any step undoes the
//! steps before it, so what was acknowledged is always in the state and the kernel, and nothing
//! else is. Reads never come here: they are answered from the published state ([`read`]).
//!
//! Rooms: `txn` (a key put, a VXC put or delete), `batch` and `sync` (many ops as one), `pass`
//! (the reconcile pass), `compact` (snapshots off the request path), `inspect` (the inspector's
//! tables), `read` (the published state and its views), `record` (journal records, replay),
//! `events` (`watch`), `verify`. Its two seams, `kernel` and `journal`, let `tests` run every
//! transaction without root.

mod batch;
mod compact;
mod events;
mod group;
mod inspect;
mod journal;
mod kernel;
mod pass;
mod pass_steps;
mod read;
mod record;
mod sync;
#[cfg(test)]
mod tests;
mod txn;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::config::Port;
use crate::dataplane::{Dataplane, VxcSpec};
use crate::domain::{Model, PortName, RuleError, Vxc};
use crate::inspector::InspectConfig;
use crate::protocol::{Failure, Op, StoreStatus};
use crate::store::{Store, StoreError};

pub use batch::BatchAnswer;
pub use events::{report_violations, Event, EventKind, Events, Subscription, RING_SIZE};
pub use group::{groupable, MAX_GROUP};
pub use journal::Journal;
pub use kernel::Kernel;
pub use pass_steps::{PassCheck, PassStart};
pub use read::{is_read, rfc3339, Published, ReadState, Reader, VxcState};
pub use record::{load_state, Loaded, Record, Snapshot};
pub use verify::run_verify;

/// Generic over its two seams so that its transactions are unit-tested without root
/// (`engine/tests.rs`); the daemon's is `Engine<Dataplane, Store<Record>>`.
pub struct Engine<K = Dataplane, J = Store<Record>> {
    store: J,
    dataplane: K,
    /// The kernel the reconcile pass reads through without the engine lock: in the daemon, the
    /// dataplane on a netlink socket of its own, so that its dumps never hold up a request's
    /// (`Dataplane::second_socket`). `None`: `dataplane`.
    pass_kernel: Option<K>,
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
            pass_kernel: None,
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

    /// The kernel the reconcile pass reads through (`None`: the one transactions use).
    pub fn set_pass_kernel(&mut self, kernel: K) {
        self.pass_kernel = Some(kernel);
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
                .map(|m| {
                    m.with_core(state.model.core())
                        .with_revisions_of(&state.model)
                })
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
        if let Some(kernel) = &mut self.pass_kernel {
            kernel.set_port_interfaces(new.values().cloned().collect());
        }
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

    /// A `batch`, answered as text per op ([`batch::BatchAnswer`]) rather than as one `Value`:
    /// what the control socket writes for thousands of ops.
    pub async fn handle_batch(
        &mut self,
        ops: Vec<Op>,
        atomic: bool,
    ) -> Result<batch::BatchAnswer, Failure> {
        let answer = self.batch(ops, atomic, OffsetDateTime::now_utc()).await;
        // As in `handle`: compaction only once the change is committed.
        self.compaction_step().await;
        answer
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
            Op::Batch { ops, atomic } => self
                .batch(ops, atomic, now)
                .await
                .and_then(batch::BatchAnswer::into_value),
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
}
