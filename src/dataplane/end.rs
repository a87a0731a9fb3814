//! One end's link made right: a VLAN subinterface (or the untagged port itself) claimed, created
//! with its attributes, fixed in place, or freed of a stale holder of its VLAN.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVlan, LinkAttribute,
    LinkInfo,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::nl::{Errno, ReqError};
use super::plan::{self, end_label, link_claimable, Discrepancy};
use super::{
    end_interface_name, owner_alias, DataplaneError, Observed, ObservedLink, Side, VxcSpec,
    TBF_HANDLE_MAJOR,
};

use super::conn::*;
use super::msg::*;
use super::report::*;
use super::undo::*;

impl Dataplane {
    /// Makes one end's link, TBF and ingress qdisc right; returns its ifindex and whether
    /// those objects were just created (so the snapshot says nothing about them).
    pub(super) async fn ensure_end(
        &self,
        vxc: &VxcSpec,
        side: Side,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(u32, bool), DataplaneError> {
        let end = vxc.end(side);
        let label = end_label(vxc, side);
        let parent =
            obs.link_by_name(&end.interface)
                .ok_or_else(|| DataplaneError::PortMissing {
                    port: end.port.clone(),
                    interface: end.interface.clone(),
                })?;
        let name = end_interface_name(&end.interface, end.vlan);
        let (index, fresh, current) = match end.vlan {
            None => (parent.index, false, Some(parent)),
            Some(vlan) => {
                let group = self.cfg.owner_group;
                // Only a complete snapshot shows every link on the parent. From a partial one,
                // another link holding the VLAN is looked for when the kernel refuses the
                // creation (EEXIST) or before an owned link with the end's name is recreated.
                if obs.is_complete() {
                    self.free_vlan(obs, vxc, side, parent.index, j).await?;
                }
                match obs.link_by_name(&name) {
                    Some(l) if !link_claimable(l, group, parent.index, vlan) => {
                        return Err(DataplaneError::Foreign {
                            object: format!("link {name}"),
                            detail: format!(
                                "group {}, alias {:?}; wanted for {label}",
                                l.group,
                                l.alias.as_deref().unwrap_or("")
                            ),
                        });
                    }
                    Some(l)
                        if l.kind.as_deref() == Some("vlan")
                            && l.parent == Some(parent.index)
                            && l.vlan_id == Some(vlan) =>
                    {
                        (l.index, false, Some(l))
                    }
                    Some(l) => {
                        if !obs.is_complete() {
                            let full = self.observe().await?;
                            self.free_vlan(&full, vxc, side, parent.index, j).await?;
                        }
                        // Owned but not the right VLAN: it cannot be changed in place.
                        self.delete_link(l.index, &l.name).await?;
                        j.record(format!("link {name}"), ObjectChange::Deleted, None);
                        (
                            self.create_vlan_in(obs, vxc, side, parent, vlan, j).await?,
                            true,
                            None,
                        )
                    }
                    None => (
                        self.create_vlan_in(obs, vxc, side, parent, vlan, j).await?,
                        true,
                        None,
                    ),
                }
            }
        };
        if let Some(l) = current {
            if end.vlan.is_some() {
                self.fix_link_attrs(vxc, side, l, Some(parent.mtu), &label, j)
                    .await?;
            }
            self.ensure_up_promisc(l, &label, j).await?;
        }
        // Root TBF.
        let want = obs.config.burst.params(vxc.rate_mbps, parent.mtu);
        let tbf_object = format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}");
        let root = if fresh {
            None
        } else {
            obs.root_qdiscs.get(&index)
        };
        match root {
            Some(q) if q.handle != 0 && !q.is_ours() => {
                return Err(DataplaneError::Foreign {
                    object: format!("root qdisc {} {:x}: on {name}", q.kind, q.handle >> 16),
                    detail: "its handle is not vxcd's, so vxcd will not replace it".into(),
                })
            }
            Some(q) if q.is_ours() && q.kind == "tbf" => {
                let mut fields = vec![];
                if let Some(got) = &q.tbf {
                    let mut d = vec![];
                    plan::tbf_discrepancies(&mut d, &tbf_object, &want, got);
                    for x in d {
                        if let Discrepancy::Differs { field, .. } = x {
                            fields.push(field);
                        }
                    }
                } else {
                    fields.push("options".into());
                }
                if !fields.is_empty() {
                    let msg = tc_msg(index, TBF_HANDLE, TC_H_ROOT, 0, tbf_attrs(&want));
                    self.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_REPLACE)
                        .await
                        .map_err(|e| kernel_err("changing", &tbf_object, e))?;
                    let undo = q.tbf.map(|params| Undo::RestoreTbf {
                        index,
                        name: name.clone(),
                        params,
                    });
                    j.record(tbf_object, ObjectChange::Changed(fields), undo);
                }
            }
            Some(q) if q.is_ours() => {
                // Our handle with another kind: replace it by a TBF.
                self.delete_tbf(index, &name).await?;
                j.record(
                    format!("root qdisc {} on {name}", q.kind),
                    ObjectChange::Deleted,
                    None,
                );
                self.create_tbf(index, &name, &want, j).await?;
            }
            _ => self.create_tbf(index, &name, &want, j).await?,
        }
        self.ensure_ingress(index, &name, fresh, obs, j).await?;
        Ok((index, fresh))
    }

    /// Deletes an owned link that holds the end's VLAN on its parent under another name
    /// (found in `obs`); a foreign one is an error naming it. Returns whether it deleted one.
    pub(super) async fn free_vlan(
        &self,
        obs: &Observed,
        vxc: &VxcSpec,
        side: Side,
        parent: u32,
        j: &mut Journal,
    ) -> Result<bool, DataplaneError> {
        let end = vxc.end(side);
        let Some(vlan) = end.vlan else {
            return Ok(false);
        };
        let name = end_interface_name(&end.interface, end.vlan);
        let Some(other) = obs.vlan_user(parent, vlan) else {
            return Ok(false);
        };
        if other.name == name {
            return Ok(false);
        }
        if !other.is_owned(self.cfg.owner_group) {
            return Err(DataplaneError::Foreign {
                object: format!("link {}", other.name),
                detail: format!(
                    "it already uses VLAN {vlan} on {} needed for {}",
                    end.interface,
                    end_label(vxc, side)
                ),
            });
        }
        self.delete_link(other.index, &other.name).await?;
        j.record(format!("link {}", other.name), ObjectChange::Deleted, None);
        Ok(true)
    }

    /// Creates the end's VLAN link. From a partial snapshot, an `EEXIST` (the name was free
    /// when read, so another link holds the VLAN on the parent) costs one full read to name
    /// that link: a foreign one is an error, an owned one is deleted and the creation retried.
    pub(super) async fn create_vlan_in(
        &self,
        obs: &Observed,
        vxc: &VxcSpec,
        side: Side,
        parent: &ObservedLink,
        vlan: u16,
        j: &mut Journal,
    ) -> Result<u32, DataplaneError> {
        let end = vxc.end(side);
        let name = end_interface_name(&end.interface, end.vlan);
        let label = end_label(vxc, side);
        match self
            .create_vlan(vxc, side, parent, vlan, &name, &label, j)
            .await
        {
            Err(DataplaneError::Kernel {
                action,
                object,
                errno,
            }) if errno.0 == EEXIST && action == "creating" && !obs.is_complete() => {
                let full = self.observe().await?;
                if self.free_vlan(&full, vxc, side, parent.index, j).await? {
                    self.create_vlan(vxc, side, parent, vlan, &name, &label, j)
                        .await
                } else {
                    Err(DataplaneError::Kernel {
                        action,
                        object,
                        errno,
                    })
                }
            }
            r => r,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_vlan(
        &self,
        vxc: &VxcSpec,
        side: Side,
        parent: &ObservedLink,
        vlan: u16,
        name: &str,
        label: &str,
        j: &mut Journal,
    ) -> Result<u32, DataplaneError> {
        // Read once: the link is marked by how it was made.
        let born = born_up();
        let mut msg = flags_msg(0, born, born);
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Link(parent.index),
            LinkAttribute::Mtu(parent.mtu),
            LinkAttribute::Group(self.cfg.owner_group),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(vlan)])),
            ]),
        ];
        match self
            .ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .await
        {
            Ok(()) => {}
            Err(ReqError::Kernel(errno)) if errno.0 == EOPNOTSUPP => {
                return Err(DataplaneError::No8021q {
                    name: name.into(),
                    vlan,
                    parent: parent.name.clone(),
                    errno,
                })
            }
            Err(e) => return Err(kernel_err("creating", label, e)),
        }
        let index = match self.read_link_named(name).await {
            Ok(Some(l)) => l.index,
            Ok(None) => {
                return Err(DataplaneError::Kernel {
                    action: "reading back".into(),
                    object: label.into(),
                    errno: Errno(ENODEV),
                })
            }
            Err(e) => return Err(e),
        };
        self.mark_new_link(index, name, vxc, side, label, born, j)
            .await?;
        Ok(index)
    }

    /// Fixes MTU (when one is wanted), group, alias and IPv6 mode of an existing owned end
    /// link: a VLAN subinterface (its parent's MTU) or a tunnel device (the uplink's less the
    /// encapsulation).
    pub(super) async fn fix_link_attrs(
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
        if fields.is_empty() {
            return Ok(());
        }
        self.set_link(&l.name, msg)
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
        Ok(())
    }

    /// Sets an existing end link up and promiscuous if it is not.
    pub(super) async fn ensure_up_promisc(
        &self,
        l: &ObservedLink,
        label: &str,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        if l.up && l.promisc {
            return Ok(());
        }
        self.set_link(&l.name, flags_msg(l.index, true, true))
            .await
            .map_err(|e| kernel_err("setting up and promisc on", label, e))?;
        let mut fields = vec![];
        if !l.up {
            fields.push("state up".to_string());
        }
        if !l.promisc {
            fields.push("promisc on".to_string());
        }
        j.record(
            format!("link {label}"),
            ObjectChange::Changed(fields),
            Some(Undo::RestoreFlags {
                index: l.index,
                name: l.name.clone(),
                up: l.up,
                promisc: l.promisc,
            }),
        );
        Ok(())
    }

    /// A link vxcd just created (up and promiscuous already when `born` [`born_up`]): journaled (undone
    /// by deleting it), marked as vxcd's (alias, IPv6 off) and set up. The kernel ignores
    /// IFLA_IFALIAS in RTM_NEWLINK; the address generation mode must be set before the link
    /// goes up, or the link-local address is already made.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn mark_new_link(
        &self,
        index: u32,
        name: &str,
        vxc: &VxcSpec,
        side: Side,
        label: &str,
        born: bool,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        j.record(
            format!("link {label}"),
            ObjectChange::Created,
            Some(Undo::DeleteLink {
                index,
                name: name.into(),
            }),
        );
        let mut mark = link_msg(index);
        mark.attributes = vec![LinkAttribute::IfAlias(owner_alias(&vxc.id, side))];
        if born {
            return self
                .set_link(name, mark)
                .await
                .map_err(|e| kernel_err("marking (alias)", label, e));
        }
        mark.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.set_link(name, mark)
            .await
            .map_err(|e| kernel_err("marking (alias, IPv6 off)", label, e))?;
        self.set_link(name, flags_msg(index, true, true))
            .await
            .map_err(|e| kernel_err("setting up and promisc on", label, e))?;
        Ok(())
    }
}

/// Whether a link is born with IPv6 address generation off in this network namespace: IPv6 is
/// not there at all, or the namespace's default (`net.ipv6.conf.default.addr_gen_mode`, read per
/// namespace by the reading task) is `none` already. Then a new end link is created up and
/// promiscuous in its creation request, one request fewer per end; else it is created down,
/// IPv6 switched off, then set up (the order matters: going up makes the link-local address).
pub(super) fn born_up() -> bool {
    let conf = std::path::Path::new("/proc/sys/net/ipv6/conf/default");
    if !conf.exists() {
        return std::path::Path::new("/proc/sys/net").exists();
    }
    std::fs::read_to_string(conf.join("addr_gen_mode"))
        .is_ok_and(|mode| mode.trim() == plan::ADDR_GEN_MODE_NONE.to_string())
}
