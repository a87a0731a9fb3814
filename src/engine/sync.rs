//! `sync`: the control plane's complete desired state, converged in one request.
//!
//! Every object is first checked against a scratch copy of the model, in the order it will be
//! applied (keys, then deletions of the VXCs absent from the set, which free their VLANs, then
//! the VXCs of the set), each as if it came alone: the first rule it breaks refuses the whole
//! sync, naming the object, and nothing has changed. Only then is it applied, through the same
//! transactions as `key.put`, `vxc.delete` and `vxc.put` (each in the kernel and on disk before
//! the next), and the generation recorded last. An object already as asked is not touched: the
//! same sync again changes no kernel object and writes only its generation.
//!
//! A kernel refusal in the middle (the rules cannot foresee it) stops the sync there: what was
//! applied before it stays (each step is whole and durable), the generation is not recorded, and
//! the answer names the step. Sending the same sync again finishes it.

use std::collections::{BTreeSet, HashSet};

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{Engine, EventKind, Journal, Kernel, Record};
use crate::domain::{Change, KeyRequest, RuleError, VxcRequest};
use crate::protocol::Failure;

/// The ids of what a sync does, by kind of change.
#[derive(Default)]
struct Outcome {
    keys_created: Vec<String>,
    keys_updated: Vec<String>,
    keys_unchanged: Vec<String>,
    keys_left: Vec<String>,
    vxcs_created: Vec<String>,
    vxcs_updated: Vec<String>,
    vxcs_deleted: Vec<String>,
    vxcs_unchanged: Vec<String>,
}

impl Outcome {
    fn answer(&self, generation: u64, dry_run: bool) -> Value {
        json!({
            "generation": generation,
            "dry_run": dry_run,
            "keys": {
                "created": self.keys_created, "updated": self.keys_updated,
                "unchanged": self.keys_unchanged, "left": self.keys_left,
            },
            "vxcs": {
                "created": self.vxcs_created, "updated": self.vxcs_updated,
                "deleted": self.vxcs_deleted, "unchanged": self.vxcs_unchanged,
            },
        })
    }
}

/// A rule broken by one object of the sync: its own code, the object named first.
fn refused(what: &str, id: &str, e: RuleError) -> Failure {
    let mut failure = Failure::from(e);
    failure.message = format!(
        "sync refused, nothing changed: {what} {id}: {}",
        failure.message
    );
    failure.with("object", format!("{what} {id}"))
}

fn duplicates<'a>(what: &str, ids: impl Iterator<Item = &'a str>) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(Failure::new(
                "bad_request",
                format!("sync refused, nothing changed: {what} {id} appears twice in the set"),
            )
            .with("object", format!("{what} {id}")));
        }
    }
    Ok(())
}

impl<K: Kernel, J: Journal> Engine<K, J> {
    pub(super) async fn sync(
        &mut self,
        generation: u64,
        keys: &[KeyRequest],
        vxcs: &[VxcRequest],
        dry_run: bool,
        now: OffsetDateTime,
    ) -> Result<Value, Failure> {
        let outcome = self.plan_sync(generation, keys, vxcs, now)?;
        if dry_run {
            return Ok(outcome.answer(generation, true));
        }
        let step = |what: &str, id: &str, f: Failure| -> Failure {
            let mut f = f;
            f.message = format!(
                "sync of generation {generation} stopped at {what} {id} (the steps before it are \
                 applied; send the sync again to finish it): {}",
                f.message
            );
            f.with("object", format!("{what} {id}"))
        };
        let changed_keys: BTreeSet<&str> = outcome
            .keys_created
            .iter()
            .chain(&outcome.keys_updated)
            .map(String::as_str)
            .collect();
        for key in keys
            .iter()
            .filter(|k| changed_keys.contains(k.key.as_str()))
        {
            self.put_key(key, now)
                .map_err(|f| step("key", &key.key, f))?;
        }
        for id in &outcome.vxcs_deleted {
            self.delete_vxc(id).await.map_err(|f| step("VXC", id, f))?;
        }
        let changed_vxcs: BTreeSet<&str> = outcome
            .vxcs_created
            .iter()
            .chain(&outcome.vxcs_updated)
            .map(String::as_str)
            .collect();
        for vxc in vxcs.iter().filter(|v| changed_vxcs.contains(v.id.as_str())) {
            self.put_vxc(vxc, now)
                .await
                .map_err(|f| step("VXC", &vxc.id, f))?;
        }
        if self.published.load().generation != Some(generation) {
            self.persist(&[Record::Generation { generation }])
                .map_err(|f| step("generation", &generation.to_string(), f))?;
            self.published.edit(|s| s.generation = Some(generation));
        }
        log::info!(
            generation = generation;
            "sync generation {generation} applied: VXCs {} created, {} updated, {} deleted, {} unchanged",
            outcome.vxcs_created.len(), outcome.vxcs_updated.len(),
            outcome.vxcs_deleted.len(), outcome.vxcs_unchanged.len()
        );
        self.events
            .emit(EventKind::GenerationApplied { generation });
        Ok(outcome.answer(generation, false))
    }

    /// Checks the whole sync on a scratch model; says what it would do.
    fn plan_sync(
        &self,
        generation: u64,
        keys: &[KeyRequest],
        vxcs: &[VxcRequest],
        now: OffsetDateTime,
    ) -> Result<Outcome, Failure> {
        let state = self.published.load();
        if let Some(applied) = state.generation.filter(|applied| generation < *applied) {
            return Err(Failure::new(
                "stale_generation",
                format!(
                    "sync generation {generation} is older than generation {applied}, already \
                     applied; nothing changed"
                ),
            )
            .with("applied", applied));
        }
        duplicates("key", keys.iter().map(|k| k.key.as_str()))?;
        duplicates("VXC", vxcs.iter().map(|v| v.id.as_str()))?;
        let mut scratch = state.model.clone();
        let mut out = Outcome::default();
        for key in keys {
            let change = scratch
                .plan_key(key)
                .map_err(|e| refused("key", &key.key, e))?;
            let bucket = match &change {
                Change::Created(_) => &mut out.keys_created,
                Change::Updated { .. } => &mut out.keys_updated,
                Change::Unchanged(_) => &mut out.keys_unchanged,
            };
            bucket.push(key.key.clone());
            scratch.commit_key(change);
        }
        let in_set: HashSet<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        out.keys_left = state
            .model
            .keys()
            .map(|k| k.id.to_string())
            .filter(|id| !in_set.contains(id.as_str()))
            .collect();
        let wanted: HashSet<&str> = vxcs.iter().map(|v| v.id.as_str()).collect();
        for vxc in state.model.vxcs() {
            if !wanted.contains(vxc.id.as_str()) {
                scratch.commit_delete_vxc(&vxc.id);
                out.vxcs_deleted.push(vxc.id.to_string());
            }
        }
        for vxc in vxcs {
            let plan = scratch
                .plan_vxc(vxc, now)
                .map_err(|e| refused("VXC", &vxc.id, e))?;
            let bucket = match &plan.change {
                Change::Created(_) => &mut out.vxcs_created,
                Change::Updated { .. } => &mut out.vxcs_updated,
                Change::Unchanged(_) => &mut out.vxcs_unchanged,
            };
            bucket.push(vxc.id.clone());
            scratch.commit_vxc(plan);
        }
        Ok(out)
    }
}
