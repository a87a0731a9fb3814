//! Taking VXCs (or one end) down, and removing orphans; only ever objects vxcd owns.

use netlink_packet_route::RouteNetlinkMessage;

use super::nl::{Errno, ReqError};
use super::plan::{link_claimable, tunnel_claimable, Orphan};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::{
    doomed_group, end_interface_name, DataplaneError, Observed, RootQdisc, Side, VxcSpec,
    TBF_HANDLE_MAJOR,
};

use super::conn::*;
use super::msg::*;

impl Dataplane {
    /// Ok on success or when the object is already gone.
    pub(super) fn gone_ok(
        r: Result<(), ReqError>,
        action: &str,
        object: &str,
    ) -> Result<(), DataplaneError> {
        match r {
            Ok(()) => Ok(()),
            Err(ReqError::Kernel(Errno(e))) if e == ENOENT || e == ENODEV || e == EINVAL => Ok(()),
            Err(e) => Err(kernel_err(action, object, e)),
        }
    }

    pub(super) async fn delete_link(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let r = self
            .ack(RouteNetlinkMessage::DelLink(link_msg(index)), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("link {name}"))
    }

    pub(super) async fn delete_tbf(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let r = self
            .ack(
                RouteNetlinkMessage::DelQueueDiscipline(tc_msg(
                    index,
                    TBF_HANDLE,
                    TC_H_ROOT,
                    0,
                    vec![],
                )),
                0,
            )
            .await;
        Self::gone_ok(
            r,
            "deleting",
            &format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}"),
        )
    }

    pub(super) async fn delete_ingress(
        &self,
        index: u32,
        name: &str,
    ) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, INGRESS_HANDLE, TC_H_INGRESS, 0, vec![]);
        let r = self
            .ack(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("ingress qdisc on {name}"))
    }

    pub(super) async fn delete_filter(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, 0, INGRESS_HANDLE, filter_info(), vec![]);
        let r = self
            .ack(RouteNetlinkMessage::DelTrafficFilter(msg), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("pipe filter on {name}"))
    }

    /// Removes the VXC's vxcd-owned objects: its owned VLAN links (which takes their qdiscs
    /// and filters along) and, on untagged ends, vxcd's filter, TBF and (if no other filter
    /// uses it) the ingress qdisc. Absent objects are not an error.
    pub async fn remove(&self, vxc: &VxcSpec) -> Result<(), DataplaneError> {
        self.remove_ends(vxc, &[Side::A, Side::B]).await
    }

    /// Takes down one end of a VXC whose other end stays (a live VLAN change: the end on the
    /// old VLAN goes once the new one is joined).
    pub async fn remove_end(&self, vxc: &VxcSpec, side: Side) -> Result<(), DataplaneError> {
        self.remove_ends(vxc, &[side]).await
    }

    pub(super) async fn remove_ends(
        &self,
        vxc: &VxcSpec,
        sides: &[Side],
    ) -> Result<(), DataplaneError> {
        let obs = self.observe_vxc(vxc).await?;
        for &side in sides {
            let end = vxc.end(side);
            if end.tunnel.is_some() {
                // The tunnel device is vxcd's own: its qdiscs and filters go with it.
                if let Some(l) = obs.link_by_name(&end.interface) {
                    if tunnel_claimable(l, self.cfg.owner_group) {
                        self.delete_link(l.index, &l.name).await?;
                    } else {
                        log::warn!("not removing link {}: not owned by vxcd", l.name);
                    }
                }
                continue;
            }
            let Some(parent) = obs.link_by_name(&end.interface) else {
                continue;
            };
            match end.vlan {
                Some(vlan) => {
                    let name = end_interface_name(&end.interface, end.vlan);
                    if let Some(l) = obs.link_by_name(&name) {
                        if link_claimable(l, self.cfg.owner_group, parent.index, vlan) {
                            self.delete_link(l.index, &l.name).await?;
                        } else {
                            log::warn!("not removing link {name}: not owned by vxcd");
                        }
                    }
                }
                None => {
                    self.remove_port_objects(&obs, parent.index, &parent.name)
                        .await?
                }
            }
        }
        Ok(())
    }

    /// Takes many VXCs down at once, with the kernel's bulk path for links: deleting links one
    /// by one waits for the network stack to quiesce after each (about 54 ms per link under TCG);
    /// deleting a group of links waits once. vxcd's links of these VXCs are moved into
    /// [`doomed_group`] (one `RTM_SETLINK` each, no wait), then deleted with one `RTM_DELLINK` by
    /// group. Only when no other link is in that group (read from the same snapshot): otherwise,
    /// and when the kernel refuses the group deletion, the links go one by one. Untagged ends
    /// lose their qdiscs and filters as in [`Dataplane::remove`].
    pub async fn remove_many(&self, vxcs: &[VxcSpec]) -> Result<(), DataplaneError> {
        // Every link, but no qdisc or filter (partial): an untagged end's are read for that
        // VXC alone.
        let obs = Observed::partial(
            self.cfg,
            self.dump_links().await?,
            Default::default(),
            Default::default(),
            Default::default(),
        );
        let group = self.cfg.owner_group;
        let doomed = doomed_group(group);
        let mut links: Vec<(u32, String)> = Vec::new();
        for vxc in vxcs {
            // This VXC's own objects, read once if an end is untagged.
            let mut one: Option<Observed> = None;
            for side in [Side::A, Side::B] {
                let end = vxc.end(side);
                let name = end_interface_name(&end.interface, end.vlan);
                let owned = match (&end.tunnel, end.vlan) {
                    (Some(_), _) => obs
                        .link_by_name(&name)
                        .filter(|l| tunnel_claimable(l, group)),
                    (None, Some(vlan)) => obs.link_by_name(&end.interface).and_then(|parent| {
                        obs.link_by_name(&name)
                            .filter(|l| link_claimable(l, group, parent.index, vlan))
                    }),
                    (None, None) => {
                        if one.is_none() {
                            one = Some(self.observe_vxc(vxc).await?);
                        }
                        if let Some((one, port)) = one
                            .as_ref()
                            .and_then(|o| o.link_by_name(&end.interface).map(|p| (o, p)))
                        {
                            self.remove_port_objects(one, port.index, &port.name)
                                .await?;
                        }
                        None
                    }
                };
                if let Some(l) = owned {
                    links.push((l.index, l.name.clone()));
                }
            }
        }
        links.sort_unstable();
        links.dedup();
        let others_doomed = obs
            .links
            .iter()
            .any(|l| l.group == doomed && links.binary_search(&(l.index, l.name.clone())).is_err());
        if links.len() < 2 || others_doomed {
            if others_doomed {
                log::warn!("group {doomed} holds links vxcd is not deleting: deleting its links one by one");
            }
            for (index, name) in &links {
                self.delete_link(*index, name).await?;
            }
            return Ok(());
        }
        let moves = links.iter().map(|(index, name)| async move {
            let mut msg = link_msg(*index);
            msg.attributes = vec![LinkAttribute::Group(doomed)];
            let r = self.set_link(name, msg).await;
            Self::gone_ok(r, "moving to the doomed group", &format!("link {name}"))
        });
        for moved in futures::future::join_all(moves).await {
            moved?;
        }
        let mut all = LinkMessage::default();
        all.attributes = vec![LinkAttribute::Group(doomed)];
        match self.ack(RouteNetlinkMessage::DelLink(all), 0).await {
            Ok(()) => {
                log::info!("deleted {} links at once (group {doomed})", links.len());
                Ok(())
            }
            Err(e) => {
                log::warn!("deleting group {doomed} at once: {e:?}; deleting its links one by one");
                for (index, name) in &links {
                    self.delete_link(*index, name).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn remove_port_objects(
        &self,
        obs: &Observed,
        index: u32,
        name: &str,
    ) -> Result<(), DataplaneError> {
        if let Some(f) = obs.filters.get(&index) {
            if f.ours.is_some() {
                self.delete_filter(index, name).await?;
            }
            if f.foreign == 0 {
                self.delete_ingress(index, name).await?;
            }
        }
        if obs.root_qdiscs.get(&index).is_some_and(RootQdisc::is_ours) {
            self.delete_tbf(index, name).await?;
        }
        Ok(())
    }

    pub(super) async fn remove_orphan(
        &self,
        obs: &Observed,
        orphan: &Orphan,
    ) -> Result<(), DataplaneError> {
        match orphan {
            Orphan::Link { index, name, .. } => self.delete_link(*index, name).await,
            Orphan::Tbf { index, name } => self.delete_tbf(*index, name).await,
            Orphan::Filter {
                index,
                name,
                remove_ingress,
            } => {
                self.delete_filter(*index, name).await?;
                if *remove_ingress && obs.ingress.contains(index) {
                    self.delete_ingress(*index, name).await?;
                }
                Ok(())
            }
        }
    }
}
