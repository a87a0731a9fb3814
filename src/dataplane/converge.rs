//! Full convergence (start, periodic, drift): one complete read, orphans removed, every VXC that
//! is not right applied with bounded pipelining, all verified with one more read; and keeping the
//! host's own IPv6 off the port interfaces.

use std::collections::HashMap;

use futures::stream::{self, StreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
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

    /// Keeps the host's own traffic off every port interface `obs` shows: IPv6 address generation
    /// off (so a flap makes no new link-local address) and the link-local addresses they already
    /// have removed (with them go the MLD reports, neighbour and router solicitations the host
    /// would send untagged to the customer). Only link-local (fe80::/10) addresses are touched: an
    /// operator's other addresses, if any, are theirs. Returns what changed per port (ports
    /// already quiet are left out), and the failures.
    ///
    /// The addresses are read with one IPv6 dump for all ports: one dump per port read every
    /// address of the host once per port (4,000 ports: 4,000 dumps of 8,000 links' addresses,
    /// seconds of a start).
    pub async fn quiet_ports(&self, obs: &Observed) -> PortsQuieted {
        let ports: Vec<&ObservedLink> = self
            .port_interfaces
            .iter()
            .filter_map(|port| obs.link_by_name(port))
            .collect();
        let mut done: HashMap<u32, Vec<String>> = HashMap::new();
        let mut failed: HashMap<u32, DataplaneError> = HashMap::new();
        let width = self.cfg.max_in_flight.max(1);
        let modes: Vec<(u32, Result<bool, DataplaneError>)> = stream::iter(
            ports
                .iter()
                .filter(|l| l.addr_gen_mode != Some(plan::ADDR_GEN_MODE_NONE))
                .map(|l| async move { (l.index, self.addr_gen_off(l).await) })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(width)
        .collect()
        .await;
        // Ports without IPv6 (EAFNOSUPPORT) have no addresses the host could send from.
        let mut without_ipv6 = std::collections::HashSet::new();
        for (index, r) in modes {
            match r {
                Ok(true) => done
                    .entry(index)
                    .or_default()
                    .push("IPv6 addr_gen_mode none".to_owned()),
                Ok(false) => {
                    without_ipv6.insert(index);
                }
                Err(e) => {
                    failed.insert(index, e);
                }
            }
        }
        let checked: Vec<&ObservedLink> = ports
            .iter()
            .copied()
            .filter(|l| !failed.contains_key(&l.index) && !without_ipv6.contains(&l.index))
            .collect();
        if !checked.is_empty() {
            match self.port_link_locals(&checked).await {
                Ok(found) => {
                    for (index, shown, address) in found {
                        let label = format!(
                            "port interface {}",
                            checked
                                .iter()
                                .find(|l| l.index == index)
                                .map_or("?", |l| &l.name)
                        );
                        match self.ack(RouteNetlinkMessage::DelAddress(address), 0).await {
                            Ok(()) => done
                                .entry(index)
                                .or_default()
                                .push(format!("link-local {shown} removed")),
                            Err(e) => {
                                let e = kernel_err(&format!("removing {shown} from"), &label, e);
                                failed.entry(index).or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    for l in &checked {
                        failed.entry(l.index).or_insert_with(|| e.clone());
                    }
                }
            }
        }
        let mut quieted = Vec::new();
        let mut failures = Vec::new();
        for l in ports {
            if let Some(e) = failed.remove(&l.index) {
                failures.push((l.name.clone(), e));
            } else if let Some(what) = done.remove(&l.index) {
                quieted.push((l.name.clone(), what));
            }
        }
        (quieted, failures)
    }

    /// Switches IPv6 address generation off on a port interface: `Ok(false)` when it has no IPv6
    /// (none in this namespace or on this link).
    async fn addr_gen_off(&self, link: &ObservedLink) -> Result<bool, DataplaneError> {
        let mut msg = link_msg(link.index);
        msg.attributes = vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )])];
        match self.set_link(&link.name, msg).await {
            Ok(()) => Ok(true),
            Err(ReqError::Kernel(e)) if e.0 == libc::EAFNOSUPPORT => Ok(false),
            Err(e) => Err(kernel_err(
                "switching IPv6 address generation off on",
                &format!("port interface {}", link.name),
                e,
            )),
        }
    }

    /// The link-local IPv6 addresses on these links (one dump of the host's IPv6 addresses):
    /// (ifindex, address as shown, the message that removes it).
    async fn port_link_locals(
        &self,
        links: &[&ObservedLink],
    ) -> Result<Vec<(u32, String, AddressMessage)>, DataplaneError> {
        let indices: std::collections::HashSet<u32> = links.iter().map(|l| l.index).collect();
        let mut ask = AddressMessage::default();
        ask.header.family = AddressFamily::Inet6;
        self.dump(
            RouteNetlinkMessage::GetAddress(ask),
            "IPv6 addresses",
            |m| match m {
                RouteNetlinkMessage::NewAddress(a) if indices.contains(&a.header.index) => {
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    (ip.segments()[0] & 0xffc0 == 0xfe80)
                        .then(|| (a.header.index, ip.to_string(), a))
                }
                _ => None,
            },
        )
        .await
    }
}
