//! Converging one VXC atomically: make each end right (link, TBF, ingress qdisc), join them with
//! the pipe filters, read back, and undo every step on a failure.

use super::plan::{self, spec_problem, Discrepancy, VxcStatus};
use super::{end_interface_name, DataplaneError, Observed, Side, VxcSpec};

use super::conn::*;
use super::report::*;
use super::undo::*;

/// Whether a VXC is right in `obs`; errors for what makes it impossible.
pub(super) fn vxc_status_ok(vxc: &VxcSpec, obs: &Observed) -> Result<bool, DataplaneError> {
    match plan::vxc_status(vxc, obs) {
        VxcStatus::Ok => Ok(true),
        VxcStatus::Pending { missing } => {
            let (port, interface) = missing.into_iter().next().unwrap_or_default();
            Err(DataplaneError::PortMissing { port, interface })
        }
        VxcStatus::Invalid(reason) => Err(DataplaneError::InvalidSpec {
            id: vxc.id.clone(),
            reason,
        }),
        VxcStatus::Drift(d) => {
            if let Some(Discrepancy::Foreign { object, detail }) = d
                .iter()
                .find(|x| matches!(x, Discrepancy::Foreign { .. }))
                .cloned()
            {
                return Err(DataplaneError::Foreign { object, detail });
            }
            Ok(false)
        }
    }
}

/// Turns the first discrepancy of a VXC into a verification error.
pub(super) fn verify_error(vxc: &VxcSpec, obs: &Observed) -> DataplaneError {
    let first = match plan::vxc_status(vxc, obs) {
        VxcStatus::Drift(d) => d.into_iter().next(),
        _ => None,
    };
    match first {
        Some(x) => match x {
            Discrepancy::Missing { object } => DataplaneError::Verify {
                object,
                field: "existence".into(),
                expected: "present".into(),
                observed: "absent".into(),
            },
            Discrepancy::Differs {
                object,
                field,
                expected,
                observed,
            } => DataplaneError::Verify {
                object,
                field,
                expected,
                observed,
            },
            Discrepancy::Foreign { object, detail } => DataplaneError::Foreign { object, detail },
        },
        None => DataplaneError::Verify {
            object: format!("VXC {}", vxc.id),
            field: "status".into(),
            expected: "ok".into(),
            observed: "changed while verifying".into(),
        },
    }
}

impl Dataplane {
    /// Converges one VXC atomically and verifies it by reading back.
    pub async fn apply(&self, vxc: &VxcSpec) -> Result<ApplyReport, DataplaneError> {
        if let Some(reason) = spec_problem(vxc) {
            return Err(DataplaneError::InvalidSpec {
                id: vxc.id.clone(),
                reason,
            });
        }
        let obs = self.observe_vxc(vxc).await?;
        if vxc_status_ok(vxc, &obs)? {
            // The read just made is the verification: nothing to send.
            return Ok(ApplyReport {
                vxc_id: vxc.id.clone(),
                changes: vec![],
            });
        }
        let journal = self.apply_from(vxc, &obs).await?;
        if !journal.changes.is_empty()
            && journal
                .changes
                .iter()
                .all(|c| c.change == ObjectChange::Created)
        {
            // Every object made from nothing, each creation exclusive and acknowledged: the
            // acknowledgements are the proof, a read would only repeat them. Whatever was changed
            // in place (or taken from a holder) is read back below.
            return Ok(ApplyReport {
                vxc_id: vxc.id.clone(),
                changes: journal.changes,
            });
        }
        let verified = match self.observe_vxc(vxc).await {
            Ok(after) => vxc_status_ok(vxc, &after).and_then(|ok| {
                if ok {
                    Ok(())
                } else {
                    Err(verify_error(vxc, &after))
                }
            }),
            Err(e) => Err(e),
        };
        match verified {
            Ok(()) => Ok(ApplyReport {
                vxc_id: vxc.id.clone(),
                changes: journal.changes,
            }),
            Err(e) => Err(self.rollback(e, journal.undo).await),
        }
    }

    /// Applies from a snapshot; on failure undoes its own steps and returns the error.
    pub(super) async fn apply_from(
        &self,
        vxc: &VxcSpec,
        obs: &Observed,
    ) -> Result<Journal, DataplaneError> {
        let mut journal = Journal::default();
        match self.apply_steps(vxc, obs, &mut journal).await {
            Ok(()) => Ok(journal),
            Err(e) => Err(self.rollback(e, journal.undo).await),
        }
    }

    pub(super) async fn apply_steps(
        &self,
        vxc: &VxcSpec,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let mut ends = Vec::with_capacity(2);
        for side in [Side::A, Side::B] {
            ends.push(match &vxc.end(side).tunnel {
                Some(t) => self.ensure_tunnel(vxc, side, t, obs, j).await?,
                None => self.ensure_end(vxc, side, obs, j).await?,
            });
        }
        if vxc.shutdown {
            return self.unjoin(vxc, &ends, obs, j).await;
        }
        for (i, (index, fresh)) in ends.iter().enumerate() {
            let target = ends[1 - i].0;
            let name = end_interface_name(
                &vxc.end([Side::A, Side::B][i]).interface,
                vxc.end([Side::A, Side::B][i]).vlan,
            );
            let existing = if *fresh {
                None
            } else {
                obs.filters.get(index).and_then(|f| f.ours.clone())
            };
            self.ensure_filter(*index, &name, target, existing, obs, j)
                .await?;
        }
        Ok(())
    }

    /// A shut-down VXC: both ends stay, shaped, but their pipe filters go, so no frame
    /// crosses (a frame entering an end finds no redirect and no address: it is dropped).
    pub(super) async fn unjoin(
        &self,
        vxc: &VxcSpec,
        ends: &[(u32, bool)],
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        for (i, (index, fresh)) in ends.iter().enumerate() {
            if *fresh {
                continue;
            }
            let Some(filter) = obs.filters.get(index).and_then(|f| f.ours.clone()) else {
                continue;
            };
            let end = vxc.end([Side::A, Side::B][i]);
            let name = end_interface_name(&end.interface, end.vlan);
            self.delete_filter(*index, &name).await?;
            let undo = filter
                .redirect_to
                .filter(|_| filter.match_all)
                .map(|target| Undo::CreateFilter {
                    index: *index,
                    name: name.clone(),
                    target,
                });
            j.record(
                format!("pipe filter on {name}"),
                ObjectChange::Deleted,
                undo,
            );
        }
        Ok(())
    }
}
