//! Reading the kernel: the complete snapshot (`observe`) and the partial one of a single VXC
//! (`observe_vxc`, a bounded number of requests whatever else the host holds).

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};
use netlink_packet_core::NLM_F_ECHO;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::tc::TcMessage;
use netlink_packet_route::RouteNetlinkMessage;

use super::nl::{self, Errno, ReqError};
use super::plan::{self};
use super::{
    end_interface_name, DataplaneError, IngressFilters, Observed, ObservedLink, PipeFilter, Side,
    VxcSpec, PIPE_FILTER_PRIO,
};

use super::conn::*;
use super::events::RTM_NEWLINK;
use super::msg::*;

impl Dataplane {
    /// Reads the kernel: one link dump, one qdisc dump, and filter dumps of the ingress
    /// qdiscs only; interrupted dumps are retried.
    pub async fn observe(&self) -> Result<Observed, DataplaneError> {
        let links = self.dump_links().await?;
        // Each qdisc reduced to what vxcd keeps as it is read: a parsed qdisc message (its
        // statistics above all) is many times that, and 16,000 of them (4,000 VXCs) held at
        // once were most of a pass's peak memory.
        let qdiscs: Vec<QdiscSeen> = self
            .dump(
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
                "qdiscs",
                |m| match m {
                    RouteNetlinkMessage::NewQueueDiscipline(q) => QdiscSeen::of(q),
                    _ => None,
                },
            )
            .await?;
        let mut root_qdiscs = HashMap::new();
        let mut ingress = HashSet::new();
        for q in qdiscs {
            q.note(&mut root_qdiscs, &mut ingress);
        }
        let filters = self.read_filters(&ingress).await?;
        Ok(Observed::new(
            self.cfg,
            links,
            root_qdiscs,
            ingress,
            filters,
        ))
    }

    /// Every link (one dump), without qdiscs or filters: what a bulk removal needs (reading
    /// the filters too is one dump per ingress qdisc: seconds at 4,000 VXCs).
    pub(super) async fn dump_links(&self) -> Result<Vec<ObservedLink>, DataplaneError> {
        // Without the counters: they are most of a link's message, and vxcd reads none of them.
        let mut ask = LinkMessage::default();
        ask.attributes = vec![LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])];
        let links: Vec<ObservedLink> = self
            .dump_frames(RouteNetlinkMessage::GetLink(ask), "links", |frame| {
                // Only what vxcd keeps of each is parsed (`msg::link_from_payload`).
                (frame.kind == RTM_NEWLINK)
                    .then(|| link_from_payload(frame.payload()))
                    .flatten()
            })
            .await?;
        let group = self.cfg.owner_group;
        self.own.know_all(links.iter(), |l| {
            l.group == group
                || l.group == super::doomed_group(group)
                || self.port_interfaces.contains(&l.name)
        });
        Ok(links)
    }

    /// Reads only the objects of one VXC, with a bounded number of requests whatever else
    /// the namespace holds: each end's port interface and end interface by name
    /// (`RTM_GETLINK` with `IFLA_IFNAME`, not a dump), the root and ingress qdiscs of each
    /// end interface (`RTM_GETQDISC` with `tcm_ifindex` and `tcm_parent`, not a dump: the
    /// kernel's qdisc dump ignores `tcm_ifindex`), the filters of each end's ingress qdisc
    /// (a per-ifindex filter dump), and, for messages only, the links that a read link or
    /// filter refers to by ifindex (its parent, its redirect target). The result is a
    /// partial [`Observed`]: it does not show other links using an end's VLAN on its parent,
    /// nor orphans.
    ///
    /// The kernel answers a qdisc `RTM_GETQDISC` to the asker only with `NLM_F_ECHO`, and
    /// sends that answer to the `RTNLGRP_TC` listeners too: [`Dataplane::events`] subscribers
    /// see one qdisc event per qdisc read.
    pub async fn observe_vxc(&self, vxc: &VxcSpec) -> Result<Observed, DataplaneError> {
        let mut names: Vec<String> = Vec::with_capacity(4);
        for side in [Side::A, Side::B] {
            let end = vxc.end(side);
            let uplink = end.tunnel.as_ref().and_then(|t| t.uplink.clone());
            for name in [
                end.interface.clone(),
                end_interface_name(&end.interface, end.vlan),
            ]
            .into_iter()
            .chain(uplink)
            {
                // A name the kernel cannot hold names no link (the spec is reported invalid).
                if !name.is_empty() && name.len() <= 15 && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let reads: Vec<_> = names.iter().map(|n| self.read_link_named(n)).collect();
        let mut links: Vec<ObservedLink> = futures::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let mut ends: Vec<u32> = Vec::with_capacity(2);
        for side in [Side::A, Side::B] {
            let end = vxc.end(side);
            let name = end_interface_name(&end.interface, end.vlan);
            if let Some(l) = links.iter().find(|l| l.name == name) {
                if !ends.contains(&l.index) {
                    ends.push(l.index);
                }
            }
        }
        let qdisc_reads: Vec<_> = ends
            .iter()
            .flat_map(|&index| [(index, TC_H_ROOT), (index, TC_H_INGRESS)])
            .map(|(index, parent)| self.read_qdisc(index, parent))
            .collect();
        let mut root_qdiscs = HashMap::new();
        let mut ingress = HashSet::new();
        for q in futures::future::join_all(qdisc_reads).await {
            if let Some(seen) = q?.and_then(QdiscSeen::of) {
                seen.note(&mut root_qdiscs, &mut ingress);
            }
        }
        let filters = self.read_filters(&ingress).await?;
        // Parents of links with a tagged end's name, and redirect targets of the pipe filters,
        // when not read already: messages name them as they would from a full snapshot.
        let tagged_parents = [Side::A, Side::B].into_iter().filter_map(|side| {
            let end = vxc.end(side);
            end.vlan?;
            let name = end_interface_name(&end.interface, end.vlan);
            links.iter().find(|l| l.name == name)?.parent
        });
        let mut referred: Vec<u32> = tagged_parents
            .chain(
                filters
                    .values()
                    .filter_map(|f| f.ours.as_ref().and_then(|p| p.redirect_to)),
            )
            .filter(|index| !links.iter().any(|l| l.index == *index))
            .collect();
        referred.sort_unstable();
        referred.dedup();
        let reads: Vec<_> = referred
            .iter()
            .map(|&i| self.read_link(link_msg(i)))
            .collect();
        for link in futures::future::join_all(reads).await {
            links.extend(link?);
        }
        Ok(Observed::partial(
            self.cfg,
            links,
            root_qdiscs,
            ingress,
            filters,
        ))
    }

    /// The MTU of the link of that name; `None` when there is none.
    pub async fn link_mtu(&self, name: &str) -> Result<Option<u32>, DataplaneError> {
        Ok(self.read_link_named(name).await?.map(|l| l.mtu))
    }

    /// Whether a link of that name exists: one request, whatever else the host holds.
    pub async fn link_present(&self, name: &str) -> Result<bool, DataplaneError> {
        Ok(self.read_link_named(name).await?.is_some())
    }

    /// A port interface as `port.list` shows it: `None` when absent, else whether the host's own
    /// IPv6 is off on it (address generation none: see [`Dataplane::quiet_ports`]).
    pub async fn port_ipv6_off(&self, name: &str) -> Result<Option<bool>, DataplaneError> {
        Ok(self.read_link_named(name).await?.map(|l| {
            l.addr_gen_mode
                .is_none_or(|m| m == plan::ADDR_GEN_MODE_NONE)
        }))
    }

    /// One link by name; `None` when no link has that name (`ENODEV`, or a link that only
    /// has it as an alternative name: a full dump would not show it under that name).
    pub(super) async fn read_link_named(
        &self,
        name: &str,
    ) -> Result<Option<ObservedLink>, DataplaneError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_string())];
        let link = self.read_link(msg).await?.filter(|l| l.name == name);
        self.own.know(name, link.as_ref());
        Ok(link)
    }

    /// One link, asked by ifindex or `IFLA_IFNAME` in `msg`; `None` when it does not exist.
    pub(super) async fn read_link(
        &self,
        mut msg: LinkMessage,
    ) -> Result<Option<ObservedLink>, DataplaneError> {
        let what = match msg.attributes.first() {
            Some(LinkAttribute::IfName(name)) => format!("link {name}"),
            _ => format!("link ifindex {}", msg.header.index),
        };
        // Without the counters, as in the dump: vxcd reads none of them.
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        match nl::get(&self.handle, RouteNetlinkMessage::GetLink(msg), 0).await {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => parse_link(l),
                _ => None,
            })),
            Err(ReqError::Kernel(Errno(e))) if e == ENODEV => Ok(None),
            Err(e) => Err(kernel_err("reading", &what, e)),
        }
    }

    /// The qdisc of `index` at `parent` (`TC_H_ROOT` or `TC_H_INGRESS`); `None` when there is
    /// none or only a built-in one (the kernel answers no object, or `EINVAL` before 6.7),
    /// or when the link is gone.
    pub(super) async fn read_qdisc(
        &self,
        index: u32,
        parent: u32,
    ) -> Result<Option<TcMessage>, DataplaneError> {
        let req = tc_msg(index, 0, parent, 0, vec![]);
        match nl::get(
            &self.handle,
            RouteNetlinkMessage::GetQueueDiscipline(req),
            NLM_F_ECHO,
        )
        .await
        {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => Some(q),
                _ => None,
            })),
            Err(ReqError::Kernel(Errno(e))) if e == ENOENT || e == EINVAL || e == ENODEV => {
                Ok(None)
            }
            Err(e) => {
                let which = if parent == TC_H_ROOT {
                    "root"
                } else {
                    "ingress"
                };
                Err(kernel_err(
                    "reading",
                    &format!("{which} qdisc of ifindex {index}"),
                    e,
                ))
            }
        }
    }

    /// Filter dumps of the given ingress qdiscs, pipelined.
    pub(super) async fn read_filters(
        &self,
        ingress: &HashSet<u32>,
    ) -> Result<HashMap<u32, IngressFilters>, DataplaneError> {
        // Futures are built into a Vec first: a lazily mapped stream of borrowing closures makes
        // the whole future fail tokio::spawn's `Send` check (higher-ranked lifetime inference).
        let dumps: Vec<_> = ingress
            .iter()
            .map(|&index| async move { self.dump_ingress_filters(index).await.map(|f| (index, f)) })
            .collect();
        let filters: Vec<(u32, IngressFilters)> = stream::iter(dumps)
            .buffer_unordered(self.cfg.max_in_flight.max(1))
            .filter_map(|r| async move {
                match r {
                    Ok(v) => Some(Ok(v)),
                    // The link went away between the dumps: it has no filters.
                    Err(DataplaneError::Kernel {
                        errno: Errno(e), ..
                    }) if e == ENODEV || e == EINVAL || e == ENOENT => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(filters.into_iter().collect())
    }

    pub(super) async fn dump_ingress_filters(
        &self,
        index: u32,
    ) -> Result<IngressFilters, DataplaneError> {
        let req = tc_msg(index, 0, INGRESS_HANDLE, 0, vec![]);
        let what = format!("ingress filters of ifindex {index}");
        let filters = self
            .dump(
                RouteNetlinkMessage::GetTrafficFilter(req),
                &what,
                |m| match m {
                    RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
                    _ => None,
                },
            )
            .await?;
        let mut out = IngressFilters::default();
        let mut foreign_prios = HashSet::new();
        for f in filters {
            let prio = (f.header.info >> 16) as u16;
            let handle = u32::from(f.header.handle);
            if prio != PIPE_FILTER_PRIO {
                foreign_prios.insert(prio);
                continue;
            }
            // A u32 filter dumps its hash table (800:) before the key node (800::800).
            if handle & 0xfff == 0 && kind_of(&f.attributes) == "u32" {
                if out.ours.is_none() {
                    out.ours = Some(PipeFilter {
                        handle,
                        kind: "u32".into(),
                        redirect_to: None,
                        match_all: false,
                    });
                }
                continue;
            }
            let parsed = parse_pipe_filter(handle, &f.attributes);
            match &out.ours {
                Some(existing) if existing.handle & 0xfff != 0 => {} // keep the first key node
                _ => out.ours = Some(parsed),
            }
        }
        out.foreign = foreign_prios.len();
        Ok(out)
    }
}
