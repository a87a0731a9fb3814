//! The reconcile pass: the kernel compared with the whole state and, unless observe-only,
//! repaired; each VXC's state, the host's facts (802.1Q, core MTUs) and the drift counted and
//! published once the pass is done.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use time::OffsetDateTime;

use super::{kernel_has_8021q, read, Engine, EventKind, Journal, Kernel, VxcState};
use crate::dataplane::{self, Dataplane, VxcOutcome, VxcSpec, VxcStatus as PlanStatus};
use crate::domain::{PortName, VxcId};

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Every VXC of the state that this host can program, as the kernel should hold it. Asked
    /// under the engine lock, it is also a barrier: every transaction before it is done.
    pub fn desired(&self) -> Vec<VxcSpec> {
        let state = self.published.load();
        state.model.vxcs().filter_map(|v| state.spec(v)).collect()
    }

    /// The kernel, for work done without the engine lock (reads, and judging kernel events).
    pub fn kernel(&self) -> K {
        self.dataplane.clone()
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
    pub(super) async fn read_core_mtu(&self) -> Option<read::CoreMtu> {
        Some(self.core_mtu_targets()?.read(&self.dataplane).await)
    }

    /// The links whose MTUs [`Engine::read_core_mtu`] reads.
    pub(super) fn core_mtu_targets(&self) -> Option<CoreMtuTargets> {
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
        Some(CoreMtuTargets { uplink, interfaces })
    }

    /// Repairs the kernel towards `desired`: each VXC's new state and the number of repairs.
    pub(super) async fn converge(
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
    pub(super) async fn check(
        &mut self,
        desired: &[VxcSpec],
    ) -> Result<(Vec<(VxcId, VxcState)>, u64), dataplane::DataplaneError> {
        let observed = self.dataplane.observe().await?;
        Ok((plan_states(Dataplane::plan(desired, &observed)), 0))
    }
}

/// How many port MTU reads are in flight at once.
const CORE_MTU_READS_IN_FLIGHT: usize = 64;

/// The uplink and the local ports of VXCs to peers, whose MTUs decide whether frames fit the core.
pub(super) struct CoreMtuTargets {
    uplink: String,
    interfaces: Vec<(PortName, String)>,
}

impl CoreMtuTargets {
    pub(super) async fn read(&self, kernel: &impl Kernel) -> read::CoreMtu {
        use futures::stream::{self, StreamExt};
        // Pipelined: a host with thousands of ports to peers would wait for each read in turn.
        let reads = self
            .interfaces
            .iter()
            .map(|(port, interface)| async move { (port, kernel.link_mtu(interface).await) });
        let ports = stream::iter(reads.collect::<Vec<_>>())
            .buffer_unordered(CORE_MTU_READS_IN_FLIGHT)
            .filter_map(|(port, mtu)| async move { Some((port.clone(), mtu.ok().flatten()?)) })
            .collect()
            .await;
        read::CoreMtu {
            uplink: kernel.link_mtu(&self.uplink).await.ok().flatten(),
            ports,
        }
    }
}

/// Each VXC's state as a plan found it, without repairing: drift is reported (observe-only) and
/// makes the VXC failed; orphans are logged and left.
pub(super) fn plan_states(plan: dataplane::Plan) -> Vec<(VxcId, VxcState)> {
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
    states
}

fn missing_text(missing: &[(String, String)]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|(port, interface)| format!("port {port}: interface {interface} is missing"))
        .collect();
    parts.join("; ")
}

/// Records a VXC's state, logging every change of it (a VXC going pending when its port
/// interface disappears, coming back up, failing); the change as an event.
pub(super) fn set_state(
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
