//! The engine's transactions on single objects: a key put, a VXC put (create, update, A-End VLAN
//! move) and a VXC delete. Each one checks the rules, programs the kernel, makes the change
//! durable and only then commits it to the published state; a failure at a later step undoes
//! the earlier ones, so a refusal changes nothing in the kernel or on disk.

use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::batch::Done;
use super::{Engine, EventKind, Journal, Kernel, Record, VxcState};
use crate::dataplane::{self, ApplyReport, DataplaneError, VxcSpec};
use crate::domain::{Change, Vxc, VxcId};
use crate::protocol::Failure;

/// Most VXCs made from nothing programmed at once by a group or a batch (each VXC's own
/// requests go one after the other): enough to keep the kernel busy while vxcd reads its
/// answers, few enough that a refusal has little to take back.
pub const PROGRAM_IN_FLIGHT: usize = 16;

impl<K: Kernel, J: Journal> Engine<K, J> {
    pub(super) fn put_key(
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

    pub(super) async fn put_vxc(
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
    pub(super) async fn reprogram(
        &self,
        old: &VxcSpec,
        new: &VxcSpec,
        moved: bool,
    ) -> Result<(), Failure> {
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
    pub(super) async fn program(&mut self, spec: &VxcSpec) -> Result<VxcState, Failure> {
        Self::programmed(self.dataplane.apply(spec).await)
    }

    fn programmed(applied: Result<ApplyReport, DataplaneError>) -> Result<VxcState, Failure> {
        match applied {
            Ok(_) => Ok(VxcState::Up),
            Err(e) if e.is_port_missing() => Ok(VxcState::Pending(e.to_string())),
            Err(e) => Err(Failure::dataplane(e.to_string())),
        }
    }

    /// Programs VXCs made from nothing, [`PROGRAM_IN_FLIGHT`] at once; one result per spec, in
    /// order, and each one made up is in `done` (in order too, to be taken back last first).
    /// Their objects must be disjoint (the rules make those of different VXCs so): each VXC's
    /// requests still go one after the other, but the kernel's answers to one overlap the next
    /// one's requests instead of leaving the CPUs idle between them.
    pub(super) async fn program_many(
        &self,
        specs: Vec<VxcSpec>,
        done: &mut Vec<Done>,
    ) -> Vec<Result<VxcState, Failure>> {
        // Collected first: a lazy map would make the future not Send (the closure's borrow).
        let applies: Vec<_> = specs
            .iter()
            .map(|spec| async move { Self::programmed(self.dataplane.apply(spec).await) })
            .collect();
        let results: Vec<Result<VxcState, Failure>> = futures::stream::iter(applies)
            .buffered(PROGRAM_IN_FLIGHT)
            .collect()
            .await;
        for (spec, result) in specs.into_iter().zip(&results) {
            if result.as_ref() == Ok(&VxcState::Up) {
                done.push(Done::Created(spec));
            }
        }
        results
    }

    pub(super) fn undo<E: std::fmt::Display>(&self, result: Result<(), E>, vxc: &VxcId) {
        if let Err(e) = result {
            // The reconciler removes or restores it on its next pass: the state is the truth.
            log::error!(vxc = vxc.as_str(); "undoing VXC {vxc} in the kernel failed, left to the reconciler: {e}");
        }
    }

    pub(super) async fn delete_vxc(&mut self, id: &str) -> Result<Value, Failure> {
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
    pub(super) fn persist(&mut self, records: &[Record]) -> Result<(), Failure> {
        let started = Instant::now();
        let written = self.store.append_batch(records);
        crate::metrics::daemon()
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.publish_store();
        written.map_err(|e| Failure::internal(format!("state not written, nothing changed: {e}")))
    }
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
