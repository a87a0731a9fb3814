//! vxcd's netlink dataplane: desired VXCs → plan → apply → verify, over rtnetlink only
//! (no `ip`/`tc` processes).
//!
//! # Contract
//! The daemon hands in plain [`VxcSpec`]s (id, rate, two [`EndSpec`]s). [`Dataplane::apply`]
//! converges one VXC atomically and verifies it by reading back; [`Dataplane::remove`]
//! takes it down; [`Dataplane::observe`] + [`Dataplane::plan`] (pure) tell what differs;
//! [`Dataplane::converge`] repairs everything (startup, drift) and removes orphans;
//! [`Dataplane::events`] streams link/tc change notifications to trigger convergence.
//!
//! # Kernel objects per VXC end
//! - **End interface.** Tagged end: an 802.1Q subinterface of the port interface named
//!   [`end_interface_name`] (`{parent}.{vlan}` when it fits 15 chars, else
//!   `vx{fnv1a32(parent):08x}.{vlan}`), up, MTU of the parent, IPv6 address generation
//!   off (`addr_gen_mode none`: no link-local address, no ND/MLD traffic), promiscuous
//!   (propagates to the parent so a real NIC accepts the customers' MACs).
//!   Untagged end: the port interface itself, set up and promiscuous, never deleted.
//! - **Pipe.** An ingress qdisc (`ffff:`) on each end interface holding one `u32` filter,
//!   protocol all, at prio [`PIPE_FILTER_PRIO`], matching everything (one zero key,
//!   terminal) with `mirred egress redirect` to the other end's interface (action
//!   stolen). Every frame entering one end leaves the other; nothing is learnt or flooded.
//! - **Shaping.** A root TBF with handle [`TBF_HANDLE_MAJOR`]`:` on each end interface
//!   (egress, so frames redirected from the other end are shaped: both directions are
//!   limited). Parameters from [`BurstPolicy`]; options as raw attributes
//!   (`TCA_TBF_PARMS`, `TCA_TBF_BURST`, `TCA_TBF_RATE64` from 2^32 bytes/s). A rate
//!   change is an `RTM_NEWQDISC` with `NLM_F_REPLACE` on the same handle: in place.
//!
//! # Ownership
//! vxcd touches only what it marked or what its handles identify:
//! - a link is owned when `IFLA_GROUP == owner_group` **and** `IFLA_IFALIAS` starts with
//!   `vxcd:` (the alias is `vxcd:<vxc-id>:<a|b>`). The kernel ignores `IFLA_IFALIAS` in
//!   `RTM_NEWLINK`, so the alias is set right after creation; a link in the owner group
//!   without alias, with exactly the name/parent/VLAN vxcd would create, is adopted as a
//!   half-created vxcd link (crash between the two steps);
//! - a root qdisc is owned when its handle major is [`TBF_HANDLE_MAJOR`]; a root qdisc with
//!   handle `0:` is the kernel default and may be replaced; any other root qdisc is foreign
//!   and makes the end fail with [`DataplaneError::Foreign`];
//! - a filter is owned when it sits in the ingress qdisc at prio [`PIPE_FILTER_PRIO`]; the
//!   ingress qdisc itself (its handle is always `ffff:`) counts as owned when no other
//!   filter is in it, and is only deleted then.
//!
//! Foreign links are never modified or deleted: a foreign link holding the end's name or
//! the VLAN on that parent is an error naming it.
//!
//! # Transport
//! One rtnetlink socket per `Dataplane`. Requests that expect an ack are pipelined on it
//! (`DataplaneConfig::max_in_flight` at once); dumps are serialized, because the kernel
//! runs one dump per socket and answers a second with `EBUSY`. Dumps flagged
//! `NLM_F_DUMP_INTR` (on any part or on the final `NLMSG_DONE`) are restarted.
//!
//! # What each operation reads
//! - [`Dataplane::observe`] (used by `converge`: startup, periodic, drift): the complete
//!   snapshot, one link dump + one qdisc dump + one filter dump per interface that has an
//!   ingress qdisc (filter dumps need an ifindex). Every lookup in a snapshot is by hash
//!   map, so plan and converge are linear in links + VXCs per pass.
//! - [`Dataplane::observe_vxc`] (used by `apply`, before and to verify, and by `remove`):
//!   a partial snapshot of one VXC, a bounded number of requests whatever else the host
//!   holds: `RTM_GETLINK` by name (not a dump) for each end's port interface and end
//!   interface; `RTM_GETQDISC` (not a dump; the kernel's qdisc dump ignores `tcm_ifindex`,
//!   checked on 6.18) for the root and ingress qdisc of each end interface; the filter dump
//!   of each end's ingress qdisc; and, only when they are not among those, the links a read
//!   link or filter names by ifindex (a subinterface's parent, a redirect target), for
//!   messages. A qdisc `RTM_GETQDISC` is answered to the asker only with `NLM_F_ECHO`, and
//!   the kernel also sends that answer to `RTNLGRP_TC` listeners: subscribers of
//!   [`Dataplane::events`] see one qdisc event per qdisc read.
//! - A partial snapshot cannot show another link that already uses an end's VLAN on its
//!   parent (that needs every link of the parent). `apply` lets the kernel tell: creating
//!   the subinterface answers `EEXIST`, and only then a complete `observe` names that link
//!   (foreign: an error naming it; vxcd-owned under another name: deleted, creation
//!   retried). Recreating an owned link that has the end's name but the wrong VLAN, parent
//!   or kind also reads everything first, so that a foreign VLAN holder stops it before the
//!   deletion, as from a complete snapshot. Both are rare repair paths.
//! - A partial snapshot shows no orphans: [`Dataplane::plan`] looks for them in complete
//!   snapshots only.
//!
//! # Atomicity and verification
//! `apply` records every change it makes (created link/qdisc/filter, previous link flags,
//! previous TBF/filter parameters) and undoes them in reverse order if a later step
//! fails, including the final read-back verification. `converge` applies VXCs from one
//! snapshot with bounded pipelining and verifies all of them with one more snapshot; a
//! VXC failing that verification is reported failed (its changes are not rolled back,
//! the next convergence retries).

mod apply;
mod conn;
mod converge;
mod drift;
mod dump;
mod end;
mod events;
mod msg;
mod nl;
mod observe;
mod own;
mod plan;
mod remove;
mod report;
mod stats;
pub mod tbf;
mod tc;
mod tunnel;
mod undo;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

pub use converge::PortsQuieted;
pub use events::{EventChange, KernelEvent, KernelObject};
pub use nl::Errno;
pub use plan::{Discrepancy, Orphan, Plan, VxcPlan, VxcStatus};
pub use report::{ApplyReport, Change, ConvergeReport, ObjectChange, VxcOutcome};
pub use stats::{EndCounters, InterfaceCounters, ShaperCounters};
pub use tbf::{BurstPolicy, TbfParams};

/// Handle major of vxcd's root TBF (`0x7863` = "xc"); the minor is 0.
pub const TBF_HANDLE_MAJOR: u16 = 0x7863;
/// Priority of vxcd's pipe filter in an end's ingress qdisc.
pub const PIPE_FILTER_PRIO: u16 = 0x7863;
/// Prefix of `IFLA_IFALIAS` on vxcd-owned links.
pub const ALIAS_PREFIX: &str = "vxcd:";
/// Default `IFLA_GROUP` of vxcd-owned links.
pub const DEFAULT_OWNER_GROUP: u32 = 0x7863;

/// The group vxcd moves its links into just before deleting them all at once
/// ([`Dataplane::remove_many`]): the owner group with bit 30 flipped (30819 -> 1073772643; bit
/// 31 would put it beyond what iproute2 can show). A link there that carries vxcd's alias is
/// still vxcd's (a crash between the move and the deletion leaves an orphan or an end to adopt,
/// never a leak).
pub fn doomed_group(owner_group: u32) -> u32 {
    owner_group ^ 0x4000_0000
}

/// One end of a VXC as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndSpec {
    /// The port's name (for messages).
    pub port: String,
    /// The port's kernel interface (the parent of a tagged end); for a tunnel end, the VXLAN
    /// device vxcd makes ([`tunnel_interface_name`]).
    pub interface: String,
    /// `None`: untagged, the port interface itself is the end (always `None` for a tunnel).
    pub vlan: Option<u16>,
    /// `Some`: the end is on a peer edge host, reached through a VXLAN device of its own.
    pub tunnel: Option<TunnelSpec>,
}

/// The VXLAN device carrying a VXC to the peer holding its other end: unicast to `remote`, no
/// learning, no flooding, IPv6 address generation off, unshaped (the peer shapes what leaves
/// towards its customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub vni: u32,
    /// This host's core (VTEP) address.
    pub local: IpAddr,
    /// The peer's core address.
    pub remote: IpAddr,
    /// UDP destination port.
    pub udp_port: u16,
    /// The uplink towards the core (`[core] interface`): the tunnel is bound to it and its MTU
    /// is the uplink's less the encapsulation. `None`: the kernel's route decides, MTU default.
    pub uplink: Option<String>,
}

impl TunnelSpec {
    /// Bytes VXLAN adds to each frame: outer Ethernet 14 + IP (20 or 40) + UDP 8 + VXLAN 8.
    pub fn overhead(&self) -> u32 {
        match self.local {
            IpAddr::V4(_) => 50,
            IpAddr::V6(_) => 70,
        }
    }
}

/// The VXLAN device of a VNI: `vxc{vni}` (at most 11 characters).
pub fn tunnel_interface_name(vni: u32) -> String {
    format!("vxc{vni}")
}

/// A VXC: two ends joined by a pipe, shaped at `rate_mbps` in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxcSpec {
    pub id: String,
    pub rate_mbps: u32,
    pub a: EndSpec,
    pub b: EndSpec,
    /// Shut down: both ends and their shapers stay, the pipe filters do not (no frame crosses).
    pub shutdown: bool,
}

/// Which end of a VXC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

impl VxcSpec {
    pub fn end(&self, side: Side) -> &EndSpec {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

/// Dataplane settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// `IFLA_GROUP` stamped on vxcd-created links (with the `vxcd:` alias).
    pub owner_group: u32,
    /// TBF bucket/queue sizing.
    pub burst: BurstPolicy,
    /// How many requests (or dumps) are in flight at once on the socket.
    pub max_in_flight: usize,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            owner_group: DEFAULT_OWNER_GROUP,
            burst: BurstPolicy::default(),
            max_in_flight: 64,
        }
    }
}

/// 32-bit FNV-1a.
fn fnv1a32(data: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in data {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Kernel interface name of an end: the parent itself when untagged; `{parent}.{vlan}`
/// when that fits the 15 characters of IFNAMSIZ; else `vx{fnv1a32(parent):08x}.{vlan}`.
pub fn end_interface_name(parent: &str, vlan: Option<u16>) -> String {
    match vlan {
        None => parent.to_string(),
        Some(vlan) => {
            let plain = format!("{parent}.{vlan}");
            if plain.len() <= 15 {
                plain
            } else {
                format!("vx{:08x}.{vlan}", fnv1a32(parent.as_bytes()))
            }
        }
    }
}

/// The alias marking a vxcd-owned end link.
pub fn owner_alias(vxc_id: &str, side: Side) -> String {
    format!("{ALIAS_PREFIX}{vxc_id}:{}", side.as_str())
}

/// The VXC id an [`owner_alias`] names; `None` for an alias that is not one.
pub fn alias_vxc_id(alias: &str) -> Option<&str> {
    let (id, _side) = alias.strip_prefix(ALIAS_PREFIX)?.rsplit_once(':')?;
    (!id.is_empty()).then_some(id)
}

/// Errors, each naming the object and the kernel's cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataplaneError {
    /// The port interface of an end does not exist: the VXC is pending.
    #[error("port {port}: interface {interface} is missing")]
    PortMissing { port: String, interface: String },
    /// Creating a VLAN subinterface was refused because the kernel has no 802.1Q.
    #[error("creating {name} (VLAN {vlan} on {parent}): kernel refused: {errno}; this kernel has no 802.1Q support")]
    No8021q {
        name: String,
        vlan: u16,
        parent: String,
        errno: Errno,
    },
    /// The kernel refused a request.
    #[error("{action} {object}: kernel refused: {errno}")]
    Kernel {
        action: String,
        object: String,
        errno: Errno,
    },
    /// An object vxcd does not own is in the way.
    #[error("{object} is not owned by vxcd ({detail}); refusing to modify it")]
    Foreign { object: String, detail: String },
    /// Read back after apply does not match.
    #[error("verify {object}: {field} expected {expected}, observed {observed}")]
    Verify {
        object: String,
        field: String,
        expected: String,
        observed: String,
    },
    /// The spec cannot be realised (e.g. rate 0, both ends on the same interface).
    #[error("VXC {id}: invalid spec: {reason}")]
    InvalidSpec { id: String, reason: String },
    /// A dump kept being interrupted by concurrent changes.
    #[error("dumping {what}: interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted { what: String, attempts: usize },
    /// The netlink socket or its task failed.
    #[error("netlink connection: {0}")]
    Connection(String),
    /// A step failed and undoing the earlier steps failed too.
    #[error("{cause}; rollback incomplete: {}", leftovers.join("; "))]
    RollbackIncomplete {
        cause: Box<DataplaneError>,
        leftovers: Vec<String>,
    },
}

impl DataplaneError {
    /// The error (or the cause of a failed rollback) says a port interface is missing.
    pub fn is_port_missing(&self) -> bool {
        match self {
            Self::PortMissing { .. } => true,
            Self::RollbackIncomplete { cause, .. } => cause.is_port_missing(),
            _ => false,
        }
    }

    /// The error (or the cause of a failed rollback) says the kernel lacks 802.1Q.
    pub fn lacks_8021q(&self) -> bool {
        match self {
            Self::No8021q { .. } => true,
            Self::RollbackIncomplete { cause, .. } => cause.lacks_8021q(),
            _ => false,
        }
    }
}

/// A link as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    /// `IFLA_LINK`: the parent of a VLAN (or the peer of a veth).
    pub parent: Option<u32>,
    /// `IFLA_INFO_KIND`, e.g. "vlan", "veth".
    pub kind: Option<String>,
    pub vlan_id: Option<u16>,
    pub mtu: u32,
    pub up: bool,
    pub promisc: bool,
    pub group: u32,
    pub alias: Option<String>,
    /// IPv6 `addr_gen_mode` (1 = none) if reported.
    pub addr_gen_mode: Option<u8>,
    /// Decoded when `kind == "vxlan"`.
    pub vxlan: Option<ObservedVxlan>,
}

/// A VXLAN device's settings as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedVxlan {
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    /// The unicast remote (`IFLA_VXLAN_GROUP` holds it when it is not multicast).
    pub remote: Option<IpAddr>,
    pub udp_port: Option<u16>,
    pub learning: Option<bool>,
    /// `IFLA_VXLAN_LINK`: the uplink it is bound to.
    pub link: Option<u32>,
}

impl ObservedLink {
    /// Marked as vxcd's: owner group (or its doomed twin, [`doomed_group`]) and `vxcd:` alias.
    pub fn is_owned(&self, owner_group: u32) -> bool {
        (self.group == owner_group || self.group == doomed_group(owner_group))
            && self
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
    }
}

/// The root (egress) qdisc of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    pub handle: u32,
    pub kind: String,
    /// Decoded when `kind == "tbf"`.
    pub tbf: Option<TbfParams>,
}

impl RootQdisc {
    pub fn is_ours(&self) -> bool {
        self.handle >> 16 == u32::from(TBF_HANDLE_MAJOR)
    }
}

/// vxcd's pipe filter as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeFilter {
    /// Full u32 handle (e.g. 800::800), needed to replace it in place.
    pub handle: u32,
    pub kind: String,
    /// Target of a `mirred egress redirect`, if that is the filter's action.
    pub redirect_to: Option<u32>,
    /// Matches every frame (terminal, all keys with mask 0).
    pub match_all: bool,
}

/// Filters in one ingress qdisc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressFilters {
    pub ours: Option<PipeFilter>,
    /// Filters at other priorities (not vxcd's).
    pub foreign: usize,
}

/// A snapshot of the kernel state vxcd cares about, with the ownership rules of the
/// `Dataplane` that read it: complete ([`Dataplane::observe`], every link and qdisc of the
/// namespace) or partial ([`Dataplane::observe_vxc`], only the objects of one VXC).
#[derive(Debug, Clone)]
pub struct Observed {
    pub config: DataplaneConfig,
    pub links: Vec<ObservedLink>,
    /// Root qdisc per ifindex.
    pub root_qdiscs: HashMap<u32, RootQdisc>,
    /// Ifindexes with an ingress qdisc.
    pub ingress: HashSet<u32>,
    /// Filters per ifindex (dumped only where there is an ingress qdisc).
    pub filters: HashMap<u32, IngressFilters>,
    by_name: HashMap<String, usize>,
    by_index: HashMap<u32, usize>,
    by_vlan: HashMap<(u32, u16), usize>,
    complete: bool,
}

impl Observed {
    /// Builds a complete snapshot (every link and qdisc of the namespace) and its indexes.
    pub fn new(
        config: DataplaneConfig,
        links: Vec<ObservedLink>,
        root_qdiscs: HashMap<u32, RootQdisc>,
        ingress: HashSet<u32>,
        filters: HashMap<u32, IngressFilters>,
    ) -> Self {
        Self::build(config, links, root_qdiscs, ingress, filters, true)
    }

    /// Builds a partial snapshot: only the links, qdiscs and filters given were read, so an
    /// object absent from it may still exist (e.g. another link using a VLAN on a parent).
    pub fn partial(
        config: DataplaneConfig,
        links: Vec<ObservedLink>,
        root_qdiscs: HashMap<u32, RootQdisc>,
        ingress: HashSet<u32>,
        filters: HashMap<u32, IngressFilters>,
    ) -> Self {
        Self::build(config, links, root_qdiscs, ingress, filters, false)
    }

    fn build(
        config: DataplaneConfig,
        links: Vec<ObservedLink>,
        root_qdiscs: HashMap<u32, RootQdisc>,
        ingress: HashSet<u32>,
        filters: HashMap<u32, IngressFilters>,
        complete: bool,
    ) -> Self {
        let by_name = links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        let by_index = links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.index, i))
            .collect();
        let by_vlan = links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.kind.as_deref() == Some("vlan"))
            .filter_map(|(i, l)| Some(((l.parent?, l.vlan_id?), i)))
            .collect();
        Self {
            config,
            links,
            root_qdiscs,
            ingress,
            filters,
            by_name,
            by_index,
            by_vlan,
            complete,
        }
    }

    /// Whether every link and qdisc of the namespace was read (see [`Observed::partial`]).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The VLAN link using `vlan` on parent `parent`, if any (in a partial snapshot: if it
    /// is one of the links read).
    pub fn vlan_user(&self, parent: u32, vlan: u16) -> Option<&ObservedLink> {
        self.by_vlan
            .get(&(parent, vlan))
            .and_then(|i| self.links.get(*i))
    }

    pub fn link_by_name(&self, name: &str) -> Option<&ObservedLink> {
        self.by_name.get(name).and_then(|i| self.links.get(*i))
    }

    pub fn link_by_index(&self, index: u32) -> Option<&ObservedLink> {
        self.by_index.get(&index).and_then(|i| self.links.get(*i))
    }

    /// Name of an ifindex for messages.
    pub fn name_of(&self, index: u32) -> String {
        self.link_by_index(index)
            .map_or_else(|| format!("ifindex {index}"), |l| l.name.clone())
    }
}

pub use conn::Dataplane;
pub(crate) use msg::match_all_redirect_attrs;
