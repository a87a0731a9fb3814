//! The kernel-facing operations: observe, apply (with undo), remove, converge, events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use netlink_packet_core::{
    NetlinkPayload, Nla, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVlan, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;
use std::net::IpAddr;
use tokio::sync::mpsc;

use super::nl::{self, Errno, ReqError};
use super::plan::{
    self, end_label, link_claimable, spec_problem, tunnel_claimable, tunnel_fixed_fields,
    Discrepancy, Orphan, Plan, VxcStatus,
};
use super::tbf::{self, TbfParams};
use super::{
    end_interface_name, owner_alias, DataplaneConfig, DataplaneError, IngressFilters, Observed,
    ObservedLink, ObservedVxlan, PipeFilter, RootQdisc, Side, TunnelSpec, VxcSpec,
    PIPE_FILTER_PRIO, TBF_HANDLE_MAJOR,
};

const TC_H_ROOT: u32 = 0xffff_ffff;
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;
const TBF_HANDLE: u32 = (TBF_HANDLE_MAJOR as u32) << 16;
const ETH_P_ALL: u16 = 0x0003;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_TC: u32 = 0x8;
const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;
const ENOENT: i32 = libc::ENOENT;
const EINVAL: i32 = libc::EINVAL;
const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectChange {
    Created,
    /// Fields changed in place (names of the fields).
    Changed(Vec<String>),
    /// Deleted (e.g. an owned link of the wrong kind before recreating it).
    Deleted,
}

/// One change made by `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub object: String,
    pub change: ObjectChange,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            ObjectChange::Created => write!(f, "created {}", self.object),
            ObjectChange::Deleted => write!(f, "deleted {}", self.object),
            ObjectChange::Changed(fields) => {
                write!(f, "changed {} ({})", self.object, fields.join(", "))
            }
        }
    }
}

/// What `apply` did; no changes means the kernel was already right and nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub vxc_id: String,
    pub changes: Vec<Change>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// One VXC's result in a convergence.
#[derive(Debug)]
pub enum VxcOutcome {
    Ok,
    Repaired(ApplyReport),
    /// Port interfaces absent: `(port, interface)`.
    Pending(Vec<(String, String)>),
    Failed(DataplaneError),
}

/// Result of a full convergence.
#[derive(Debug, Default)]
pub struct ConvergeReport {
    pub vxcs: Vec<(String, VxcOutcome)>,
    pub orphans_removed: Vec<Orphan>,
    /// Orphans that could not be removed, with the error.
    pub orphan_failures: Vec<(Orphan, DataplaneError)>,
    /// Port interfaces whose host IPv6 was switched off, with what was done.
    pub ports_quieted: Vec<(String, Vec<String>)>,
    /// Port interfaces where that failed.
    pub port_failures: Vec<(String, DataplaneError)>,
}

impl ConvergeReport {
    pub fn outcome(&self, id: &str) -> Option<&VxcOutcome> {
        self.vxcs.iter().find(|(v, _)| v == id).map(|(_, o)| o)
    }
}

/// Which kind of kernel object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelObject {
    Link,
    Qdisc,
    Filter,
    /// The kernel dropped events (`ENOBUFS` on the event socket): anything may have changed.
    EventsLost,
}

/// A link or tc change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub object: KernelObject,
    pub change: EventChange,
    pub ifindex: u32,
    /// The link name (link events only).
    pub name: Option<String>,
    /// vxcd's own change, not drift (see `dataplane/own.rs`).
    pub caused_by_vxcd: bool,
}

/// Kind of change in a [`KernelEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventChange {
    Added,
    Removed,
    Changed,
}

/// A step `apply` took, recorded to be undone if a later step fails.
#[derive(Debug, Clone)]
enum Undo {
    DeleteLink {
        index: u32,
        name: String,
    },
    RestoreFlags {
        index: u32,
        name: String,
        up: bool,
        promisc: bool,
    },
    RestoreLink {
        index: u32,
        name: String,
        mtu: u32,
        group: u32,
        alias: Option<String>,
    },
    DeleteTbf {
        index: u32,
        name: String,
    },
    RestoreTbf {
        index: u32,
        name: String,
        params: TbfParams,
    },
    DeleteIngress {
        index: u32,
        name: String,
    },
    DeleteFilter {
        index: u32,
        name: String,
    },
    RestoreFilter {
        index: u32,
        name: String,
        handle: u32,
        target: u32,
    },
    /// A pipe filter deleted to shut a VXC down, made again.
    CreateFilter {
        index: u32,
        name: String,
        target: u32,
    },
}

/// Steps of one apply: what to report and what to undo.
#[derive(Default)]
struct Journal {
    changes: Vec<Change>,
    undo: Vec<Undo>,
}

impl Journal {
    fn record(&mut self, object: String, change: ObjectChange, undo: Option<Undo>) {
        self.changes.push(Change { object, change });
        self.undo.extend(undo);
    }
}

/// The dataplane: one rtnetlink connection in the namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Dataplane {
    pub(super) handle: Handle,
    cfg: DataplaneConfig,
    /// The kernel runs one dump per netlink socket at a time (a second one gets EBUSY);
    /// other requests are pipelined freely.
    dump_lock: Arc<tokio::sync::Mutex<()>>,
    /// The port interfaces: kept free of the host's own IPv6 (no link-local address, so no ND,
    /// MLD or router solicitation leaves towards a customer) at every convergence.
    port_interfaces: Vec<String>,
    /// The changes vxcd sent, to tell its own kernel events from drift.
    own: Arc<super::own::OwnChanges>,
}

pub(super) fn kernel_err(action: &str, object: &str, e: ReqError) -> DataplaneError {
    match e {
        ReqError::Kernel(errno) => DataplaneError::Kernel {
            action: action.into(),
            object: object.into(),
            errno,
        },
        ReqError::Connection(m) => DataplaneError::Connection(format!("{action} {object}: {m}")),
    }
}

fn tc_msg(
    index: u32,
    handle: u32,
    parent: u32,
    info: u32,
    attributes: Vec<TcAttribute>,
) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = TcHandle::from(handle);
    msg.header.parent = TcHandle::from(parent);
    msg.header.info = info;
    msg.attributes = attributes;
    msg
}

fn filter_info() -> u32 {
    (u32::from(PIPE_FILTER_PRIO) << 16) | u32::from(ETH_P_ALL.to_be())
}

fn tbf_attrs(params: &TbfParams) -> Vec<TcAttribute> {
    vec![
        TcAttribute::Kind("tbf".into()),
        TcAttribute::Options(
            tbf::encode_options(params)
                .into_iter()
                .map(TcOption::Other)
                .collect(),
        ),
    ]
}

/// How often a long convergence logs how far it got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn pipe_filter_attrs(target: u32) -> Vec<TcAttribute> {
    match_all_redirect_attrs(target, TcMirrorActionType::EgressRedir)
}

/// A `u32` filter matching every frame, with a `mirred` redirect of it to `target`: to its
/// egress (the pipe between two VXC ends) or its ingress (the inspector's probe tap).
pub(crate) fn match_all_redirect_attrs(
    target: u32,
    redirect: TcMirrorActionType,
) -> Vec<TcAttribute> {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirred = TcMirror::default();
    mirred.generic = TcActionGeneric::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = redirect;
    mirred.ifindex = target;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];
    vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ]
}

fn link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

fn flags_msg(index: u32, up: bool, promisc: bool) -> LinkMessage {
    let mut msg = link_msg(index);
    msg.header.change_mask = LinkFlags::Up | LinkFlags::Promisc;
    let mut flags = LinkFlags::empty();
    if up {
        flags |= LinkFlags::Up;
    }
    if promisc {
        flags |= LinkFlags::Promisc;
    }
    msg.header.flags = flags;
    msg
}

fn parse_link(msg: LinkMessage) -> Option<ObservedLink> {
    let mut link = ObservedLink {
        index: msg.header.index,
        name: String::new(),
        parent: None,
        kind: None,
        vlan_id: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        group: 0,
        alias: None,
        addr_gen_mode: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Link(p) => link.parent = Some(p),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Group(g) => link.group = g,
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            link.vlan_id = v.iter().find_map(|x| match x {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            })
                        }
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(&v)),
                        _ => {}
                    }
                }
            }
            LinkAttribute::AfSpecUnspec(specs) => {
                for spec in specs {
                    if let AfSpecUnspec::Inet6(inet6) = spec {
                        for a in inet6 {
                            if let AfSpecInet6::AddrGenMode(m) = a {
                                link.addr_gen_mode = Some(u8::from(&m));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> ObservedVxlan {
    let mut out = ObservedVxlan::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => out.vni = Some(*id),
            InfoVxlan::Local(ip) => out.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => out.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Group(ip) => out.remote = Some(IpAddr::V4(*ip)),
            InfoVxlan::Group6(ip) => out.remote = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) => out.udp_port = Some(*p),
            InfoVxlan::Learning(l) => out.learning = Some(*l),
            InfoVxlan::Link(l) if *l != 0 => out.link = Some(*l),
            _ => {}
        }
    }
    out
}

/// The `IFLA_INFO_DATA` of vxcd's VXLAN device for a tunnel.
fn vxlan_attrs(t: &TunnelSpec, uplink: Option<u32>) -> Vec<InfoVxlan> {
    let mut attrs = vec![InfoVxlan::Id(t.vni)];
    attrs.push(match t.local {
        IpAddr::V4(ip) => InfoVxlan::Local(ip),
        IpAddr::V6(ip) => InfoVxlan::Local6(ip),
    });
    attrs.push(match t.remote {
        IpAddr::V4(ip) => InfoVxlan::Group(ip),
        IpAddr::V6(ip) => InfoVxlan::Group6(ip),
    });
    attrs.extend([
        InfoVxlan::Port(t.udp_port),
        InfoVxlan::Learning(false),
        InfoVxlan::Proxy(false),
        InfoVxlan::L2Miss(false),
        InfoVxlan::L3Miss(false),
    ]);
    if let Some(link) = uplink {
        attrs.push(InfoVxlan::Link(link));
    }
    attrs
}

/// Raw bytes of TCA_OPTIONS of a kind netlink-packet-route does not know (parsed as one
/// `DefaultNla` holding the whole nest).
fn raw_options(attrs: &[TcAttribute]) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(nla) => {
                let mut buf = vec![0u8; nla.value_len()];
                nla.emit_value(&mut buf);
                Some(buf)
            }
            _ => None,
        }),
        _ => None,
    })
}

fn kind_of(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn parse_pipe_filter(handle: u32, attrs: &[TcAttribute]) -> PipeFilter {
    let mut filter = PipeFilter {
        handle,
        kind: kind_of(attrs),
        redirect_to: None,
        match_all: false,
    };
    for attr in attrs {
        let TcAttribute::Options(opts) = attr else {
            continue;
        };
        for opt in opts {
            match opt {
                TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                    filter.match_all = sel.flags.contains(TcU32SelectorFlags::Terminal)
                        && !sel.keys.is_empty()
                        && sel.keys.iter().all(|k| k.mask == 0);
                }
                TcOption::U32(TcFilterU32Option::Action(actions)) => {
                    for action in actions {
                        for a in &action.attributes {
                            let TcActionAttribute::Options(aopts) = a else {
                                continue;
                            };
                            for ao in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = ao {
                                    if m.eaction == TcMirrorActionType::EgressRedir
                                        && m.generic.action == TcActionType::Stolen
                                    {
                                        filter.redirect_to = Some(m.ifindex);
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    filter
}

/// Files a qdisc read from the kernel: a root qdisc (TBF options decoded) or an ingress one.
fn note_qdisc(q: TcMessage, root_qdiscs: &mut HashMap<u32, RootQdisc>, ingress: &mut HashSet<u32>) {
    let index = q.header.index as u32;
    let parent = u32::from(q.header.parent);
    let kind = kind_of(&q.attributes);
    if parent == TC_H_ROOT {
        let tbf = if kind == "tbf" {
            raw_options(&q.attributes).and_then(|o| tbf::decode_options(&o))
        } else {
            None
        };
        root_qdiscs.insert(
            index,
            RootQdisc {
                handle: u32::from(q.header.handle),
                kind,
                tbf,
            },
        );
    } else if parent == TC_H_INGRESS && kind == "ingress" {
        ingress.insert(index);
    }
}

impl Dataplane {
    /// Opens an rtnetlink connection in the calling thread's network namespace and spawns
    /// its task on the current tokio runtime.
    pub async fn connect(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        let (mut conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DataplaneError::Connection(format!("opening rtnetlink socket: {e}")))?;
        // Done messages carry NLM_F_DUMP_INTR too; the dump helper needs to see them.
        conn.set_forward_done(true);
        // Bound now, so that its port id is known: tc events carry the id of the socket whose
        // request caused them, which tells vxcd's own changes from others'.
        let own = Arc::new(super::own::OwnChanges::default());
        if let Ok(addr) = {
            use netlink_sys::AsyncSocket;
            conn.socket_mut().socket_mut().bind_auto()
        } {
            own.set_port_id(addr.port_number());
        }
        tokio::spawn(conn);
        Ok(Self {
            handle,
            cfg,
            dump_lock: Arc::new(tokio::sync::Mutex::new(())),
            port_interfaces: Vec::new(),
            own,
        })
    }

    /// The port interfaces whose host IPv6 every convergence keeps off ([`Dataplane::quiet_port`]).
    pub fn set_port_interfaces(&mut self, interfaces: Vec<String>) {
        self.port_interfaces = interfaces;
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    async fn dump(
        &self,
        payload: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        nl::dump(&self.handle, payload, what).await
    }

    async fn ack(&self, payload: RouteNetlinkMessage, flags: u16) -> Result<(), ReqError> {
        nl::ack(&self.handle, payload, flags).await
    }

    /// Reads the kernel: one link dump, one qdisc dump, and filter dumps of the ingress
    /// qdiscs only; interrupted dumps are retried.
    pub async fn observe(&self) -> Result<Observed, DataplaneError> {
        let links = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                "links",
            )
            .await?;
        let qdiscs = self
            .dump(
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
                "qdiscs",
            )
            .await?;
        let links: Vec<ObservedLink> = links
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => parse_link(l),
                _ => None,
            })
            .collect();
        let mut root_qdiscs = HashMap::new();
        let mut ingress = HashSet::new();
        for m in qdiscs {
            if let RouteNetlinkMessage::NewQueueDiscipline(q) = m {
                note_qdisc(q, &mut root_qdiscs, &mut ingress);
            }
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
            if let Some(q) = q? {
                note_qdisc(q, &mut root_qdiscs, &mut ingress);
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
    /// IPv6 is off on it (address generation none: see [`Dataplane::quiet_port`]).
    pub async fn port_ipv6_off(&self, name: &str) -> Result<Option<bool>, DataplaneError> {
        Ok(self.read_link_named(name).await?.map(|l| {
            l.addr_gen_mode
                .is_none_or(|m| m == plan::ADDR_GEN_MODE_NONE)
        }))
    }

    /// One link by name; `None` when no link has that name (`ENODEV`, or a link that only
    /// has it as an alternative name: a full dump would not show it under that name).
    async fn read_link_named(&self, name: &str) -> Result<Option<ObservedLink>, DataplaneError> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_string())];
        Ok(self.read_link(msg).await?.filter(|l| l.name == name))
    }

    /// One link, asked by ifindex or `IFLA_IFNAME` in `msg`; `None` when it does not exist.
    async fn read_link(&self, msg: LinkMessage) -> Result<Option<ObservedLink>, DataplaneError> {
        let what = match msg.attributes.first() {
            Some(LinkAttribute::IfName(name)) => format!("link {name}"),
            _ => format!("link ifindex {}", msg.header.index),
        };
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
    async fn read_qdisc(
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
    async fn read_filters(
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

    async fn dump_ingress_filters(&self, index: u32) -> Result<IngressFilters, DataplaneError> {
        let req = tc_msg(index, 0, INGRESS_HANDLE, 0, vec![]);
        let what = format!("ingress filters of ifindex {index}");
        let msgs = self
            .dump(RouteNetlinkMessage::GetTrafficFilter(req), &what)
            .await?;
        let mut out = IngressFilters::default();
        let mut foreign_prios = HashSet::new();
        for m in msgs {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
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

    /// Desired VXCs vs observed kernel (pure).
    pub fn plan(desired: &[VxcSpec], observed: &Observed) -> Plan {
        plan::plan(desired, observed)
    }

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
    async fn apply_from(&self, vxc: &VxcSpec, obs: &Observed) -> Result<Journal, DataplaneError> {
        let mut journal = Journal::default();
        match self.apply_steps(vxc, obs, &mut journal).await {
            Ok(()) => Ok(journal),
            Err(e) => Err(self.rollback(e, journal.undo).await),
        }
    }

    async fn apply_steps(
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
    async fn unjoin(
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

    /// Makes one end's link, TBF and ingress qdisc right; returns its ifindex and whether
    /// those objects were just created (so the snapshot says nothing about them).
    async fn ensure_end(
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
                self.fix_vlan_attrs(vxc, side, l, parent, &label, j).await?;
            }
            if !l.up || !l.promisc {
                self.ack(
                    RouteNetlinkMessage::SetLink(flags_msg(index, true, true)),
                    0,
                )
                .await
                .map_err(|e| kernel_err("setting up and promisc on", &label, e))?;
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
                        index,
                        name: name.clone(),
                        up: l.up,
                        promisc: l.promisc,
                    }),
                );
            }
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
        // Ingress qdisc.
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
                    name: name.clone(),
                },
                j,
            )
            .await?;
        }
        Ok((index, fresh))
    }

    /// Makes a tunnel end's VXLAN device and its ingress qdisc right; returns its ifindex and
    /// whether it was just made. Settings the kernel cannot change in place (VNI, addresses,
    /// port, learning, uplink) make it again; the MTU, alias and IPv6 mode are fixed in place.
    async fn ensure_tunnel(
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
    async fn fix_tunnel_attrs(
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
    async fn create_tunnel(
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

    /// Deletes an owned link that holds the end's VLAN on its parent under another name
    /// (found in `obs`); a foreign one is an error naming it. Returns whether it deleted one.
    async fn free_vlan(
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
    async fn create_vlan_in(
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
    async fn create_vlan(
        &self,
        vxc: &VxcSpec,
        side: Side,
        parent: &ObservedLink,
        vlan: u16,
        name: &str,
        label: &str,
        j: &mut Journal,
    ) -> Result<u32, DataplaneError> {
        let mut msg = LinkMessage::default();
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
        j.record(
            format!("link {label}"),
            ObjectChange::Created,
            Some(Undo::DeleteLink {
                index,
                name: name.into(),
            }),
        );
        // The kernel ignores IFLA_IFALIAS in RTM_NEWLINK; the address generation mode must
        // be set before the link goes up, or the link-local address is already made.
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
        .map_err(|e| kernel_err("setting up and promisc on", label, e))?;
        Ok(index)
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
                Ok(()) => done.push("IPv6 addr_gen_mode none".to_owned()),
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
            )
            .await?;
        for m in addresses {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
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

    /// Fixes MTU, group, alias and IPv6 mode of an existing owned VLAN link.
    async fn fix_vlan_attrs(
        &self,
        vxc: &VxcSpec,
        side: Side,
        l: &ObservedLink,
        parent: &ObservedLink,
        label: &str,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let alias = owner_alias(&vxc.id, side);
        let mut msg = link_msg(l.index);
        let mut fields = vec![];
        if l.mtu != parent.mtu {
            msg.attributes.push(LinkAttribute::Mtu(parent.mtu));
            fields.push(format!("mtu {}", parent.mtu));
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
        Ok(())
    }

    async fn create_tbf(
        &self,
        index: u32,
        name: &str,
        params: &TbfParams,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, TBF_HANDLE, TC_H_ROOT, 0, tbf_attrs(params));
        self.create_tc_object(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}"),
            Undo::DeleteTbf {
                index,
                name: name.into(),
            },
            j,
        )
        .await
    }

    /// Creates a qdisc or filter that must not exist yet (NLM_F_EXCL) and journals it with the
    /// `undo` that takes it away again.
    async fn create_tc_object(
        &self,
        payload: RouteNetlinkMessage,
        object: String,
        undo: Undo,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        self.ack(payload, NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map_err(|e| kernel_err("creating", &object, e))?;
        j.record(object, ObjectChange::Created, Some(undo));
        Ok(())
    }

    async fn ensure_filter(
        &self,
        index: u32,
        name: &str,
        target: u32,
        existing: Option<PipeFilter>,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let object = format!("pipe filter on {name}");
        match existing {
            Some(f) if f.kind == "u32" && f.match_all && f.redirect_to == Some(target) => Ok(()),
            Some(f) if f.kind == "u32" && f.handle & 0xfff != 0 => {
                let msg = tc_msg(
                    index,
                    f.handle,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                self.ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_REPLACE)
                    .await
                    .map_err(|e| kernel_err("replacing", &object, e))?;
                let undo = f
                    .redirect_to
                    .filter(|_| f.match_all)
                    .map(|t| Undo::RestoreFilter {
                        index,
                        name: name.into(),
                        handle: f.handle,
                        target: t,
                    });
                j.record(
                    object,
                    ObjectChange::Changed(vec![format!("redirect to {}", obs.name_of(target))]),
                    undo,
                );
                Ok(())
            }
            other => {
                if other.is_some() {
                    self.delete_filter(index, name).await?;
                    j.record(object.clone(), ObjectChange::Deleted, None);
                }
                let msg = tc_msg(
                    index,
                    0,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                self.create_tc_object(
                    RouteNetlinkMessage::NewTrafficFilter(msg),
                    object,
                    Undo::DeleteFilter {
                        index,
                        name: name.into(),
                    },
                    j,
                )
                .await
            }
        }
    }

    /// Ok on success or when the object is already gone.
    fn gone_ok(r: Result<(), ReqError>, action: &str, object: &str) -> Result<(), DataplaneError> {
        match r {
            Ok(()) => Ok(()),
            Err(ReqError::Kernel(Errno(e))) if e == ENOENT || e == ENODEV || e == EINVAL => Ok(()),
            Err(e) => Err(kernel_err(action, object, e)),
        }
    }

    async fn delete_link(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let r = self
            .ack(RouteNetlinkMessage::DelLink(link_msg(index)), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("link {name}"))
    }

    async fn delete_tbf(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
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

    async fn delete_ingress(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, INGRESS_HANDLE, TC_H_INGRESS, 0, vec![]);
        let r = self
            .ack(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("ingress qdisc on {name}"))
    }

    async fn delete_filter(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, 0, INGRESS_HANDLE, filter_info(), vec![]);
        let r = self
            .ack(RouteNetlinkMessage::DelTrafficFilter(msg), 0)
            .await;
        Self::gone_ok(r, "deleting", &format!("pipe filter on {name}"))
    }

    async fn undo_one(&self, step: Undo) -> Result<(), DataplaneError> {
        match step {
            Undo::DeleteLink { index, name } => self.delete_link(index, &name).await,
            Undo::RestoreFlags {
                index,
                name,
                up,
                promisc,
            } => {
                let r = self
                    .ack(
                        RouteNetlinkMessage::SetLink(flags_msg(index, up, promisc)),
                        0,
                    )
                    .await;
                Self::gone_ok(r, "restoring flags of", &format!("link {name}"))
            }
            Undo::RestoreLink {
                index,
                name,
                mtu,
                group,
                alias,
            } => {
                let mut msg = link_msg(index);
                msg.attributes = vec![
                    LinkAttribute::Mtu(mtu),
                    LinkAttribute::Group(group),
                    LinkAttribute::IfAlias(alias.unwrap_or_default()),
                ];
                let r = self.ack(RouteNetlinkMessage::SetLink(msg), 0).await;
                Self::gone_ok(r, "restoring", &format!("link {name}"))
            }
            Undo::DeleteTbf { index, name } => self.delete_tbf(index, &name).await,
            Undo::RestoreTbf {
                index,
                name,
                params,
            } => {
                let msg = tc_msg(index, TBF_HANDLE, TC_H_ROOT, 0, tbf_attrs(&params));
                let r = self
                    .ack(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_REPLACE)
                    .await;
                Self::gone_ok(
                    r,
                    "restoring",
                    &format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}"),
                )
            }
            Undo::DeleteIngress { index, name } => self.delete_ingress(index, &name).await,
            Undo::DeleteFilter { index, name } => self.delete_filter(index, &name).await,
            Undo::CreateFilter {
                index,
                name,
                target,
            } => {
                let msg = tc_msg(
                    index,
                    0,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                let r = self
                    .ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
                    .await;
                Self::gone_ok(r, "restoring", &format!("pipe filter on {name}"))
            }
            Undo::RestoreFilter {
                index,
                name,
                handle,
                target,
            } => {
                let msg = tc_msg(
                    index,
                    handle,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                let r = self
                    .ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_REPLACE)
                    .await;
                Self::gone_ok(r, "restoring", &format!("pipe filter on {name}"))
            }
        }
    }

    /// Undoes `steps` in reverse order; returns `cause`, wrapped if something stayed behind.
    async fn rollback(&self, cause: DataplaneError, steps: Vec<Undo>) -> DataplaneError {
        let mut leftovers = Vec::new();
        for step in steps.into_iter().rev() {
            if let Err(e) = self.undo_one(step).await {
                leftovers.push(e.to_string());
            }
        }
        if leftovers.is_empty() {
            cause
        } else {
            DataplaneError::RollbackIncomplete {
                cause: Box::new(cause),
                leftovers,
            }
        }
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

    async fn remove_ends(&self, vxc: &VxcSpec, sides: &[Side]) -> Result<(), DataplaneError> {
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

    async fn remove_port_objects(
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

    async fn remove_orphan(&self, obs: &Observed, orphan: &Orphan) -> Result<(), DataplaneError> {
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
        for port in &self.port_interfaces {
            let Some(link) = obs.link_by_name(port) else {
                continue;
            };
            match self.quiet_port(link).await {
                Ok(done) if done.is_empty() => {}
                Ok(done) => report.ports_quieted.push((port.clone(), done)),
                Err(e) => report.port_failures.push((port.clone(), e)),
            }
        }
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

    /// Subscribes to link and tc notifications on a second socket. The receiver yields
    /// small events; dropping it ends the subscription at the next event.
    pub async fn events(&self) -> Result<mpsc::Receiver<KernelEvent>, DataplaneError> {
        self.events_with_buffer(0).await
    }

    /// [`Dataplane::events`] with the event socket's receive buffer set to `rcvbuf` bytes (0: the
    /// kernel's default). A small one makes bursts overflow it, which tests use.
    pub async fn events_with_buffer(
        &self,
        rcvbuf: usize,
    ) -> Result<mpsc::Receiver<KernelEvent>, DataplaneError> {
        use netlink_sys::{AsyncSocket, SocketAddr};
        let (mut conn, handle, mut messages) = rtnetlink::new_connection().map_err(|e| {
            DataplaneError::Connection(format!("opening rtnetlink event socket: {e}"))
        })?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_TC))
            .map_err(|e| {
                DataplaneError::Connection(format!("subscribing to link and tc events: {e}"))
            })?;
        if rcvbuf > 0 {
            conn.socket_mut()
                .socket_mut()
                .set_rx_buf_sz(rcvbuf)
                .map_err(|e| {
                    DataplaneError::Connection(format!("sizing the event socket's buffer: {e}"))
                })?;
        }
        tokio::spawn(conn);
        let (tx, rx) = mpsc::channel(4096);
        let own = self.own.clone();
        tokio::spawn(async move {
            // The handle keeps the connection task alive as long as events are wanted.
            let _handle = handle;
            while let Some((msg, _)) = messages.next().await {
                let port_id = msg.header.port_number;
                let event = match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => to_event(inner).map(|mut e| {
                        e.caused_by_vxcd = own.caused(&e, port_id);
                        e
                    }),
                    // netlink-proto turns ENOBUFS into an overrun message; the socket goes on.
                    NetlinkPayload::Overrun(_) => Some(KernelEvent {
                        object: KernelObject::EventsLost,
                        change: EventChange::Changed,
                        ifindex: 0,
                        name: None,
                        caused_by_vxcd: false,
                    }),
                    _ => None,
                };
                if let Some(event) = event {
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Whether a VXC is right in `obs`; errors for what makes it impossible.
fn vxc_status_ok(vxc: &VxcSpec, obs: &Observed) -> Result<bool, DataplaneError> {
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
fn verify_error(vxc: &VxcSpec, obs: &Observed) -> DataplaneError {
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

fn to_event(msg: RouteNetlinkMessage) -> Option<KernelEvent> {
    let link_event = |l: &LinkMessage, change: EventChange| KernelEvent {
        object: KernelObject::Link,
        change,
        ifindex: l.header.index,
        name: l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }),
        caused_by_vxcd: false,
    };
    let tc_event = |t: &TcMessage, object: KernelObject, change: EventChange| KernelEvent {
        object,
        change,
        ifindex: t.header.index as u32,
        name: None,
        caused_by_vxcd: false,
    };
    Some(match &msg {
        // A link's registration is announced with every flag marked changed.
        RouteNetlinkMessage::NewLink(l) if l.header.change_mask.bits() == u32::MAX => {
            link_event(l, EventChange::Added)
        }
        RouteNetlinkMessage::NewLink(l) => link_event(l, EventChange::Changed),
        RouteNetlinkMessage::DelLink(l) => link_event(l, EventChange::Removed),
        RouteNetlinkMessage::NewQueueDiscipline(t) => {
            tc_event(t, KernelObject::Qdisc, EventChange::Changed)
        }
        RouteNetlinkMessage::DelQueueDiscipline(t) => {
            tc_event(t, KernelObject::Qdisc, EventChange::Removed)
        }
        RouteNetlinkMessage::NewTrafficFilter(t) => {
            tc_event(t, KernelObject::Filter, EventChange::Changed)
        }
        RouteNetlinkMessage::DelTrafficFilter(t) => {
            tc_event(t, KernelObject::Filter, EventChange::Removed)
        }
        _ => return None,
    })
}
