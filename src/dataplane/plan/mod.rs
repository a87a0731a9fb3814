//! Pure comparison of desired VXCs with an observed kernel snapshot.

use std::collections::HashSet;
use std::fmt;

use super::tbf::{burst_matches, TbfParams};
use super::{
    end_interface_name, owner_alias, tunnel_interface_name, Observed, ObservedLink, Side, VxcSpec,
};

mod tunnel;

use tunnel::tunnel_discrepancies;
pub(crate) use tunnel::{tunnel_claimable, tunnel_fixed_fields};

/// `addr_gen_mode none` (IN6_ADDR_GEN_MODE_NONE).
pub const ADDR_GEN_MODE_NONE: u8 = 1;

/// One way in which the kernel differs from a VXC's desired objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discrepancy {
    /// The object does not exist.
    Missing { object: String },
    /// The object exists with a field that differs.
    Differs {
        object: String,
        field: String,
        expected: String,
        observed: String,
    },
    /// A foreign object is in the way.
    Foreign { object: String, detail: String },
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { object } => write!(f, "{object}: missing"),
            Self::Differs {
                object,
                field,
                expected,
                observed,
            } => {
                write!(
                    f,
                    "{object}: {field} expected {expected}, observed {observed}"
                )
            }
            Self::Foreign { object, detail } => write!(f, "{object}: not owned by vxcd ({detail})"),
        }
    }
}

/// State of one desired VXC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxcStatus {
    Ok,
    /// Some port interfaces are absent: `(port, interface)`.
    Pending {
        missing: Vec<(String, String)>,
    },
    /// Objects missing, differing, or blocked by foreign objects.
    Drift(Vec<Discrepancy>),
    /// The spec cannot be realised.
    Invalid(String),
}

/// One VXC's plan entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxcPlan {
    pub id: String,
    pub status: VxcStatus,
}

/// A vxcd-owned object that no desired VXC accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphan {
    /// An owned link (VLAN subinterface): deleting it deletes its qdiscs and filters.
    Link {
        index: u32,
        name: String,
        alias: String,
    },
    /// vxcd's root TBF on an interface that is no desired end.
    Tbf { index: u32, name: String },
    /// vxcd's pipe filter; `remove_ingress` when no other filter shares the ingress qdisc.
    Filter {
        index: u32,
        name: String,
        remove_ingress: bool,
    },
}

impl fmt::Display for Orphan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Link { name, alias, .. } if alias.is_empty() => {
                write!(f, "link {name} (half-made: owner group, no alias yet)")
            }
            Self::Link { name, alias, .. } => write!(f, "link {name} ({alias})"),
            Self::Tbf { name, .. } => write!(f, "TBF {:x}: on {name}", super::TBF_HANDLE_MAJOR),
            Self::Filter { name, .. } => write!(f, "pipe filter on {name}"),
        }
    }
}

/// Per-VXC status and orphans.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub vxcs: Vec<VxcPlan>,
    pub orphans: Vec<Orphan>,
}

impl Plan {
    pub fn status(&self, id: &str) -> Option<&VxcStatus> {
        self.vxcs.iter().find(|v| v.id == id).map(|v| &v.status)
    }
}

/// Why a spec cannot be realised, if it cannot.
pub(crate) fn spec_problem(vxc: &VxcSpec) -> Option<String> {
    if vxc.rate_mbps == 0 {
        return Some("rate 0 Mbps would drop every frame".into());
    }
    for side in [Side::A, Side::B] {
        let end = vxc.end(side);
        if end.interface.is_empty() || end.interface.len() > 15 {
            return Some(format!(
                "end {}: interface name {:?} is not a valid kernel name",
                side.as_str(),
                end.interface
            ));
        }
        if let Some(v) = end.vlan {
            if !(1..=4094).contains(&v) {
                return Some(format!("end {}: VLAN {v} outside 1..=4094", side.as_str()));
            }
        }
        if let Some(t) = &end.tunnel {
            if end.vlan.is_some() || end.interface != tunnel_interface_name(t.vni) {
                return Some(format!(
                    "end {}: a tunnel end is the untagged device {}",
                    side.as_str(),
                    tunnel_interface_name(t.vni)
                ));
            }
            if t.local == t.remote {
                return Some(format!(
                    "end {}: the tunnel's remote {} is this host's own core address",
                    side.as_str(),
                    t.remote
                ));
            }
        }
    }
    if vxc.a.tunnel.is_some() && vxc.b.tunnel.is_some() {
        return Some("both ends are tunnels: nothing of it is on this host".into());
    }
    let a = end_interface_name(&vxc.a.interface, vxc.a.vlan);
    let b = end_interface_name(&vxc.b.interface, vxc.b.vlan);
    if a == b {
        return Some(format!("both ends are {a}"));
    }
    None
}

/// Human name of an end interface for messages: "eth1.200 (VLAN 200 on eth1)".
pub(crate) fn end_label(vxc: &VxcSpec, side: Side) -> String {
    let end = vxc.end(side);
    if let Some(t) = &end.tunnel {
        return format!(
            "{} (VXLAN VNI {} to port {} on peer {})",
            end.interface, t.vni, end.port, t.remote
        );
    }
    match end.vlan {
        Some(v) => format!(
            "{} (VLAN {v} on {})",
            end_interface_name(&end.interface, end.vlan),
            end.interface
        ),
        None => format!("{} (untagged end of port {})", end.interface, end.port),
    }
}

/// Whether a link with the end's name may be treated as vxcd's for this end: fully
/// marked, or a half-created one (owner group, no alias, exactly the expected VLAN).
pub(crate) fn link_claimable(l: &ObservedLink, owner_group: u32, parent: u32, vlan: u16) -> bool {
    l.is_owned(owner_group)
        || (l.group == owner_group
            && l.alias.is_none()
            && l.kind.as_deref() == Some("vlan")
            && l.parent == Some(parent)
            && l.vlan_id == Some(vlan))
}

pub(super) fn differs(
    out: &mut Vec<Discrepancy>,
    object: &str,
    field: &str,
    expected: impl fmt::Display,
    observed: impl fmt::Display,
) {
    out.push(Discrepancy::Differs {
        object: object.to_string(),
        field: field.to_string(),
        expected: expected.to_string(),
        observed: observed.to_string(),
    });
}

/// Desired TBF of an end.
pub(crate) fn desired_tbf(obs: &Observed, vxc: &VxcSpec, mtu: u32) -> TbfParams {
    obs.config.burst.params(vxc.rate_mbps, mtu)
}

/// Compares a TBF read back with the desired one.
pub(crate) fn tbf_discrepancies(
    out: &mut Vec<Discrepancy>,
    object: &str,
    want: &TbfParams,
    got: &TbfParams,
) {
    if want.rate_bytes_per_s != got.rate_bytes_per_s {
        differs(
            out,
            object,
            "rate (bytes/s)",
            want.rate_bytes_per_s,
            got.rate_bytes_per_s,
        );
    }
    if !burst_matches(want.burst_bytes, got.burst_bytes, want.rate_bytes_per_s) {
        differs(
            out,
            object,
            "burst (bytes)",
            want.burst_bytes,
            got.burst_bytes,
        );
    }
    if want.limit_bytes != got.limit_bytes {
        differs(
            out,
            object,
            "limit (bytes)",
            want.limit_bytes,
            got.limit_bytes,
        );
    }
}

/// All discrepancies of one VXC, assuming both port interfaces exist.
fn vxc_discrepancies(vxc: &VxcSpec, obs: &Observed) -> Vec<Discrepancy> {
    let mut out = Vec::new();
    let group = obs.config.owner_group;
    let mut end_index = [None, None];
    for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
        let end = vxc.end(side);
        let label = end_label(vxc, side);
        if let Some(t) = &end.tunnel {
            // Unshaped: the peer shapes what leaves towards its customer.
            let Some(link) = tunnel_discrepancies(&mut out, vxc, side, t, obs) else {
                continue;
            };
            let object = format!("link {label}");
            if !link.up {
                differs(&mut out, &object, "state", "up", "down");
            }
            end_index[i] = Some(link.index);
            if !obs.ingress.contains(&link.index) {
                out.push(Discrepancy::Missing {
                    object: format!("ingress qdisc on {}", end.interface),
                });
            }
            continue;
        }
        let Some(parent) = obs.link_by_name(&end.interface) else {
            continue;
        };
        let name = end_interface_name(&end.interface, end.vlan);
        let link = match end.vlan {
            None => Some(parent),
            Some(vlan) => {
                let existing = obs.link_by_name(&name);
                if let Some(other) = obs.vlan_user(parent.index, vlan) {
                    if other.name != name && !other.is_owned(group) {
                        out.push(Discrepancy::Foreign {
                            object: format!("VLAN {vlan} on {}", end.interface),
                            detail: format!("already used by link {}", other.name),
                        });
                    }
                }
                match existing {
                    None => {
                        out.push(Discrepancy::Missing {
                            object: format!("link {label}"),
                        });
                        None
                    }
                    Some(l) if !link_claimable(l, group, parent.index, vlan) => {
                        out.push(Discrepancy::Foreign {
                            object: format!("link {name}"),
                            detail: format!(
                                "group {}, alias {:?}",
                                l.group,
                                l.alias.as_deref().unwrap_or("")
                            ),
                        });
                        None
                    }
                    Some(l) => {
                        let object = format!("link {label}");
                        if l.kind.as_deref() != Some("vlan") {
                            differs(
                                &mut out,
                                &object,
                                "kind",
                                "vlan",
                                l.kind.as_deref().unwrap_or("none"),
                            );
                        }
                        if l.parent != Some(parent.index) {
                            differs(
                                &mut out,
                                &object,
                                "parent",
                                &end.interface,
                                l.parent.map_or("none".into(), |p| obs.name_of(p)),
                            );
                        }
                        if l.vlan_id != Some(vlan) {
                            differs(
                                &mut out,
                                &object,
                                "VLAN id",
                                vlan,
                                l.vlan_id.map_or("none".into(), |v| v.to_string()),
                            );
                        }
                        if l.mtu != parent.mtu {
                            differs(&mut out, &object, "mtu", parent.mtu, l.mtu);
                        }
                        if l.group != group {
                            differs(&mut out, &object, "group", group, l.group);
                        }
                        let alias = owner_alias(&vxc.id, side);
                        if l.alias.as_deref() != Some(alias.as_str()) {
                            differs(
                                &mut out,
                                &object,
                                "alias",
                                &alias,
                                l.alias.as_deref().unwrap_or("none"),
                            );
                        }
                        if l.addr_gen_mode.is_some_and(|m| m != ADDR_GEN_MODE_NONE) {
                            differs(
                                &mut out,
                                &object,
                                "IPv6 addr_gen_mode",
                                "none",
                                l.addr_gen_mode.unwrap_or_default(),
                            );
                        }
                        Some(l)
                    }
                }
            }
        };
        let Some(link) = link else { continue };
        let object = format!("link {label}");
        if !link.up {
            differs(&mut out, &object, "state", "up", "down");
        }
        if !link.promisc {
            differs(&mut out, &object, "promisc", "on", "off");
        }
        end_index[i] = Some(link.index);

        let tbf_object = format!("TBF {:x}: on {name}", super::TBF_HANDLE_MAJOR);
        let want = desired_tbf(obs, vxc, parent.mtu);
        match obs.root_qdiscs.get(&link.index) {
            None => out.push(Discrepancy::Missing { object: tbf_object }),
            Some(q) if q.handle == 0 => out.push(Discrepancy::Missing { object: tbf_object }),
            Some(q) if !q.is_ours() => out.push(Discrepancy::Foreign {
                object: format!("root qdisc {} {:x}: on {name}", q.kind, q.handle >> 16),
                detail: "handle is not vxcd's".into(),
            }),
            Some(q) => match (&q.tbf, q.kind.as_str()) {
                (Some(got), "tbf") => tbf_discrepancies(&mut out, &tbf_object, &want, got),
                _ => differs(&mut out, &tbf_object, "kind", "tbf", &q.kind),
            },
        }
        if !obs.ingress.contains(&link.index) {
            out.push(Discrepancy::Missing {
                object: format!("ingress qdisc on {name}"),
            });
        }
    }
    // The filters need both ends' ifindexes.
    for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
        let (Some(index), Some(target)) = (end_index[i], end_index[1 - i]) else {
            continue;
        };
        let name = obs.name_of(index);
        let object = format!("pipe filter on {name}");
        if vxc.shutdown {
            if obs
                .filters
                .get(&index)
                .and_then(|f| f.ours.as_ref())
                .is_some()
            {
                differs(
                    &mut out,
                    &object,
                    "presence",
                    "absent (the VXC is shut down)",
                    "present",
                );
            }
            continue;
        }
        if !obs.ingress.contains(&index) {
            out.push(Discrepancy::Missing { object });
            continue;
        }
        match obs.filters.get(&index).and_then(|f| f.ours.as_ref()) {
            None => out.push(Discrepancy::Missing { object }),
            Some(f) => {
                if f.kind != "u32" {
                    differs(&mut out, &object, "kind", "u32", &f.kind);
                }
                if !f.match_all {
                    differs(
                        &mut out,
                        &object,
                        "match",
                        "all frames",
                        "a selective match",
                    );
                }
                if f.redirect_to != Some(target) {
                    let seen = f.redirect_to.map_or("no redirect".to_string(), |t| {
                        format!("redirect to {}", obs.name_of(t))
                    });
                    differs(
                        &mut out,
                        &object,
                        "action",
                        format!("redirect to {}", obs.name_of(target)),
                        seen,
                    );
                }
            }
        }
        let _ = side;
    }
    out
}

/// Status of one VXC.
pub(crate) fn vxc_status(vxc: &VxcSpec, obs: &Observed) -> VxcStatus {
    if let Some(reason) = spec_problem(vxc) {
        return VxcStatus::Invalid(reason);
    }
    // A tunnel's own device is made by vxcd; the uplink it rides on is the host's.
    let missing: Vec<(String, String)> = [&vxc.a, &vxc.b]
        .into_iter()
        .filter_map(|e| match &e.tunnel {
            None => Some((e.port.clone(), e.interface.clone())),
            Some(t) => t.uplink.clone().map(|u| ("core".to_string(), u)),
        })
        .filter(|(_, interface)| obs.link_by_name(interface).is_none())
        .collect();
    if !missing.is_empty() {
        return VxcStatus::Pending { missing };
    }
    let d = vxc_discrepancies(vxc, obs);
    if d.is_empty() {
        VxcStatus::Ok
    } else {
        VxcStatus::Drift(d)
    }
}

/// A VLAN link vxcd made and did not get to mark (a crash between creating it and setting its
/// alias): in the owner group, no alias, and named exactly as vxcd names that VLAN on its parent.
/// A link of a desired VXC is adopted by `apply`; any other is an orphan.
fn half_made(l: &ObservedLink, obs: &Observed) -> bool {
    if l.kind.as_deref() == Some("vxlan") {
        return l.group == obs.config.owner_group
            && l.alias.is_none()
            && l.vxlan
                .as_ref()
                .and_then(|x| x.vni)
                .is_some_and(|vni| tunnel_interface_name(vni) == l.name);
    }
    let (Some(parent), Some(vlan)) = (l.parent, l.vlan_id) else {
        return false;
    };
    l.group == obs.config.owner_group
        && l.alias.is_none()
        && l.kind.as_deref() == Some("vlan")
        && obs
            .link_by_index(parent)
            .is_some_and(|p| end_interface_name(&p.name, Some(vlan)) == l.name)
}

/// Desired VXCs vs observed kernel. Orphans are looked for in a complete snapshot only: a
/// partial one ([`Observed::partial`]) does not show what no desired VXC accounts for.
pub fn plan(desired: &[VxcSpec], obs: &Observed) -> Plan {
    let vxcs = desired
        .iter()
        .map(|v| VxcPlan {
            id: v.id.clone(),
            status: vxc_status(v, obs),
        })
        .collect();
    if !obs.is_complete() {
        return Plan {
            vxcs,
            orphans: vec![],
        };
    }
    let desired_names: HashSet<String> = desired
        .iter()
        .flat_map(|v| {
            [
                end_interface_name(&v.a.interface, v.a.vlan),
                end_interface_name(&v.b.interface, v.b.vlan),
            ]
        })
        .collect();
    let group = obs.config.owner_group;
    let mut orphans = Vec::new();
    let mut orphan_links = HashSet::new();
    for l in &obs.links {
        let ours = l.is_owned(group) || half_made(l, obs);
        if ours && !desired_names.contains(&l.name) {
            orphan_links.insert(l.index);
            orphans.push(Orphan::Link {
                index: l.index,
                name: l.name.clone(),
                alias: l.alias.clone().unwrap_or_default(),
            });
        }
    }
    let stray = |index: &u32| -> Option<String> {
        let name = obs.name_of(*index);
        (!orphan_links.contains(index) && !desired_names.contains(&name)).then_some(name)
    };
    let mut qdisc_orphans: Vec<Orphan> = obs
        .root_qdiscs
        .iter()
        .filter(|(_, q)| q.is_ours())
        .filter_map(|(index, _)| {
            stray(index).map(|name| Orphan::Tbf {
                index: *index,
                name,
            })
        })
        .collect();
    qdisc_orphans.extend(
        obs.filters
            .iter()
            .filter(|(_, f)| f.ours.is_some())
            .filter_map(|(index, f)| {
                stray(index).map(|name| Orphan::Filter {
                    index: *index,
                    name,
                    remove_ingress: f.foreign == 0,
                })
            }),
    );
    qdisc_orphans.sort_by_key(|o| match o {
        Orphan::Link { index, .. } | Orphan::Tbf { index, .. } | Orphan::Filter { index, .. } => {
            *index
        }
    });
    orphans.extend(qdisc_orphans);
    Plan { vxcs, orphans }
}

#[cfg(test)]
mod tests;
