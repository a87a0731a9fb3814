//! The running daemon's reconcile pass, in three steps so that no request waits for a whole-host
//! read: [`Engine::begin_pass`] (under the engine lock, a moment: what the state wants),
//! [`PassStart::check`] (no lock: one full read of the kernel, the plan, the host's facts, the
//! ports kept quiet) and [`Engine::finish_pass`] (under the lock again: publish).
//!
//! A transaction committed while the pass read the kernel wins over the pass: a VXC whose spec
//! changed since the pass began keeps the state its transaction gave it, one deleted since is not
//! brought back, one created since is never taken for an orphan (the pass saw its objects but not
//! it: the read finds drift, and the repair below reads again). When the read shows drift or an
//! orphan and repair is on, `finish_pass` repairs through the whole pass under the lock
//! ([`Engine::reconcile`]), which reads the kernel again: a repair acts on the kernel as it is,
//! never on a read another transaction may have overtaken. Drift is rare; a pass that finds the
//! kernel right, the common case, holds the lock only to begin and to publish.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use time::OffsetDateTime;

use super::pass::{plan_states, set_state, CoreMtuTargets};
use super::{kernel_has_8021q, read, Engine, EventKind, Journal, Kernel, VxcState};
use crate::dataplane::{Dataplane, DataplaneError, VxcSpec, VxcStatus};
use crate::domain::VxcId;

/// A pass begun: what the state wanted when it began.
pub struct PassStart<K> {
    kernel: K,
    desired: Vec<VxcSpec>,
    unconfigured: Vec<(VxcId, VxcState)>,
    repair: bool,
    core: Option<CoreMtuTargets>,
    started: Instant,
}

/// What the kernel showed the pass, judged.
pub struct PassCheck {
    desired: Vec<VxcSpec>,
    unconfigured: Vec<(VxcId, VxcState)>,
    /// Each VXC's state; `None`: drift or an orphan to repair.
    found: Result<Option<Vec<(VxcId, VxcState)>>, DataplaneError>,
    kernel_8021q: bool,
    core_mtu: Option<read::CoreMtu>,
    started: Instant,
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Step 1, under the engine lock: what the state wants now.
    pub fn begin_pass(&self) -> PassStart<K> {
        let state = self.published.load();
        let mut desired = Vec::new();
        let mut unconfigured = Vec::new();
        for vxc in state.model.vxcs() {
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
            unconfigured,
            repair: self.repair,
            core: self.core_mtu_targets(),
            started: Instant::now(),
        }
    }

    /// Step 3, under the engine lock: publishes what the pass found, or repairs.
    pub async fn finish_pass(&mut self, check: PassCheck) {
        let states = match check.found {
            Ok(Some(states)) => states,
            Ok(None) => return self.reconcile().await,
            Err(e) => {
                log::error!("reconcile: reading the kernel failed: {e}");
                crate::metrics::daemon().reconcile_passes.inc();
                return;
            }
        };
        let metrics = crate::metrics::daemon();
        metrics.reconcile_passes.inc();
        metrics
            .reconcile_seconds
            .observe(check.started.elapsed().as_secs_f64());
        let began: HashMap<&str, &VxcSpec> =
            check.desired.iter().map(|s| (s.id.as_str(), s)).collect();
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
                if s.spec(vxc).as_ref() != began.get(id.as_str()).copied() {
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
    }
}

impl<K: Kernel> PassStart<K> {
    /// Step 2, without the engine lock: one full read of the kernel, judged against what the
    /// state wanted when the pass began.
    pub async fn check(self) -> PassCheck {
        let found = match self.kernel.observe().await {
            Err(e) => Err(e),
            Ok(observed) => {
                let plan = Dataplane::plan(&self.desired, &observed);
                if self.repair {
                    let (quieted, failures) = self.kernel.quiet_ports(&observed).await;
                    for (port, done) in quieted {
                        log::info!(interface = port.as_str(); "port interface {port}: host IPv6 kept off the customer's wire: {}", done.join(", "));
                    }
                    for (port, e) in failures {
                        log::error!(interface = port.as_str(); "port interface {port}: {e}");
                    }
                }
                let drift = !plan.orphans.is_empty()
                    || plan
                        .vxcs
                        .iter()
                        .any(|v| matches!(v.status, VxcStatus::Drift(_)));
                if self.repair && drift {
                    Ok(None)
                } else {
                    Ok(Some(plan_states(plan)))
                }
            }
        };
        let core_mtu = match &self.core {
            Some(targets) => Some(targets.read(&self.kernel).await),
            None => None,
        };
        PassCheck {
            desired: self.desired,
            unconfigured: self.unconfigured,
            found,
            kernel_8021q: kernel_has_8021q(),
            core_mtu,
            started: self.started,
        }
    }
}
