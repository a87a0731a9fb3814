//! Group commit: `key.put`, `vxc.put` and `vxc.delete` requests that arrive together (pipelined
//! on one connection, or from several connections while the engine was busy) are applied as if
//! each came alone, and made durable together.
//!
//! Each op is checked against the state as the ops before it in the group left it (a scratch
//! copy), then programmed in the kernel; an op refused by a rule or by the kernel is refused
//! alone (the kernel's per-VXC atomicity leaves nothing of it) and the group goes on. Then every
//! record of the ops that went through is written in **one** journal entry: one `fdatasync` for
//! the group. Only after it are the scratch model and states published and the answers sent, so
//! no answer says "done" before its change is both in the kernel and on disk. A failed write
//! refuses every op that went through and takes their kernel work back, last first: each op is
//! still all or nothing, and a kill -9 before the sync leaves nothing acknowledged (replay sees
//! the entry whole or not at all; kernel objects of no VXC in the state are orphans at start).

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::batch::{Done, Step};
use super::txn::PROGRAM_IN_FLIGHT;
use super::{Engine, EventKind, Journal, Kernel, ReadState, Record, VxcState};
use crate::dataplane::VxcSpec;
use crate::domain::{Change, Vxc, VxcId, VxcPlan};
use crate::protocol::{Failure, Op};

/// Most ops in one group: the scratch copy is O(state), so a group must be worth it, and a long
/// group delays its first answer.
pub const MAX_GROUP: usize = 512;

/// Fewest VXCs in a run of deletes for the kernel's bulk path: it dumps every link first, so a
/// run of two or three goes one by one (a judgement, not a measured break-even).
const BULK_DELETE_MIN: usize = 4;

/// Whether an op may join a group.
pub fn groupable(op: &Op) -> bool {
    matches!(
        op,
        Op::KeyPut { .. } | Op::VxcPut { .. } | Op::VxcDelete { .. }
    )
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Applies `ops` (each [`groupable`]) as one group; one answer per op, in order. A group of
    /// one is a plain [`Engine::handle`].
    pub async fn handle_group(&mut self, mut ops: Vec<Op>) -> Vec<Result<Value, Failure>> {
        if ops.len() == 1 {
            if let Some(op) = ops.pop() {
                return vec![self.handle(op).await];
            }
        }
        let answers = self.group(ops).await;
        self.compaction_step().await;
        answers
    }

    async fn group(&mut self, ops: Vec<Op>) -> Vec<Result<Value, Failure>> {
        let now = OffsetDateTime::now_utc();
        let (scratch, done, outcomes) = match self.apply_ops(&ops, now, true).await {
            Ok(applied) => applied,
            Err(done) => {
                // A VXC programmed beside others was refused by the kernel, after the ops that
                // followed it were checked on a scratch state that held it: their answers could
                // differ from what each would get alone (the key it would have spent, the VLAN
                // it would have taken). The kernel work is taken back and the group applied
                // again one op at a time, which is what "as if each came alone" means.
                log::info!(
                    "a VXC programmed beside others was refused by the kernel: the group of {} ops is applied again one op at a time",
                    ops.len()
                );
                self.undo_batch(done).await;
                match self.apply_ops(&ops, now, false).await {
                    Ok(applied) => applied,
                    Err(done) => {
                        self.undo_batch(done).await;
                        let failure =
                            Failure::internal("a group applied one op at a time speculated");
                        return ops.iter().map(|_| Err(failure.clone())).collect();
                    }
                }
            }
        };
        // One journal entry for every op that went through.
        let records: Vec<Record> = outcomes.iter().flatten().flat_map(Step::records).collect();
        if !records.is_empty() {
            if let Err(failure) = self.persist(&records) {
                self.undo_batch(done).await;
                return outcomes
                    .into_iter()
                    .map(|o| o.and_then(|_| Err(failure.clone())))
                    .collect();
            }
        }
        let peers = outcomes.iter().flatten().any(|s| match s {
            Step::Vxc {
                change: Change::Created(vxc),
                ..
            } => vxc.peer().is_some(),
            _ => false,
        });
        self.published.edit(|s| {
            s.model = scratch.model;
            s.states = scratch.states;
        });
        if peers {
            // Their answers say at once whether their customers' frames fit the core.
            let core_mtu = self.read_core_mtu().await;
            self.published.edit(|s| s.core_mtu = core_mtu);
        }
        let state = self.published.load();
        let mut events = Vec::new();
        let answers: Vec<Result<Value, Failure>> = outcomes
            .iter()
            .map(|outcome| {
                let step = outcome.as_ref().map_err(Clone::clone)?;
                Ok(match step {
                    Step::Key(change) => {
                        let key = change.after();
                        if !matches!(change, Change::Unchanged(_)) {
                            log::info!(key = key.id.as_str(), port = key.port.as_str(); "service key {} stored", key.id);
                            events.push(EventKind::KeyStored {
                                key: key.id.to_string(),
                            });
                        }
                        json!({"key": state.key_view(key, now)})
                    }
                    Step::Vxc { change, key_after } => {
                        let vxc = change.after();
                        let id = vxc.id.to_string();
                        match change {
                            Change::Created(_) => {
                                let now_state = state.states.get(&vxc.id);
                                log::info!(vxc = vxc.id.as_str(), key = vxc.service_key.as_str(); "VXC {id} created: {}", now_state.map_or("new", VxcState::name));
                                events.push(EventKind::VxcCreated { vxc: id.clone() });
                                if let Some(key) = key_after.as_ref().filter(|k| k.single_use) {
                                    events.push(EventKind::KeyUsed {
                                        key: key.id.to_string(),
                                        vxc: id.clone(),
                                    });
                                }
                                if let Some(s) = now_state {
                                    events.push(EventKind::VxcState {
                                        vxc: id,
                                        old: "new".into(),
                                        new: s.name().into(),
                                        reason: s.reason(),
                                    });
                                }
                            }
                            Change::Updated { before, after } => {
                                log::info!(vxc = vxc.id.as_str(); "VXC {id} updated");
                                events.push(EventKind::VxcUpdated {
                                    vxc: id,
                                    changed: super::txn::changed_fields(before, after),
                                });
                            }
                            Change::Unchanged(_) => {}
                        }
                        json!({"vxc": state.vxc_view(vxc, None)})
                    }
                    Step::Delete(vxc) => {
                        log::info!(vxc = vxc.id.as_str(); "VXC {} deleted", vxc.id);
                        events.push(EventKind::VxcDeleted {
                            vxc: vxc.id.to_string(),
                        });
                        json!({"deleted": vxc.id})
                    }
                })
            })
            .collect();
        drop(state);
        for step in outcomes.iter().flatten() {
            match step {
                Step::Vxc {
                    change: Change::Updated { before, after },
                    ..
                } if before.a_end.vlan != after.a_end.vlan => {
                    self.inspect_changed(before);
                    self.inspect_changed(after);
                }
                Step::Vxc {
                    change: Change::Created(vxc),
                    ..
                }
                | Step::Delete(vxc) => self.inspect_changed(vxc),
                _ => {}
            }
        }
        for event in events {
            self.events.emit(event);
        }
        answers
    }

    /// Checks and programs a group's ops in order on a scratch copy of the state: each op's
    /// step, or why it was refused, with the scratch state they left and the kernel work done.
    ///
    /// With `speculate`, a run of `vxc.put` that each create a VXC is checked op after op and
    /// then programmed at once, [`PROGRAM_IN_FLIGHT`] at most (their kernel objects are disjoint:
    /// the rules give every end its own VLAN, port or VNI). Should the kernel refuse one of them,
    /// `Err` holds the kernel work done, for the caller to take back and apply the group again
    /// without speculating: the ops after the refused one were checked on a scratch state that
    /// held it. Without `speculate` it never fails.
    async fn apply_ops(
        &mut self,
        ops: &[Op],
        now: OffsetDateTime,
        speculate: bool,
    ) -> Result<Applied, Vec<Done>> {
        let mut scratch = (*self.published.load()).clone();
        let mut done: Vec<Done> = Vec::new();
        // Per op: the step it took, or why it was refused.
        let mut outcomes: Vec<Result<Step, Failure>> = Vec::with_capacity(ops.len());
        let mut i = 0;
        while i < ops.len() {
            if let Op::VxcDelete { .. } = &ops[i] {
                // A run of deletes: their links go at once where the kernel's bulk path helps.
                let mut ids = Vec::new();
                while let Some(Op::VxcDelete { id }) = ops.get(i) {
                    ids.push(id.clone());
                    i += 1;
                }
                let run = self.delete_run(&mut scratch, ids, &mut done).await;
                outcomes.extend(run);
                continue;
            }
            if speculate {
                let window = Self::creations(&mut scratch, &ops[i..], now);
                if !window.is_empty() {
                    i += window.len();
                    let specs = window.iter().map(|c| c.spec.clone()).collect();
                    let programmed = self.program_many(specs, &mut done).await;
                    if programmed.iter().any(Result::is_err) {
                        return Err(done);
                    }
                    for (creation, state) in
                        window.into_iter().zip(programmed.into_iter().flatten())
                    {
                        scratch.states.insert(creation.id, state);
                        outcomes.push(Ok(creation.step));
                    }
                    continue;
                }
            }
            let outcome = match &ops[i] {
                Op::KeyPut { key } => match scratch.model.plan_key(key) {
                    Ok(change) => {
                        scratch.model.commit_key(change.clone());
                        Ok(Step::Key(change))
                    }
                    Err(e) => Err(Failure::from(e)),
                },
                Op::VxcPut { vxc } => match scratch.model.plan_vxc(vxc, now) {
                    Err(e) => Err(Failure::from(e)),
                    Ok(plan) => {
                        let step = Step::Vxc {
                            change: plan.change.clone(),
                            key_after: plan.key_after.clone(),
                        };
                        let programmed = match &plan.change {
                            Change::Unchanged(_) => Ok(None),
                            Change::Created(vxc) => match scratch.spec(vxc) {
                                None => Ok(Some((vxc.id.clone(), Self::unconfigured(vxc)))),
                                Some(spec) => self.program(&spec).await.map(|state| {
                                    if state == VxcState::Up {
                                        done.push(Done::Created(spec));
                                    }
                                    Some((vxc.id.clone(), state))
                                }),
                            },
                            Change::Updated { before, after } => {
                                let up = scratch.states.get(&after.id) == Some(&VxcState::Up);
                                let moved = before.a_end.vlan != after.a_end.vlan;
                                let reprogram = up
                                    && (before.rate_mbps != after.rate_mbps
                                        || before.shutdown != after.shutdown
                                        || moved);
                                match (reprogram, scratch.spec(before), scratch.spec(after)) {
                                    (true, Some(old), Some(new)) => {
                                        match self.reprogram(&old, &new, moved).await {
                                            Ok(()) => {
                                                done.push(Done::Reprogrammed(Box::new((
                                                    old, new, moved,
                                                ))));
                                                Ok(None)
                                            }
                                            Err(f) => Err(f),
                                        }
                                    }
                                    _ => Ok(None),
                                }
                            }
                        };
                        programmed.map(|state| {
                            scratch.model.commit_vxc(plan);
                            if let Some((id, state)) = state {
                                scratch.states.insert(id, state);
                            }
                            step
                        })
                    }
                },
                other => Err(Failure::internal(format!(
                    "{} cannot be in a group",
                    other.name()
                ))),
            };
            outcomes.push(outcome);
            i += 1;
        }
        Ok((scratch, done, outcomes))
    }

    /// The leading `vxc.put` of `ops` that each create a VXC this host programs, checked in
    /// order and committed to `scratch` (at most [`PROGRAM_IN_FLIGHT`]): up to the first op that
    /// is another kind, is refused by a rule, changes a VXC or creates one programmed elsewhere,
    /// which is left unchecked for the caller.
    fn creations(scratch: &mut ReadState, ops: &[Op], now: OffsetDateTime) -> Vec<Creation> {
        let mut window = Vec::new();
        for op in ops.iter().take(PROGRAM_IN_FLIGHT) {
            let Op::VxcPut { vxc } = op else { break };
            let Ok(plan) = scratch.model.plan_vxc(vxc, now) else {
                break;
            };
            let Change::Created(made) = &plan.change else {
                break;
            };
            let Some(spec) = scratch.spec(made) else {
                break;
            };
            let id = made.id.clone();
            let step = Step::Vxc {
                change: plan.change.clone(),
                key_after: plan.key_after.clone(),
            };
            scratch.model.commit_vxc(plan);
            window.push(Creation { id, spec, step });
        }
        window
    }

    /// A run of `vxc.delete` in a group, each as if alone: checked in order on the scratch
    /// state (a second delete of one id is refused as it would be alone), then the links of
    /// all that passed are deleted at once ([`Kernel::remove_many`]: about 54 ms per link one
    /// by one under TCG, once for the lot by group). If the bulk path is refused, each VXC is
    /// removed on its own and one the kernel refuses is refused alone, back in the scratch.
    async fn delete_run(
        &mut self,
        scratch: &mut ReadState,
        ids: Vec<String>,
        done: &mut Vec<Done>,
    ) -> Vec<Result<Step, Failure>> {
        let mut outcomes: Vec<Result<Step, Failure>> = Vec::with_capacity(ids.len());
        let mut gone: Vec<Doomed> = Vec::new();
        for id in ids {
            match scratch.model.plan_delete_vxc(&id).cloned() {
                Err(e) => outcomes.push(Err(Failure::from(e))),
                Ok(vxc) => {
                    let spec = scratch.spec(&vxc);
                    scratch.model.commit_delete_vxc(&vxc.id);
                    let state = scratch.states.remove(&vxc.id);
                    gone.push(Doomed {
                        at: outcomes.len(),
                        vxc: vxc.clone(),
                        spec,
                        state,
                    });
                    outcomes.push(Ok(Step::Delete(vxc)));
                }
            }
        }
        let specs: Vec<VxcSpec> = gone.iter().filter_map(|g| g.spec.clone()).collect();
        let bulk = specs.len() >= BULK_DELETE_MIN
            && match self.dataplane.remove_many(&specs).await {
                Ok(()) => true,
                Err(e) => {
                    log::warn!(
                        "deleting {} VXCs at once: {e}; removing them one by one",
                        specs.len()
                    );
                    false
                }
            };
        for Doomed {
            at,
            vxc,
            spec,
            state,
        } in gone
        {
            let Some(spec) = spec else { continue };
            if !bulk {
                if let Err(e) = self.dataplane.remove(&spec).await {
                    let id = vxc.id.clone();
                    // Refused alone: the VXC is back in the scratch state as it was. Committing
                    // it as created again is right only because a run holds deletes and nothing
                    // else: no op of the run can have taken its id, its VLANs or its key's use
                    // meanwhile (`handle_group` cuts runs at the first op that is not a delete).
                    scratch.model.commit_vxc(VxcPlan {
                        change: Change::Created(vxc),
                        key_after: None,
                    });
                    if let Some(state) = state {
                        scratch.states.insert(id, state);
                    }
                    outcomes[at] = Err(Failure::dataplane(e.to_string()));
                    continue;
                }
            }
            if state == Some(VxcState::Up) {
                done.push(Done::Removed(spec));
            }
        }
        outcomes
    }
}

/// What [`Engine::apply_ops`] made of a group: the scratch state, the kernel work, each op's
/// step or refusal.
type Applied = (ReadState, Vec<Done>, Vec<Result<Step, Failure>>);

/// A VXC a speculating group creates beside others: checked, committed to the scratch state,
/// its kernel work not yet done.
struct Creation {
    id: VxcId,
    spec: VxcSpec,
    step: Step,
}

/// A VXC of a run of deletes, checked and taken out of the scratch state, before its kernel work.
struct Doomed {
    /// Its op's place in the run's outcomes.
    at: usize,
    vxc: Vxc,
    /// What the kernel holds of it; `None` for a VXC this host does not program.
    spec: Option<VxcSpec>,
    /// Its state before, put back if the kernel refuses to remove it.
    state: Option<VxcState>,
}
