//! A tunnel end: the VXLAN device of a VXC whose other end is on a peer edge host.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo};
use netlink_packet_route::RouteNetlinkMessage;

use super::nl::Errno;
use super::plan::{end_label, tunnel_claimable, tunnel_fixed_fields};
use super::{DataplaneError, Observed, ObservedLink, Side, TunnelSpec, VxcSpec};

use super::conn::*;
use super::msg::*;
use super::report::*;
use super::undo::*;

impl Dataplane {
    /// Makes a tunnel end's VXLAN device and its ingress qdisc right; returns its ifindex and
    /// whether it was just made. Settings the kernel cannot change in place (VNI, addresses,
    /// port, learning, uplink) make it again; the MTU, alias and IPv6 mode are fixed in place.
    pub(super) async fn ensure_tunnel(
        &self,
        vxc: &VxcSpec,
        side: Side,
        t: &TunnelSpec,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(u32, bool), DataplaneError> {
        let end = vxc.end(side);
        let label = end_label(vxc, side);
        let name = end.interface.as_str();
        let uplink = match &t.uplink {
            None => None,
            Some(u) => Some(
                obs.link_by_name(u)
                    .ok_or_else(|| DataplaneError::PortMissing {
                        port: "core".into(),
                        interface: u.clone(),
                    })?,
            ),
        };
        let mtu = uplink.map(|u| u.mtu.saturating_sub(t.overhead()));
        let group = self.cfg.owner_group;
        let (index, fresh) = match obs.link_by_name(name) {
            Some(l) if !tunnel_claimable(l, group) => {
                return Err(DataplaneError::Foreign {
                    object: format!("link {name}"),
                    detail: format!(
                        "group {}, alias {:?}; wanted for {label}",
                        l.group,
                        l.alias.as_deref().unwrap_or("")
                    ),
                })
            }
            Some(l) if tunnel_fixed_fields(t, l, obs).is_empty() => {
                self.fix_link_attrs(vxc, side, l, mtu, &label, j).await?;
                self.ensure_up_promisc(l, &label, j).await?;
                (l.index, false)
            }
            Some(l) => {
                let fields: Vec<String> = tunnel_fixed_fields(t, l, obs)
                    .into_iter()
                    .map(|(f, want, got)| format!("{f} {got} -> {want}"))
                    .collect();
                self.delete_link(l.index, &l.name).await?;
                j.record(
                    format!("link {name} ({})", fields.join(", ")),
                    ObjectChange::Deleted,
                    None,
                );
                let index = self
                    .create_tunnel(vxc, side, t, uplink, mtu, &label, j)
                    .await?;
                (index, true)
            }
            None => {
                let index = self
                    .create_tunnel(vxc, side, t, uplink, mtu, &label, j)
                    .await?;
                (index, true)
            }
        };
        self.ensure_ingress(index, name, fresh, obs, j).await?;
        Ok((index, fresh))
    }

    /// Creates a tunnel end's VXLAN device, marks it (alias, IPv6 off) and sets it up.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_tunnel(
        &self,
        vxc: &VxcSpec,
        side: Side,
        t: &TunnelSpec,
        uplink: Option<&ObservedLink>,
        mtu: Option<u32>,
        label: &str,
        j: &mut Journal,
    ) -> Result<u32, DataplaneError> {
        let name = vxc.end(side).interface.clone();
        let born = super::end::born_up();
        let mut msg = flags_msg(0, born, born);
        msg.attributes = vec![
            LinkAttribute::IfName(name.clone()),
            LinkAttribute::Group(self.cfg.owner_group),
        ];
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vxlan_attrs(t, uplink.map(|u| u.index)))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map_err(|e| kernel_err("creating", label, e))?;
        let index = match self.read_link_named(&name).await? {
            Some(l) => l.index,
            None => {
                return Err(DataplaneError::Kernel {
                    action: "reading back".into(),
                    object: label.into(),
                    errno: Errno(ENODEV),
                })
            }
        };
        self.mark_new_link(index, &name, vxc, side, label, born, j)
            .await?;
        Ok(index)
    }
}
