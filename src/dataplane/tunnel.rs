//! A tunnel end: the VXLAN device of a VXC whose other end is on a peer edge host.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, LinkAttribute, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::tc::TcAttribute;
use netlink_packet_route::RouteNetlinkMessage;

use super::nl::Errno;
use super::plan::{self, end_label, tunnel_claimable, tunnel_fixed_fields};
use super::{owner_alias, DataplaneError, Observed, ObservedLink, Side, TunnelSpec, VxcSpec};

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
                self.fix_tunnel_attrs(vxc, side, l, mtu, &label, j).await?;
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
        if fresh || !obs.ingress.contains(&index) {
            let msg = tc_msg(
                index,
                INGRESS_HANDLE,
                TC_H_INGRESS,
                0,
                vec![TcAttribute::Kind("ingress".into())],
            );
            self.create_tc_object(
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                format!("ingress qdisc on {name}"),
                Undo::DeleteIngress {
                    index,
                    name: name.to_string(),
                },
                j,
            )
            .await?;
        }
        Ok((index, fresh))
    }

    /// Fixes the MTU, alias, IPv6 mode and flags of an existing owned tunnel device.
    pub(super) async fn fix_tunnel_attrs(
        &self,
        vxc: &VxcSpec,
        side: Side,
        l: &ObservedLink,
        mtu: Option<u32>,
        label: &str,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let alias = owner_alias(&vxc.id, side);
        let mut msg = link_msg(l.index);
        let mut fields = vec![];
        if let Some(mtu) = mtu.filter(|m| *m != l.mtu) {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            fields.push(format!("mtu {mtu}"));
        }
        if l.group != self.cfg.owner_group {
            msg.attributes
                .push(LinkAttribute::Group(self.cfg.owner_group));
            fields.push("group".into());
        }
        if l.alias.as_deref() != Some(alias.as_str()) {
            msg.attributes.push(LinkAttribute::IfAlias(alias));
            fields.push("alias".into());
        }
        if l.addr_gen_mode
            .is_some_and(|m| m != plan::ADDR_GEN_MODE_NONE)
        {
            msg.attributes
                .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]));
            fields.push("IPv6 addr_gen_mode none".into());
        }
        if !fields.is_empty() {
            self.ack(RouteNetlinkMessage::SetLink(msg), 0)
                .await
                .map_err(|e| kernel_err("fixing", label, e))?;
            j.record(
                format!("link {label}"),
                ObjectChange::Changed(fields),
                Some(Undo::RestoreLink {
                    index: l.index,
                    name: l.name.clone(),
                    mtu: l.mtu,
                    group: l.group,
                    alias: l.alias.clone(),
                }),
            );
        }
        if !l.up || !l.promisc {
            self.ack(
                RouteNetlinkMessage::SetLink(flags_msg(l.index, true, true)),
                0,
            )
            .await
            .map_err(|e| kernel_err("setting up on", label, e))?;
            j.record(
                format!("link {label}"),
                ObjectChange::Changed(vec!["state up".into()]),
                Some(Undo::RestoreFlags {
                    index: l.index,
                    name: l.name.clone(),
                    up: l.up,
                    promisc: l.promisc,
                }),
            );
        }
        Ok(())
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
        let mut msg = LinkMessage::default();
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
        j.record(
            format!("link {label}"),
            ObjectChange::Created,
            Some(Undo::DeleteLink {
                index,
                name: name.clone(),
            }),
        );
        let mut mark = link_msg(index);
        mark.attributes = vec![
            LinkAttribute::IfAlias(owner_alias(&vxc.id, side)),
            LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
                In6AddrGenMode::None,
            )])]),
        ];
        self.ack(RouteNetlinkMessage::SetLink(mark), 0)
            .await
            .map_err(|e| kernel_err("marking (alias, IPv6 off)", label, e))?;
        self.ack(
            RouteNetlinkMessage::SetLink(flags_msg(index, true, true)),
            0,
        )
        .await
        .map_err(|e| kernel_err("setting up on", label, e))?;
        Ok(index)
    }
}
