//! The running daemon's reconcile pass, in three steps so that no request waits for a whole-host
//! read: [`Engine::begin_pass`] (under the engine lock, a moment: what the state wants),
//! [`PassStart::check`] (no lock: one full read of the kernel, the plan, the host's facts, the
//! ports kept quiet) and [`Engine::finish_pass`] (under the lock again: publish).
//!
//! A transaction committed while the pass read the kernel wins over the pass: a VXC whose spec
//! changed since the pass began keeps the state its transaction gave it, one deleted since is not
//! brought back, one created since is never taken for an orphan. The read may show such a VXC
//! half made, or its objects as orphans of a VXC the pass did not know: `finish_pass` judges, under
//! the lock, whether the drift and orphans found are all of VXCs transactions touched since the
//! pass began (their transactions programmed and verified them); only if not does it repair,
//! through the whole pass under the lock ([`Engine::reconcile`]), which reads the kernel again: a
//! repair acts on the kernel as it is, never on a read another transaction may have overtaken.
//! Drift is rare; a pass that finds the kernel right, or only the marks of requests answered while
//! it read (a put during a pass at 4,000 VXCs waited 3.4 s for a repair it did not need), holds the
//! lock only to begin and to publish.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use time::OffsetDateTime;

use super::pass::{plan_states, set_state, CoreMtuTargets};
use super::{kernel_has_8021q, read, Engine, EventKind, Journal, Kernel, VxcState};
use crate::dataplane::{
    alias_vxc_id, end_interface_name, Dataplane, DataplaneError, Orphan, Side, VxcSpec, VxcStatus,
};
use crate::domain::VxcId;

/// A pass begun: what the state wanted when it began.
pub struct PassStart<K> {
    kernel: K,
    desired: Vec<VxcSpec>,
    /// Each VXC's model revision when the pass began.
    revisions: HashMap<VxcId, u64>,
    unconfigured: Vec<(VxcId, VxcState)>,
    repair: bool,
    core: Option<CoreMtuTargets>,
    started: Instant,
}

/// What the kernel showed the pass, judged.
pub struct PassCheck {
    desired: Vec<VxcSpec>,
    revisions: HashMap<VxcId, u64>,
    unconfigured: Vec<(VxcId, VxcState)>,
    found: Result<Found, DataplaneError>,
    kernel_8021q: bool,
    core_mtu: Option<read::CoreMtu>,
    started: Instant,
}

/// What a pass read: each VXC's state where the kernel had it right (or observe-only: as found),
/// and, with repair on, the VXCs that drifted and the orphans, to be judged under the lock.
struct Found {
    states: Vec<(VxcId, VxcState)>,
    drifted: Vec<String>,
    orphans: Vec<Orphan>,
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Step 1, under the engine lock: what the state wants now.
    pub fn begin_pass(&self) -> PassStart<K> {
        let state = self.published.load();
        let mut desired = Vec::new();
        let mut unconfigured = Vec::new();
        let mut revisions = HashMap::new();
        for vxc in state.model.vxcs() {
            if let Some(r) = state.model.revision(&vxc.id) {
                revisions.insert(vxc.id.clone(), r);
            }
            match state.spec(vxc) {
                Some(spec) => desired.push(spec),
                None => unconfigured.push((vxc.id.clone(), Self::unconfigured(vxc))),
            }
        }
        drop(state);
        PassStart {
            kernel: self
                .pass_kernel
                .clone()
                .unwrap_or_else(|| self.dataplane.clone()),
            desired,
            revisions,
            unconfigured,
            repair: self.repair,
            core: self.core_mtu_targets(),
            started: Instant::now(),
        }
    }

    /// Step 3, under the engine lock: publishes what the pass found, or repairs. True when the
    /// read showed drift or orphans that transactions made meanwhile explain: the caller checks
    /// again (with `trust` false the last time: then whatever is found is repaired), since a
    /// transaction that touched a VXC without reprogramming it (a new description) explains
    /// nothing, and the event that started this pass is spent.
    pub async fn finish_pass(&mut self, check: PassCheck, trust: bool) -> bool {
        let found = match check.found {
            Ok(found) => found,
            Err(e) => {
                log::error!("reconcile: reading the kernel failed: {e}");
                crate::metrics::daemon().reconcile_passes.inc();
                return false;
            }
        };
        let began: HashMap<&str, &VxcSpec> =
            check.desired.iter().map(|s| (s.id.as_str(), s)).collect();
        let found_any = !found.drifted.is_empty() || !found.orphans.is_empty();
        if found_any
            && (!trust
                || self.unexplained(&began, &check.revisions, &found.drifted, &found.orphans))
        {
            self.reconcile().await;
            return false;
        }
        let states = found.states;
        let metrics = crate::metrics::daemon();
        metrics.reconcile_passes.inc();
        metrics
            .reconcile_seconds
            .observe(check.started.elapsed().as_secs_f64());
        let changes: Vec<EventKind> = self.published.edit(|s| {
            let mut changes = Vec::new();
            for (id, state) in check.unconfigured.into_iter().chain(states) {
                if s.states.get(&id) == Some(&state) {
                    continue;
                }
                // Only a VXC no transaction touched since the pass began takes its finding.
                let Some(vxc) = s.model.vxc(id.as_str()) else {
                    continue;
                };
                if s.spec(vxc).as_ref() != began.get(id.as_str()).copied()
                    || s.model.revision(&vxc.id) != check.revisions.get(&vxc.id).copied()
                {
                    continue;
                }
                changes.extend(set_state(&mut s.states, id, state));
            }
            s.last_reconcile = Some(OffsetDateTime::now_utc());
            s.kernel_8021q = check.kernel_8021q;
            s.core_mtu = check.core_mtu;
            changes
        });
        if !changes.is_empty() {
            let counts = self.published.edit(|s| {
                let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
                for state in s.states.values() {
                    *counts.entry(state.name()).or_default() += 1;
                }
                counts
            });
            log::info!(
                "reconciled in {:.2} s: VXCs {counts:?}",
                check.started.elapsed().as_secs_f64()
            );
            for change in changes {
                self.events.emit(change);
            }
            self.refresh_inspector();
        }
        found_any
    }
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Whether drift or orphans a pass read are more than the marks of transactions committed
    /// while it read (under the engine lock, so the state is final for them). A VXC changed,
    /// made or deleted since the pass began was programmed and verified by its transaction: the
    /// read may show it half made (its objects orphans of a VXC the pass did not know, its
    /// shaper at the old rate); that is no drift, and a repair would make every request wait for
    /// a whole pass under the lock (seconds at 4,000 VXCs). Anything else is repaired.
    fn unexplained(
        &self,
        began: &HashMap<&str, &VxcSpec>,
        revisions: &HashMap<VxcId, u64>,
        drifted: &[String],
        orphans: &[Orphan],
    ) -> bool {
        let state = self.published.load();
        // Touched: made, deleted, or committed again (even back to what it was: the read may
        // have seen it in between), or its spec changed by a config reload.
        let overtaken = |id: &str| {
            let Some(vxc) = state.model.vxc(id) else {
                return began.contains_key(id);
            };
            state.model.revision(&vxc.id) != revisions.get(&vxc.id).copied()
                || state.spec(vxc).as_ref() != began.get(id).copied()
        };
        if drifted.iter().any(|id| !overtaken(id)) {
            return true;
        }
        // The end interfaces of the VXCs transactions touched since: a shaper or pipe filter
        // there, unknown to the pass, is theirs.
        let touched: HashSet<String> = state
            .model
            .vxcs()
            .filter(|v| overtaken(v.id.as_str()))
            .filter_map(|v| state.spec(v))
            .flat_map(|spec| {
                [Side::A, Side::B].map(|side| {
                    let end = spec.end(side);
                    end_interface_name(&end.interface, end.vlan)
                })
            })
            .collect();
        let unexplained = orphans.iter().any(|orphan| match orphan {
            // A link just made carries its alias a request after it is created.
            Orphan::Link { alias, name, .. } => {
                !(alias_vxc_id(alias).is_some_and(&overtaken) || touched.contains(name))
            }
            Orphan::Tbf { name, .. } | Orphan::Filter { name, .. } => !touched.contains(name),
        });
        if !unexplained {
            log::debug!(
                "pass: {} drifted VXCs and {} orphans, all of transactions made while it read",
                drifted.len(),
                orphans.len()
            );
        }
        unexplained
    }
}

impl<K: Kernel> PassStart<K> {
    /// Step 2, without the engine lock: one full read of the kernel, judged against what the
    /// state wanted when the pass began.
    pub async fn check(self) -> PassCheck {
        let found = match self.kernel.observe().await {
            Err(e) => Err(e),
            Ok(observed) => {
                let mut plan = Dataplane::plan(&self.desired, &observed);
                if self.repair {
                    let (quieted, failures) = self.kernel.quiet_ports(&observed).await;
                    for (port, done) in quieted {
                        log::info!(interface = port.as_str(); "port interface {port}: host IPv6 kept off the customer's wire: {}", done.join(", "));
                    }
                    for (port, e) in failures {
                        log::error!(interface = port.as_str(); "port interface {port}: {e}");
                    }
                    // Judged under the lock (`finish_pass`): a transaction may explain them.
                    let drifted = plan
                        .vxcs
                        .iter()
                        .filter(|v| matches!(v.status, VxcStatus::Drift(_)))
                        .map(|v| v.id.clone())
                        .collect();
                    plan.vxcs
                        .retain(|v| !matches!(v.status, VxcStatus::Drift(_)));
                    let orphans = std::mem::take(&mut plan.orphans);
                    Ok(Found {
                        states: plan_states(plan),
                        drifted,
                        orphans,
                    })
                } else {
                    Ok(Found {
                        states: plan_states(plan),
                        drifted: Vec::new(),
                        orphans: Vec::new(),
                    })
                }
            }
        };
        let core_mtu = match &self.core {
            Some(targets) => Some(targets.read(&self.kernel).await),
            None => None,
        };
        PassCheck {
            desired: self.desired,
            revisions: self.revisions,
            unconfigured: self.unconfigured,
            found,
            kernel_8021q: kernel_has_8021q(),
            core_mtu,
            started: self.started,
        }
    }
}
