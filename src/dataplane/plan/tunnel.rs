//! The plan of a tunnel end: whether a VXLAN device is vxcd's, and how it differs from the
//! VXC's tunnel (VNI, addresses, port, uplink, MTU, marks).

use super::super::{owner_alias, Observed, ObservedLink, Side, TunnelSpec, VxcSpec};
use super::{differs, end_label, Discrepancy, ADDR_GEN_MODE_NONE};

/// Whether a link with a tunnel's name may be treated as vxcd's: fully marked, or a half-made
/// one (owner group, no alias, a VXLAN device).
pub(crate) fn tunnel_claimable(l: &ObservedLink, owner_group: u32) -> bool {
    l.is_owned(owner_group)
        || (l.group == owner_group && l.alias.is_none() && l.kind.as_deref() == Some("vxlan"))
}

/// The MTU a tunnel device should have: the uplink's less the encapsulation; `None` without an
/// uplink (or while it is not read): the kernel's default, not checked.
fn tunnel_mtu(t: &TunnelSpec, obs: &Observed) -> Option<u32> {
    let uplink = obs.link_by_name(t.uplink.as_deref()?)?;
    Some(uplink.mtu.saturating_sub(t.overhead()))
}

/// The fields of a VXLAN device that cannot change in place (the device is made again), as
/// (field, expected, observed) for each that differs.
pub(crate) fn tunnel_fixed_fields(
    t: &TunnelSpec,
    l: &ObservedLink,
    obs: &Observed,
) -> Vec<(&'static str, String, String)> {
    let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let mut out = Vec::new();
    if l.kind.as_deref() != Some("vxlan") {
        out.push(("kind", "vxlan".into(), show(l.kind.clone())));
        return out;
    }
    let x = l.vxlan.clone().unwrap_or_default();
    if x.vni != Some(t.vni) {
        out.push(("VNI", t.vni.to_string(), show(x.vni.map(|v| v.to_string()))));
    }
    if x.local != Some(t.local) {
        out.push((
            "local",
            t.local.to_string(),
            show(x.local.map(|v| v.to_string())),
        ));
    }
    if x.remote != Some(t.remote) {
        out.push((
            "remote",
            t.remote.to_string(),
            show(x.remote.map(|v| v.to_string())),
        ));
    }
    if x.udp_port != Some(t.udp_port) {
        out.push((
            "UDP port",
            t.udp_port.to_string(),
            show(x.udp_port.map(|v| v.to_string())),
        ));
    }
    if x.learning != Some(false) {
        out.push((
            "learning",
            "off".into(),
            show(
                x.learning
                    .map(|v| if v { "on".into() } else { "off".into() }),
            ),
        ));
    }
    if let Some(uplink) = t.uplink.as_deref().and_then(|u| obs.link_by_name(u)) {
        if x.link != Some(uplink.index) {
            out.push((
                "uplink",
                uplink.name.clone(),
                show(x.link.map(|i| obs.name_of(i))),
            ));
        }
    }
    out
}

/// The checks of a tunnel end's device; the device when it is vxcd's.
pub(super) fn tunnel_discrepancies<'a>(
    out: &mut Vec<Discrepancy>,
    vxc: &VxcSpec,
    side: Side,
    t: &TunnelSpec,
    obs: &'a Observed,
) -> Option<&'a ObservedLink> {
    let end = vxc.end(side);
    let label = end_label(vxc, side);
    let group = obs.config.owner_group;
    let Some(l) = obs.link_by_name(&end.interface) else {
        out.push(Discrepancy::Missing {
            object: format!("link {label}"),
        });
        return None;
    };
    if !tunnel_claimable(l, group) {
        out.push(Discrepancy::Foreign {
            object: format!("link {}", end.interface),
            detail: format!(
                "group {}, alias {:?}",
                l.group,
                l.alias.as_deref().unwrap_or("")
            ),
        });
        return None;
    }
    let object = format!("link {label}");
    for (field, expected, observed) in tunnel_fixed_fields(t, l, obs) {
        differs(out, &object, field, expected, observed);
    }
    if let Some(mtu) = tunnel_mtu(t, obs) {
        if l.mtu != mtu {
            differs(out, &object, "mtu", mtu, l.mtu);
        }
    }
    if l.group != group {
        differs(out, &object, "group", group, l.group);
    }
    let alias = owner_alias(&vxc.id, side);
    if l.alias.as_deref() != Some(alias.as_str()) {
        differs(
            out,
            &object,
            "alias",
            &alias,
            l.alias.as_deref().unwrap_or("none"),
        );
    }
    if l.addr_gen_mode.is_some_and(|m| m != ADDR_GEN_MODE_NONE) {
        differs(
            out,
            &object,
            "IPv6 addr_gen_mode",
            "none",
            l.addr_gen_mode.unwrap_or_default(),
        );
    }
    Some(l)
}
