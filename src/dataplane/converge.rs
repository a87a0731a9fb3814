//! Full convergence (start, periodic, drift): one complete read, orphans removed, every VXC that
//! is not right applied with bounded pipelining, all verified with one more read; and keeping the
//! host's own IPv6 off the port interfaces.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use netlink_packet_route::RouteNetlinkMessage;
use std::net::IpAddr;

use super::nl::ReqError;
use super::plan::{self, Orphan, VxcStatus};
use super::{DataplaneError, Observed, ObservedLink, VxcSpec};

/// What quieting the port interfaces changed, per port, and where it failed.
pub type PortsQuieted = (Vec<(String, Vec<String>)>, Vec<(String, DataplaneError)>);

use super::apply::*;
use super::conn::*;
use super::msg::*;
use super::report::*;
use super::undo::*;

/// How often a long convergence logs how far it got.
pub(super) const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Dataplane {
    /// Full convergence: observe, plan, remove orphans, apply every VXC that is not right
    /// (one failing VXC does not stop the others), verify with one more read.
    pub async fn converge(&self, desired: &[VxcSpec]) -> Result<ConvergeReport, DataplaneError> {
        let obs = self.observe().await?;
        let plan = plan::plan(desired, &obs);
        let width = self.cfg.max_in_flight.max(1);
        let orphan_results: Vec<(Orphan, Result<(), DataplaneError>)> = stream::iter(
            plan.orphans
                .iter()
                .cloned()
                .map(|o| {
                    let obs = &obs;
                    async move {
                        let r = self.remove_orphan(obs, &o).await;
                        (o, r)
                    }
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(width)
        .collect()
        .await;
        let mut report = ConvergeReport::default();
        for (o, r) in orphan_results {
            match r {
                Ok(()) => report.orphans_removed.push(o),
                Err(e) => report.orphan_failures.push((o, e)),
            }
        }
        (report.ports_quieted, report.port_failures) = self.quiet_ports(&obs).await;
        let specs: HashMap<&str, &VxcSpec> = desired.iter().map(|v| (v.id.as_str(), v)).collect();
        let mut to_apply = Vec::new();
        let mut outcomes: HashMap<String, VxcOutcome> = HashMap::new();
        for p in &plan.vxcs {
            match &p.status {
                VxcStatus::Ok => {
                    outcomes.insert(p.id.clone(), VxcOutcome::Ok);
                }
                VxcStatus::Pending { missing } => {
                    outcomes.insert(p.id.clone(), VxcOutcome::Pending(missing.clone()));
                }
                VxcStatus::Invalid(reason) => {
                    outcomes.insert(
                        p.id.clone(),
                        VxcOutcome::Failed(DataplaneError::InvalidSpec {
                            id: p.id.clone(),
                            reason: reason.clone(),
                        }),
                    );
                }
                VxcStatus::Drift(_) => {
                    if let Some(spec) = specs.get(p.id.as_str()) {
                        to_apply.push(*spec);
                    }
                }
            }
        }
        let total = to_apply.len();
        let mut pending = stream::iter(
            to_apply
                .into_iter()
                .map(|spec| {
                    let obs = &obs;
                    async move { (spec.id.clone(), self.apply_from(spec, obs).await) }
                })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(width);
        // Long work shows progress: a start after a reboot rebuilds every VXC.
        let mut applied: Vec<(String, Result<Journal, DataplaneError>)> = Vec::with_capacity(total);
        let mut last_report = std::time::Instant::now();
        while let Some(done) = pending.next().await {
            applied.push(done);
            if last_report.elapsed() >= PROGRESS_EVERY && applied.len() < total {
                log::info!("converge: {}/{total} VXCs applied", applied.len());
                last_report = std::time::Instant::now();
            }
        }
        let mut repaired = Vec::new();
        for (id, r) in applied {
            match r {
                Ok(j) => repaired.push((id, j.changes)),
                Err(e) => {
                    outcomes.insert(id, VxcOutcome::Failed(e));
                }
            }
        }
        if !repaired.is_empty() {
            let after = self.observe().await?;
            for (id, changes) in repaired {
                let Some(spec) = specs.get(id.as_str()) else {
                    continue;
                };
                let outcome = match vxc_status_ok(spec, &after) {
                    Ok(true) => VxcOutcome::Repaired(ApplyReport {
                        vxc_id: id.clone(),
                        changes,
                    }),
                    Ok(false) => VxcOutcome::Failed(verify_error(spec, &after)),
                    Err(e) => VxcOutcome::Failed(e),
                };
                outcomes.insert(id, outcome);
            }
        }
        for v in desired {
            if let Some(o) = outcomes.remove(&v.id) {
                report.vxcs.push((v.id.clone(), o));
            }
        }
        Ok(report)
    }

    /// [`Dataplane::quiet_port`] on every port interface `obs` shows: what each one changed
    /// (those already quiet are left out), and the failures.
    pub async fn quiet_ports(&self, obs: &Observed) -> PortsQuieted {
        let mut quieted = Vec::new();
        let mut failures = Vec::new();
        for port in &self.port_interfaces {
            let Some(link) = obs.link_by_name(port) else {
                continue;
            };
            match self.quiet_port(link).await {
                Ok(done) if done.is_empty() => {}
                Ok(done) => quieted.push((port.clone(), done)),
                Err(e) => failures.push((port.clone(), e)),
            }
        }
        (quieted, failures)
    }

    /// Keeps the host's own traffic off a customer port: IPv6 address generation off (so a flap
    /// makes no new link-local address) and the link-local addresses it already has removed (with
    /// them go the MLD reports, neighbour and router solicitations the host would send untagged to
    /// the customer). Only link-local (fe80::/10) addresses are touched: an operator's other
    /// addresses, if any, are theirs. Returns what it changed (nothing when already quiet).
    pub async fn quiet_port(&self, link: &ObservedLink) -> Result<Vec<String>, DataplaneError> {
        let label = format!("port interface {}", link.name);
        let mut done = Vec::new();
        if link.addr_gen_mode != Some(plan::ADDR_GEN_MODE_NONE) {
            let mut msg = link_msg(link.index);
            msg.attributes = vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )])];
            match self.ack(RouteNetlinkMessage::SetLink(msg), 0).await {
                Ok(()) => {
                    // Its notification then shows the port as vxcd knows it: not drift.
                    self.own.amend(&link.name, |l| {
                        l.addr_gen_mode = Some(plan::ADDR_GEN_MODE_NONE)
                    });
                    done.push("IPv6 addr_gen_mode none".to_owned())
                }
                // No IPv6 in this namespace or on this link: nothing the host could send.
                Err(ReqError::Kernel(e)) if e.0 == libc::EAFNOSUPPORT => return Ok(done),
                Err(e) => {
                    return Err(kernel_err(
                        "switching IPv6 address generation off on",
                        &label,
                        e,
                    ))
                }
            }
        }
        let addresses = self
            .dump(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                "addresses",
                |m| match m {
                    RouteNetlinkMessage::NewAddress(a) => Some(a),
                    _ => None,
                },
            )
            .await?;
        for a in addresses {
            let link_local = a.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Address(IpAddr::V6(ip))
                    if ip.segments()[0] & 0xffc0 == 0xfe80)
            });
            if a.header.index != link.index || !link_local {
                continue;
            }
            let shown = a
                .attributes
                .iter()
                .find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(ip.to_string()),
                    _ => None,
                })
                .unwrap_or_default();
            self.ack(RouteNetlinkMessage::DelAddress(a), 0)
                .await
                .map_err(|e| kernel_err(&format!("removing {shown} from"), &label, e))?;
            done.push(format!("link-local {shown} removed"));
        }
        Ok(done)
    }
}
