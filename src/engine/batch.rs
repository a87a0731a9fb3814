//! `batch`: many changes in one request, one answer per op in order.
//!
//! - `atomic: false`: each op is applied as if it came alone; a refused op does not stop the
//!   others. Runs of changes are applied as groups ([`super::group`]): one durable write per
//!   run, before any answer.
//! - `atomic: true`: all or none. Every op is checked on a scratch copy of the model, in order
//!   (each sees the ones before it); then the kernel work is done op by op, and undone in reverse
//!   if any step is refused; then every record goes to disk in **one** journal entry (one
//!   `fdatasync` for the whole batch: a crash before it leaves nothing acknowledged, replay sees
//!   the entry whole or not at all); only then is the scratch model published. A run of deletes
//!   takes their links down at once (`Dataplane::remove_many`: the kernel's bulk path). A kill -9 in the
//!   middle leaves kernel objects that belong to no VXC in the state: the start's convergence
//!   removes them as orphans.
//!
//! An atomic batch takes `key.put`, `vxc.put` and `vxc.delete`; a batch of any kind takes no
//! `watch`, `sync`, `verify` or `batch`.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::group::{groupable, MAX_GROUP};
use super::txn::PROGRAM_IN_FLIGHT;
use super::{Engine, EventKind, Journal, Kernel, Record, VxcState};
use crate::dataplane::VxcSpec;
use crate::domain::{Change, ServiceKey, Vxc};
use crate::protocol::{failure_value, Failure, Op};

/// Most ops in one batch.
pub const MAX_BATCH: usize = 10_000;

/// A batch's answer. Each op's result is serialized as soon as it is made: as `Value` trees,
/// 4,000 results were 25 MiB at once (a VXC view is about 6 KiB as a tree, 600 bytes as text).
/// Fields in the order the answer has always had (sorted, as a `Value` map writes them).
#[derive(Debug, Serialize)]
pub struct BatchAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<bool>,
    atomic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_op: Option<usize>,
    results: Vec<Box<RawValue>>,
}

impl BatchAnswer {
    /// As a `Value` (for callers that take every answer so; the control socket writes it as is).
    pub fn into_value(self) -> Result<Value, Failure> {
        serde_json::to_value(&self)
            .map_err(|e| Failure::internal(format!("encoding the batch answer: {e}")))
    }
}

/// One op's result as text: `{"ok": true, "result": ...}` or `{"ok": false, "error": ...}`.
fn op_result(outcome: Result<Value, Failure>) -> Result<Box<RawValue>, Failure> {
    let value = match outcome {
        Ok(result) => json!({"ok": true, "result": result}),
        Err(failure) => json!({"ok": false, "error": failure_value(&failure)}),
    };
    serde_json::value::to_raw_value(&value)
        .map_err(|e| Failure::internal(format!("encoding a batch result: {e}")))
}

/// One op of an atomic batch, checked: what it changes.
// The steps of a batch live in one Vec for the length of the request: boxing the larger variant
// would buy nothing but an allocation per op.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    Key(Change<ServiceKey>),
    Vxc {
        change: Change<Vxc>,
        key_after: Option<ServiceKey>,
    },
    Delete(Vxc),
}

/// Kernel work done, and how to take it back.
pub(super) enum Done {
    Created(VxcSpec),
    /// Boxed: two specs side by side would make every `Done` that large.
    Reprogrammed(Box<(VxcSpec, VxcSpec, bool)>),
    Removed(VxcSpec),
}

impl Step {
    /// What the journal keeps of this step (nothing for what is unchanged).
    pub(super) fn records(&self) -> Vec<Record> {
        match self {
            Step::Key(Change::Unchanged(_))
            | Step::Vxc {
                change: Change::Unchanged(_),
                ..
            } => vec![],
            Step::Key(change) => vec![Record::Key {
                key: change.after().clone(),
            }],
            Step::Vxc { change, key_after } => key_after
                .iter()
                .map(|key| Record::Key { key: key.clone() })
                .chain([Record::Vxc {
                    vxc: change.after().clone(),
                }])
                .collect(),
            Step::Delete(vxc) => vec![Record::VxcDeleted { id: vxc.id.clone() }],
        }
    }
}

fn not_applied(index: usize, failed: usize) -> Failure {
    Failure::new(
        "not_applied",
        format!("op {index} not applied: the atomic batch was refused at op {failed}"),
    )
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    pub(super) async fn batch(
        &mut self,
        ops: Vec<Op>,
        atomic: bool,
        now: OffsetDateTime,
    ) -> Result<BatchAnswer, Failure> {
        if ops.len() > MAX_BATCH {
            return Err(Failure::new(
                "bad_request",
                format!(
                    "a batch holds at most {MAX_BATCH} ops, this one {}",
                    ops.len()
                ),
            ));
        }
        if let Some((i, op)) = ops.iter().enumerate().find(|(_, op)| {
            matches!(
                op,
                Op::Watch { .. } | Op::Sync { .. } | Op::Verify { .. } | Op::Batch { .. }
            ) || (atomic
                && !matches!(
                    op,
                    Op::KeyPut { .. } | Op::VxcPut { .. } | Op::VxcDelete { .. }
                ))
        }) {
            return Err(Failure::new(
                "bad_request",
                format!(
                    "op {i} ({}) cannot be in a{} batch: a batch takes key.put, vxc.put and \
                     vxc.delete{}",
                    op.name(),
                    if atomic { "n atomic" } else { "" },
                    if atomic { "" } else { ", and reads" }
                ),
            )
            .with("op_index", i));
        }
        if !atomic {
            let mut results = Vec::with_capacity(ops.len());
            let mut answer = |outcome: Result<Value, Failure>| -> Result<(), Failure> {
                results.push(op_result(outcome)?);
                Ok(())
            };
            // A run of changes is applied as a group: each op as if alone, one durable write
            // for the run (one `fdatasync` per op made 1000 puts 7 times slower than pipelined).
            let mut ops = ops.into_iter().peekable();
            while let Some(op) = ops.next() {
                if !groupable(&op) {
                    answer(Box::pin(self.dispatch(op)).await)?;
                    continue;
                }
                let mut run = vec![op];
                while run.len() < MAX_GROUP {
                    match ops.next_if(groupable) {
                        Some(op) => run.push(op),
                        None => break,
                    }
                }
                for outcome in Box::pin(self.handle_group(run)).await {
                    answer(outcome)?;
                }
            }
            return Ok(BatchAnswer {
                applied: None,
                atomic: false,
                failed_op: None,
                results,
            });
        }
        self.atomic_batch(&ops, now).await
    }

    async fn atomic_batch(
        &mut self,
        ops: &[Op],
        now: OffsetDateTime,
    ) -> Result<BatchAnswer, Failure> {
        let count = ops.len();
        let refused = |at: usize, failure: &Failure| {
            let results = (0..count)
                .map(|i| {
                    if i == at {
                        op_result(Err(failure.clone()))
                    } else {
                        op_result(Err(not_applied(i, at)))
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(BatchAnswer {
                applied: Some(false),
                atomic: true,
                failed_op: Some(at),
                results,
            })
        };
        // 1. The rules, on a scratch model.
        let state = self.published.load();
        let mut scratch = (*state).clone();
        drop(state);
        let mut steps = Vec::with_capacity(count);
        for (i, op) in ops.iter().enumerate() {
            let step = match op {
                Op::KeyPut { key } => scratch.model.plan_key(key).map(|change| {
                    scratch.model.commit_key(change.clone());
                    Step::Key(change)
                }),
                Op::VxcPut { vxc } => scratch.model.plan_vxc(vxc, now).map(|plan| {
                    let step = Step::Vxc {
                        change: plan.change.clone(),
                        key_after: plan.key_after.clone(),
                    };
                    scratch.model.commit_vxc(plan);
                    step
                }),
                Op::VxcDelete { id } => scratch.model.plan_delete_vxc(id).cloned().map(|vxc| {
                    scratch.model.commit_delete_vxc(&vxc.id);
                    Step::Delete(vxc)
                }),
                _ => return Err(Failure::internal("an atomic batch op outside its kinds")),
            };
            match step {
                Ok(step) => steps.push(step),
                Err(e) => return refused(i, &Failure::from(e)),
            }
        }
        // 2. The kernel, op by op, undone in reverse on the first refusal.
        let mut done: Vec<Done> = Vec::new();
        let mut states: Vec<(crate::domain::VxcId, Option<VxcState>)> = Vec::new();
        let mut i = 0;
        while i < steps.len() {
            // A run of deletes takes the kernel's bulk path: their links go in one deletion.
            let run = steps[i..]
                .iter()
                .take_while(|s| matches!(s, Step::Delete(_)))
                .count();
            if run >= 2 {
                let mut specs = Vec::with_capacity(run);
                for step in &steps[i..i + run] {
                    if let Step::Delete(vxc) = step {
                        let was_up =
                            self.published.load().states.get(&vxc.id) == Some(&VxcState::Up);
                        specs.extend(scratch.spec(vxc).map(|spec| (spec, was_up)));
                        states.push((vxc.id.clone(), None));
                    }
                }
                let all: Vec<VxcSpec> = specs.iter().map(|(spec, _)| spec.clone()).collect();
                if let Err(e) = self.dataplane.remove_many(&all).await {
                    self.undo_batch(done).await;
                    return refused(i, &Failure::dataplane(e.to_string()));
                }
                done.extend(
                    specs
                        .into_iter()
                        .filter(|(_, was_up)| *was_up)
                        .map(|(spec, _)| Done::Removed(spec)),
                );
                i += run;
                continue;
            }
            // A run of VXCs made from nothing: programmed at once (their objects are disjoint).
            let creations: Vec<(crate::domain::VxcId, VxcSpec)> = steps[i..]
                .iter()
                .map_while(|s| match s {
                    Step::Vxc {
                        change: Change::Created(vxc),
                        ..
                    } => Some((vxc.id.clone(), scratch.spec(vxc)?)),
                    _ => None,
                })
                .take(PROGRAM_IN_FLIGHT)
                .collect();
            if creations.len() >= 2 {
                let (ids, specs): (Vec<_>, Vec<_>) = creations.into_iter().unzip();
                let run = ids.len();
                let programmed = self.program_many(specs, &mut done).await;
                // The first refused in the batch's order is the one named.
                if let Some((at, Err(failure))) =
                    programmed.iter().enumerate().find(|(_, p)| p.is_err())
                {
                    self.undo_batch(done).await;
                    return refused(i + at, failure);
                }
                states.extend(
                    ids.into_iter()
                        .zip(programmed.into_iter().flatten().map(Some)),
                );
                i += run;
                continue;
            }
            let step = &steps[i];
            let outcome = match step {
                Step::Key(_) => Ok(()),
                Step::Vxc {
                    change: Change::Unchanged(_),
                    ..
                } => Ok(()),
                Step::Vxc {
                    change: Change::Created(vxc),
                    ..
                } => match scratch.spec(vxc) {
                    None => {
                        states.push((vxc.id.clone(), Some(Self::unconfigured(vxc))));
                        Ok(())
                    }
                    Some(spec) => match self.program(&spec).await {
                        Ok(state) => {
                            if state == VxcState::Up {
                                done.push(Done::Created(spec));
                            }
                            states.push((vxc.id.clone(), Some(state)));
                            Ok(())
                        }
                        Err(f) => Err(f),
                    },
                },
                Step::Vxc {
                    change: Change::Updated { before, after },
                    ..
                } => {
                    let up = self.published.load().states.get(&after.id) == Some(&VxcState::Up);
                    match (up, scratch.spec(before), scratch.spec(after)) {
                        (true, Some(old), Some(new)) => {
                            let moved = before.a_end.vlan != after.a_end.vlan;
                            match self.reprogram(&old, &new, moved).await {
                                Ok(()) => {
                                    done.push(Done::Reprogrammed(Box::new((old, new, moved))));
                                    Ok(())
                                }
                                Err(f) => Err(f),
                            }
                        }
                        _ => Ok(()),
                    }
                }
                Step::Delete(vxc) => match scratch.spec(vxc) {
                    None => {
                        states.push((vxc.id.clone(), None));
                        Ok(())
                    }
                    Some(spec) => match self.dataplane.remove(&spec).await {
                        Ok(()) => {
                            if self.published.load().states.get(&vxc.id) == Some(&VxcState::Up) {
                                done.push(Done::Removed(spec));
                            }
                            states.push((vxc.id.clone(), None));
                            Ok(())
                        }
                        Err(e) => Err(Failure::dataplane(e.to_string())),
                    },
                },
            };
            if let Err(failure) = outcome {
                self.undo_batch(done).await;
                return refused(i, &failure);
            }
            i += 1;
        }
        // 3. One journal entry for the whole batch.
        let records: Vec<Record> = steps.iter().flat_map(Step::records).collect();
        if let Err(failure) = self.persist(&records) {
            self.undo_batch(done).await;
            return Err(failure);
        }
        // 4. Published: the scratch model is what was checked, programmed and written.
        let model = scratch.model;
        self.published.edit(|s| {
            s.model = model;
            for (id, state) in states {
                match state {
                    Some(state) => s.states.insert(id, state),
                    None => s.states.remove(&id),
                };
            }
        });
        let state = self.published.load();
        let mut results = Vec::with_capacity(count);
        let mut events = Vec::new();
        for step in &steps {
            let result = match step {
                Step::Key(change) => {
                    if !matches!(change, Change::Unchanged(_)) {
                        events.push(EventKind::KeyStored {
                            key: change.after().id.to_string(),
                        });
                    }
                    json!({"key": state.key_view(change.after(), now)})
                }
                Step::Vxc { change, key_after } => {
                    let vxc = change.after();
                    match change {
                        Change::Created(_) => {
                            events.push(EventKind::VxcCreated {
                                vxc: vxc.id.to_string(),
                            });
                            if let Some(key) = key_after.as_ref().filter(|k| k.single_use) {
                                events.push(EventKind::KeyUsed {
                                    key: key.id.to_string(),
                                    vxc: vxc.id.to_string(),
                                });
                            }
                        }
                        Change::Updated { before, after } => events.push(EventKind::VxcUpdated {
                            vxc: vxc.id.to_string(),
                            changed: super::txn::changed_fields(before, after),
                        }),
                        Change::Unchanged(_) => {}
                    }
                    json!({"vxc": state.vxc_view(vxc, None)})
                }
                Step::Delete(vxc) => {
                    events.push(EventKind::VxcDeleted {
                        vxc: vxc.id.to_string(),
                    });
                    json!({"deleted": vxc.id})
                }
            };
            results.push(op_result(Ok(result))?);
        }
        drop(state);
        for step in &steps {
            match step {
                Step::Vxc { change, .. } if !matches!(change, Change::Unchanged(_)) => {
                    self.inspect_changed(change.after())
                }
                Step::Delete(vxc) => self.inspect_changed(vxc),
                _ => {}
            }
        }
        for event in events {
            self.events.emit(event);
        }
        log::info!(
            "atomic batch of {count} ops applied ({} records, one write)",
            records.len()
        );
        Ok(BatchAnswer {
            applied: Some(true),
            atomic: true,
            failed_op: None,
            results,
        })
    }

    /// Takes back the kernel work of an atomic batch, last first. What cannot be taken back is
    /// left to the reconciler (the state does not hold it, so it is an orphan or drift).
    pub(super) async fn undo_batch(&self, done: Vec<Done>) {
        for step in done.into_iter().rev() {
            let (id, result) = match step {
                Done::Created(spec) => (
                    spec.id.clone(),
                    self.dataplane
                        .remove(&spec)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                Done::Reprogrammed(change) => {
                    let (old, new, moved) = *change;
                    (
                        new.id.clone(),
                        self.reprogram(&new, &old, moved)
                            .await
                            .map_err(|f| f.message),
                    )
                }
                Done::Removed(spec) => (
                    spec.id.clone(),
                    self.dataplane
                        .apply(&spec)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                ),
            };
            if let Err(e) = result {
                log::error!(vxc = id.as_str(); "undoing an atomic batch's step for VXC {id} failed, left to the reconciler: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_is_written_as_the_value_it_replaces_byte_for_byte() {
        let results = vec![
            op_result(Ok(json!({"deleted": "v-1"}))).unwrap(),
            op_result(Err(Failure::new(
                "rule",
                "VLAN 200 on port syd-1 is in use",
            )))
            .unwrap(),
            op_result(Err(not_applied(2, 1))).unwrap(),
        ];
        let answer = BatchAnswer {
            applied: Some(false),
            atomic: true,
            failed_op: Some(1),
            results,
        };
        let text = serde_json::to_string(&answer).unwrap();
        let before = json!({"atomic": true, "applied": false, "failed_op": 1, "results": [
            {"ok": true, "result": {"deleted": "v-1"}},
            {"ok": false, "error": {"code": "rule", "message": "VLAN 200 on port syd-1 is in use"}},
            {"ok": false, "error": {"code": "not_applied",
                "message": "op 2 not applied: the atomic batch was refused at op 1"}},
        ]});
        assert_eq!(text, before.to_string());
        assert_eq!(answer.into_value().unwrap(), before);
        let open = BatchAnswer {
            applied: None,
            atomic: false,
            failed_op: None,
            results: vec![],
        };
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            json!({"atomic": false, "results": []}).to_string()
        );
    }
}
