//! The inspector: passive capture and classification of every frame on each port interface,
//! and active verification of a VXC with probe frames.
//!
//! # Passive inspection
//! [`Inspector::start`] opens one AF_PACKET socket with a TPACKET_V3 ring per port interface
//! (the parent interface, never a VLAN subinterface: there frames are untagged in both
//! directions; never `any`: no tag there) and runs one capture thread per port. The kernel
//! removes the outer tag of received frames, and of sent frames on parents with VLAN TX
//! offload, and passes it in the ring header; [`frame::parse`] puts it back in front of the
//! tags still inline (etherparse slices), so a QinQ frame yields its 0x88a8 outer tag and
//! its 0x8100 inner tag. Direction comes from `sll_pkttype` (`PACKET_OUTGOING` = sent by this
//! host = [`Direction::Tx`]; everything else = received from the wire = [`Direction::Rx`]).
//!
//! Each frame is classified against the port's [`PortExpect`]:
//! - untagged, and the port has an untagged VXC: that end's counters;
//! - 0x8100 tag whose VLAN a VXC end uses on this port: that end's counters;
//! - otherwise a violation, counted per (VLAN or untagged, direction) with kind, count, last
//!   seen, last TPID and inner VLAN: [`ViolationKind::UnknownVlan`],
//!   [`ViolationKind::UntaggedOnTaggedPort`], [`ViolationKind::TaggedOnUntaggedPort`] (an
//!   untagged end forwards the whole port, so these frames do cross the pipe; they are
//!   reported, not counted as the end's traffic), [`ViolationKind::UnexpectedTpid`] (an outer
//!   tag other than 0x8100: the 802.1Q subinterfaces never receive it);
//! - probes (EtherType 0x88B5 with [`probe::PROBE_MAGIC`]) are counted apart, never as
//!   customer traffic.
//!
//! The first frame of an egress (Tx) violation is logged as an error: vxcd itself sent a
//! wrong tag. Bytes are the frame's length on the wire without FCS, tag included.
//! Counters are cumulative since the port's capture started: [`Inspector::update`] keeps the
//! counters of ends that stay (same VXC, side and VLAN) and every violation cell.
//!
//! Integration: `start`/`update` open sockets in the calling thread's network namespace;
//! `snapshot` is cheap and lock-free for the capture threads; [`verify`] blocks for up to
//! [`VerifyConfig::timeout`] per direction (run it on a blocking thread). The config knobs are
//! [`InspectConfig`] (inspection off = do not start an `Inspector`).
//!
//! Hot path: the ring hands frames over a block at a time (no copy, no syscall per frame);
//! a one-instruction BPF filter returns the snap length so the kernel copies only the
//! headers; parsing is etherparse's zero-copy slices; counters are relaxed atomics in memory
//! allocated when the port is set up (a violation cell for every VLAN and direction, so no
//! allocation per frame); the classification table is an `Arc` that the capture thread
//! re-reads only when a generation counter (one atomic load per block) says
//! [`Inspector::update`] published a new one. No lock is taken per frame or per block.
//!
//! # Active verification
//! [`verify`] sends a probe into each end of a VXC through the receive path of the end's
//! port (see [`probe`] for why a tap with a `mirred ingress` redirect, and its limits) and
//! captures on every port interface it is given: the direction passes when the probe leaves
//! the other end's port exactly once with the expected encapsulation (0x8100 + that end's
//! VLAN and nothing inside it, or untagged) and leaves no other port. A VXC with an end on a
//! peer is proved in its local half: a probe into the local end must leave the tunnel device
//! and then the uplink encapsulated with the VXC's VNI towards the peer ([`vxlan`]); a probe
//! into the tunnel device's receive path must leave the local port with the local end's tag.
//! The peer's inspector counts the probes it hands to its customer per end (`probes_tx`).

pub mod frame;
pub mod probe;
pub mod ring;
pub mod vxlan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use frame::Tag;
pub use ring::{Direction, RingConfig};

use crate::dataplane::{Side, VxcSpec};

/// Errors of the inspector, each naming the object.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspector: snap length {0} is below 64 bytes (the headers would be cut)")]
    SnapLen(u32),
    #[error("inspector: port {port} ({interface}): {cause}")]
    Port {
        port: String,
        interface: String,
        cause: String,
    },
    #[error("verify {vxc}: {cause}")]
    Verify { vxc: String, cause: String },
}

/// Settings the integrator exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectConfig {
    /// Bytes captured per frame (headers only; counters use the full length).
    pub snap_len: u32,
    /// Only these ports (by port name); empty = every port in the expectation.
    pub ports: Vec<String>,
    /// Ring size per port in bytes (whole blocks of 1 MiB, at least 2): the kernel memory
    /// each port costs, and the slack while the capture thread is not scheduled (a
    /// minimum-size frame takes about 150 bytes of ring: 4 MiB hold roughly 25 000).
    pub ring_bytes: u32,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            snap_len: 128,
            ports: Vec::new(),
            ring_bytes: 4 << 20,
        }
    }
}

/// One VXC end as the inspector names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndRef {
    pub vxc: String,
    pub side: Side,
}

/// What one port should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortExpect {
    pub port: String,
    /// The port's kernel interface (the parent of its VLAN subinterfaces).
    pub interface: String,
    /// The untagged VXC end that takes the whole port, if any.
    pub untagged: Option<EndRef>,
    /// VLAN -> VXC end, for tagged ends.
    pub vlans: Vec<(u16, EndRef)>,
}

/// What every inspected port should carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    pub ports: Vec<PortExpect>,
}

impl Expectation {
    /// From the dataplane's VXCs; `ports` lists every (port name, interface) to inspect,
    /// so ports without VXCs are inspected too (all their traffic is a violation).
    pub fn from_vxcs(ports: &[(String, String)], vxcs: &[VxcSpec]) -> Expectation {
        let mut out: Vec<PortExpect> = ports
            .iter()
            .map(|(port, interface)| PortExpect {
                port: port.clone(),
                interface: interface.clone(),
                untagged: None,
                vlans: Vec::new(),
            })
            .collect();
        for vxc in vxcs {
            for side in [Side::A, Side::B] {
                let end = vxc.end(side);
                // A tunnel device is no customer port: nothing to inspect there.
                if end.tunnel.is_some() {
                    continue;
                }
                let end_ref = EndRef {
                    vxc: vxc.id.clone(),
                    side,
                };
                let index = match out.iter().position(|p| p.interface == end.interface) {
                    Some(i) => i,
                    None => {
                        out.push(PortExpect {
                            port: end.port.clone(),
                            interface: end.interface.clone(),
                            untagged: None,
                            vlans: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                match end.vlan {
                    None => out[index].untagged = Some(end_ref),
                    Some(vlan) => out[index].vlans.push((vlan, end_ref)),
                }
            }
        }
        Expectation { ports: out }
    }
}

/// Kinds of traffic a port should not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// 0x8100 tag with a VLAN no VXC uses on this port.
    UnknownVlan,
    /// Untagged frame on a port without an untagged VXC.
    UntaggedOnTaggedPort,
    /// Tagged frame on a port whose (only) VXC is untagged.
    TaggedOnUntaggedPort,
    /// Outer tag with a TPID other than 0x8100 (e.g. 802.1ad) on a tagged port.
    UnexpectedTpid,
}

impl ViolationKind {
    /// The name used in views and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::UnknownVlan => "unknown_vlan",
            ViolationKind::UntaggedOnTaggedPort => "untagged_on_tagged_port",
            ViolationKind::TaggedOnUntaggedPort => "tagged_on_untagged_port",
            ViolationKind::UnexpectedTpid => "unexpected_tpid",
        }
    }

    fn code(self) -> u8 {
        match self {
            ViolationKind::UnknownVlan => 1,
            ViolationKind::UntaggedOnTaggedPort => 2,
            ViolationKind::TaggedOnUntaggedPort => 3,
            ViolationKind::UnexpectedTpid => 4,
        }
    }
    fn from_code(code: u8) -> Option<ViolationKind> {
        match code {
            1 => Some(ViolationKind::UnknownVlan),
            2 => Some(ViolationKind::UntaggedOnTaggedPort),
            3 => Some(ViolationKind::TaggedOnUntaggedPort),
            4 => Some(ViolationKind::UnexpectedTpid),
            _ => None,
        }
    }
}

/// Counters of one VXC end on its port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndView {
    pub vxc: String,
    /// "a" or "b".
    pub side: String,
    /// `None`: untagged end.
    pub vlan: Option<u16>,
    /// From the customer into the end.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Out of the end to the customer.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// `verify` probes of this VXC (by the id hash they carry) from the customer into the end,
    /// and out of the end to the customer: on the peer of a VXC across hosts, `probes_tx` counts
    /// the probes an operator sent into the other host's end.
    #[serde(default)]
    pub probes_rx: u64,
    #[serde(default)]
    pub probes_tx: u64,
}

/// One violation bucket: (kind, VLAN or untagged, direction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationView {
    pub kind: ViolationKind,
    /// Outer VLAN; `None` for untagged frames.
    pub vlan: Option<u16>,
    /// TPID of the outer tag of the last such frame.
    pub tpid: Option<u16>,
    /// Inner VLAN of the last such frame (QinQ).
    pub inner_vlan: Option<u16>,
    pub direction: Direction,
    pub count: u64,
    /// Capture timestamp of the last such frame, RFC 3339.
    pub last_seen: String,
}

/// One port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub port: String,
    pub interface: String,
    /// Whether the capture runs; `error` says why not.
    pub capturing: bool,
    pub error: Option<String>,
    pub ends: Vec<EndView>,
    pub violations: Vec<ViolationView>,
    pub probes_rx: u64,
    pub probes_tx: u64,
    /// Frames too short to parse.
    pub unparsed: u64,
    /// Frames the kernel dropped because the ring was full (counts are then low).
    pub kernel_drops: u64,
    /// Frames the host itself sent on the port (source MAC the port's own, or a port that carries
    /// no VXC end): not vxcd's pipe, never counted as its egress.
    #[serde(default)]
    pub host_frames: u64,
}

/// Everything the inspector counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectView {
    pub ports: Vec<PortView>,
}

#[derive(Default)]
struct EndCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    /// The VXC's probe hash ([`probe::vxc_hash`]), set when the table is built.
    probe_hash: u64,
    probes: [AtomicU64; 2],
}

#[derive(Default)]
struct ViolationCell {
    count: AtomicU64,
    last_seen_ns: AtomicU64,
    kind: AtomicU8,
    tpid: AtomicU16,
    /// 0: none; else 0x1_0000 | inner VLAN.
    inner: AtomicU32,
}

/// Slot of untagged frames in the violation cells (VLANs take 0..4096).
const UNTAGGED_SLOT: usize = 4096;
const SLOTS: usize = 4097;

/// Counters of one port, alive as long as the port is inspected.
struct PortCounters {
    /// `SLOTS` cells per direction: [rx..., tx...].
    violations: Box<[ViolationCell]>,
    probes: [AtomicU64; 2],
    unparsed: AtomicU64,
    kernel_drops: AtomicU64,
    host_frames: AtomicU64,
    /// The port interface's own MAC: a frame it sends from that address is the host's, since the
    /// pipe forwards the customers' frames with the customers' addresses.
    own_mac: Option<[u8; 6]>,
    interface: String,
}

impl PortCounters {
    fn new(interface: &str) -> PortCounters {
        PortCounters {
            violations: (0..2 * SLOTS).map(|_| ViolationCell::default()).collect(),
            probes: Default::default(),
            unparsed: AtomicU64::new(0),
            kernel_drops: AtomicU64::new(0),
            host_frames: AtomicU64::new(0),
            own_mac: read_mac(interface),
            interface: interface.to_string(),
        }
    }
}

/// The interface's MAC from sysfs (`None` when it cannot be read: then only a port without VXC
/// ends tells the host's frames apart).
fn read_mac(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The classification table of one port; replaced whole by `update`.
struct PortTable {
    untagged: Option<Arc<EndCounters>>,
    /// VLAN -> index + 1 into `ends` (0: no end).
    vlan_end: Box<[u16; 4096]>,
    ends: Vec<Arc<EndCounters>>,
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Rx => 0,
        Direction::Tx => 1,
    }
}

/// The end a frame's tag belongs to on this port, or the violation it is.
fn end_of<'t>(
    table: &'t PortTable,
    tags: &frame::FrameTags<'_>,
) -> Result<&'t Arc<EndCounters>, (ViolationKind, usize)> {
    match (tags.outer, &table.untagged) {
        (None, Some(end)) => Ok(end),
        (None, None) => Err((ViolationKind::UntaggedOnTaggedPort, UNTAGGED_SLOT)),
        (Some(tag), Some(_)) => Err((ViolationKind::TaggedOnUntaggedPort, usize::from(tag.vid))),
        (Some(tag), None) if tag.tpid != 0x8100 => {
            Err((ViolationKind::UnexpectedTpid, usize::from(tag.vid)))
        }
        (Some(tag), None) => match table.vlan_end[usize::from(tag.vid & 0x0fff)] {
            0 => Err((ViolationKind::UnknownVlan, usize::from(tag.vid))),
            i => table
                .ends
                .get(usize::from(i) - 1)
                .ok_or((ViolationKind::UnknownVlan, usize::from(tag.vid))),
        },
    }
}

/// Classifies one frame: the whole hot path.
fn classify(table: &PortTable, counters: &PortCounters, raw: &ring::RawFrame<'_>, ts_ns: u64) {
    let Some(tags) = frame::parse(raw.data, raw.meta_tag) else {
        counters.unparsed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let d = dir_index(raw.direction);
    if let Some(mark) = probe::parse(tags.ether_type, tags.payload) {
        counters.probes[d].fetch_add(1, Ordering::Relaxed);
        if let Ok(end) = end_of(table, &tags) {
            if end.probe_hash == mark.vxc_hash {
                end.probes[d].fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    if raw.direction == Direction::Tx {
        let from_host = counters
            .own_mac
            .is_some_and(|mac| raw.data.get(6..12) == Some(&mac[..]));
        let no_end = table.untagged.is_none() && table.ends.is_empty();
        if from_host || no_end {
            if counters.host_frames.fetch_add(1, Ordering::Relaxed) == 0 {
                let interface = counters.interface.as_str();
                log::warn!(
                    interface, direction = "tx", ether_type = tags.ether_type;
                    "inspector: the host itself sent a frame on {interface} (EtherType {:#06x}): not vxcd's pipe, counted as host_frames",
                    tags.ether_type
                );
            }
            return;
        }
    }
    let bytes = u64::from(raw.wire_len) + if raw.meta_tag.is_some() { 4 } else { 0 };
    match end_of(table, &tags) {
        Ok(end) => {
            let (frames, byte_count) = match raw.direction {
                Direction::Rx => (&end.rx_frames, &end.rx_bytes),
                Direction::Tx => (&end.tx_frames, &end.tx_bytes),
            };
            frames.fetch_add(1, Ordering::Relaxed);
            byte_count.fetch_add(bytes, Ordering::Relaxed);
        }
        Err((kind, slot)) => {
            let cell = &counters.violations[d * SLOTS + slot.min(UNTAGGED_SLOT)];
            let before = cell.count.fetch_add(1, Ordering::Relaxed);
            cell.last_seen_ns.store(ts_ns, Ordering::Relaxed);
            cell.kind.store(kind.code(), Ordering::Relaxed);
            cell.tpid
                .store(tags.outer.map_or(0, |t| t.tpid), Ordering::Relaxed);
            cell.inner.store(
                tags.inner.map_or(0, |t| 0x1_0000 | u32::from(t.vid)),
                Ordering::Relaxed,
            );
            if before == 0 {
                let vlan = tags.outer.map_or("untagged".to_string(), |t| {
                    format!("VLAN {} (TPID {:#06x})", t.vid, t.tpid)
                });
                // Structured fields for the journal: INTERFACE, VLAN (0: untagged), DIRECTION,
                // VIOLATION. Logged once per (kind, VLAN, direction) cell; counts are in `inspect`.
                let interface = counters.interface.as_str();
                let vlan_id = tags.outer.map_or(0, |t| t.vid);
                let violation = kind.as_str();
                if raw.direction == Direction::Tx {
                    log::error!(
                        interface, vlan = vlan_id, direction = "tx", violation;
                        "inspector: {interface} SENT a frame it must not: {violation}, {vlan}: vxcd's own egress carries a wrong tag"
                    );
                } else {
                    log::warn!(
                        interface, vlan = vlan_id, direction = "rx", violation;
                        "inspector: {interface} received {violation}, {vlan}"
                    );
                }
            }
        }
    }
}

/// What a capture thread shares with the inspector.
struct PortShared {
    counters: PortCounters,
    generation: AtomicU64,
    table: Mutex<Arc<PortTable>>,
    stop: AtomicBool,
}

/// An end on a port: who, which VLAN, its counters.
type EndSlot = (EndRef, Option<u16>, Arc<EndCounters>);

struct PortWorker {
    port: String,
    shared: Arc<PortShared>,
    thread: Option<JoinHandle<()>>,
    /// Counters of the ends as last published, for the snapshot.
    ends: Vec<EndSlot>,
    error: Option<String>,
}

struct State {
    workers: HashMap<String, PortWorker>,
    /// Interfaces that failed to open: (port, error).
    failed: HashMap<String, (String, String)>,
}

/// The passive inspector; see the module documentation.
pub struct Inspector {
    cfg: InspectConfig,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ts_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn rfc3339(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn capture_loop(mut ring: ring::Ring, shared: Arc<PortShared>) {
    let mut generation = u64::MAX;
    let mut table: Arc<PortTable> = Arc::clone(&lock(&shared.table));
    let mut blocks: u32 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let ready = match ring.wait(100) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("inspector: capture on {} stopped: {e}", ring.ifname());
                return;
            }
        };
        // Checked after the wait: a frame captured after `update` returned is classified
        // with the new table.
        let now_generation = shared.generation.load(Ordering::Acquire);
        if now_generation != generation {
            table = Arc::clone(&lock(&shared.table));
            generation = now_generation;
        }
        if !ready {
            if ring.interface_gone() {
                log::warn!(
                    "inspector: {} was deleted: its capture stops, and starts again when it is back",
                    ring.ifname()
                );
                return;
            }
            if let Ok(stats) = ring.stats() {
                shared
                    .counters
                    .kernel_drops
                    .fetch_add(u64::from(stats.drops), Ordering::Relaxed);
            }
            continue;
        }
        let result = ring.next_block(0, |raw| {
            let ts = if raw.ts_ns == 0 {
                ts_now_ns()
            } else {
                raw.ts_ns
            };
            classify(&table, &shared.counters, &raw, ts);
        });
        match result {
            Ok(n) => {
                blocks = blocks.wrapping_add(1);
                // Drop counters cost a syscall: read them when idle and every 64 blocks.
                if n > 0 && blocks % 64 == 0 {
                    if let Ok(stats) = ring.stats() {
                        shared
                            .counters
                            .kernel_drops
                            .fetch_add(u64::from(stats.drops), Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                log::error!("inspector: capture on {} stopped: {e}", ring.ifname());
                return;
            }
        }
    }
}

impl Inspector {
    /// Starts a capture on every port of `expectation` (filtered by `cfg.ports`). A port whose
    /// interface cannot be opened is reported in its [`PortView::error`] and retried by
    /// [`Inspector::update`]; only an invalid configuration is an error.
    pub fn start(cfg: InspectConfig, expectation: Expectation) -> Result<Inspector, InspectError> {
        if cfg.snap_len < 64 {
            return Err(InspectError::SnapLen(cfg.snap_len));
        }
        let inspector = Inspector {
            cfg,
            state: Mutex::new(State {
                workers: HashMap::new(),
                failed: HashMap::new(),
            }),
        };
        inspector.update(expectation);
        Ok(inspector)
    }

    fn ring_config(&self) -> RingConfig {
        let block_size = 1u32 << 20;
        RingConfig {
            snap_len: self.cfg.snap_len,
            block_size,
            block_count: (self.cfg.ring_bytes / block_size).max(2),
            block_timeout_ms: 20,
        }
    }

    /// Publishes a new expectation: tables are swapped for running captures (counters of
    /// ends that stay are kept), captures start on new ports and stop on ports that left.
    /// Capture sockets are opened in the calling thread's network namespace.
    pub fn update(&self, expectation: Expectation) {
        let mut state = lock(&self.state);
        let wanted: Vec<&PortExpect> = expectation
            .ports
            .iter()
            .filter(|p| self.inspects(p))
            .collect();
        let keep: std::collections::HashSet<&str> =
            wanted.iter().map(|p| p.interface.as_str()).collect();
        let gone: Vec<String> = state
            .workers
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for interface in gone {
            if let Some(worker) = state.workers.remove(&interface) {
                stop_worker(worker);
            }
        }
        state.failed.retain(|k, _| keep.contains(k.as_str()));
        for port in wanted {
            self.install(&mut state, port);
        }
    }

    /// Publishes the expectation of some ports only, leaving the others as they are: what a
    /// VXC change needs (its two ports), at a cost bounded by the ends of those ports rather
    /// than by every VXC on the host.
    pub fn update_ports(&self, ports: &[PortExpect]) {
        let mut state = lock(&self.state);
        for port in ports.iter().filter(|p| self.inspects(p)) {
            self.install(&mut state, port);
        }
    }

    fn inspects(&self, port: &PortExpect) -> bool {
        self.cfg.ports.is_empty() || self.cfg.ports.contains(&port.port)
    }

    /// Swaps in a port's table (counters of ends that stay are kept), or starts its capture.
    fn install(&self, state: &mut State, port: &PortExpect) {
        let old_ends = state
            .workers
            .get(&port.interface)
            .map(|w| w.ends.clone())
            .unwrap_or_default();
        let (table, ends) = build_table(port, &old_ends);
        if let Some(worker) = state.workers.get_mut(&port.interface) {
            *lock(&worker.shared.table) = Arc::new(table);
            worker.shared.generation.fetch_add(1, Ordering::Release);
            worker.ends = ends;
            worker.port = port.port.clone();
            if worker.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                return;
            }
            // Its capture ended (the interface was deleted): a new socket on the
            // interface of that name, same counters.
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
            match ring::Ring::open(&port.interface, self.ring_config()) {
                Ok(ring) => {
                    log::info!("inspector: {} is back: capturing again", port.interface);
                    (worker.thread, worker.error) =
                        spawn_capture(&port.interface, ring, &worker.shared);
                }
                Err(e) => worker.error = Some(format!("capture ended; reopening it: {e}")),
            }
            return;
        }
        let ring = match ring::Ring::open(&port.interface, self.ring_config()) {
            Ok(ring) => ring,
            Err(e) => {
                log::warn!("inspector: port {} ({}): {e}", port.port, port.interface);
                state
                    .failed
                    .insert(port.interface.clone(), (port.port.clone(), e.to_string()));
                return;
            }
        };
        state.failed.remove(&port.interface);
        let shared = Arc::new(PortShared {
            counters: PortCounters::new(&port.interface),
            generation: AtomicU64::new(0),
            table: Mutex::new(Arc::new(table)),
            stop: AtomicBool::new(false),
        });
        let (thread, error) = spawn_capture(&port.interface, ring, &shared);
        state.workers.insert(
            port.interface.clone(),
            PortWorker {
                port: port.port.clone(),
                shared,
                thread,
                ends,
                error,
            },
        );
    }

    /// Current counters and violations of every port (sorted by port name).
    pub fn snapshot(&self) -> InspectView {
        let state = lock(&self.state);
        let mut ports: Vec<PortView> = state
            .workers
            .iter()
            .map(|(interface, w)| port_view(interface, w))
            .collect();
        ports.extend(
            state
                .failed
                .iter()
                .map(|(interface, (port, error))| PortView {
                    port: port.clone(),
                    interface: interface.clone(),
                    capturing: false,
                    error: Some(error.clone()),
                    ends: Vec::new(),
                    violations: Vec::new(),
                    probes_rx: 0,
                    probes_tx: 0,
                    host_frames: 0,
                    unparsed: 0,
                    kernel_drops: 0,
                }),
        );
        ports.sort_by(|a, b| a.port.cmp(&b.port).then(a.interface.cmp(&b.interface)));
        InspectView { ports }
    }

    /// Stops every capture thread and waits for them.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        for (_, worker) in state.workers.drain() {
            stop_worker(worker);
        }
    }
}

/// Starts the capture thread of one port: (its handle, or why it could not start).
fn spawn_capture(
    interface: &str,
    ring: ring::Ring,
    shared: &Arc<PortShared>,
) -> (Option<JoinHandle<()>>, Option<String>) {
    let thread_shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("inspect-{interface}"))
        .spawn(move || capture_loop(ring, thread_shared));
    match thread {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("starting the capture thread: {e}"))),
    }
}

fn stop_worker(mut worker: PortWorker) {
    worker.shared.stop.store(true, Ordering::Relaxed);
    if let Some(t) = worker.thread.take() {
        // The thread wakes from poll within 100 ms and sees the flag.
        let _ = t.join();
    }
}

fn build_table(port: &PortExpect, old: &[EndSlot]) -> (PortTable, Vec<EndSlot>) {
    // Looked up by key, not searched: the engine rebuilds every table on each VXC change, and
    // a linear search per end would make that quadratic in the ends of a port.
    let old: HashMap<(&EndRef, Option<u16>), &Arc<EndCounters>> =
        old.iter().map(|(e, v, c)| ((e, *v), c)).collect();
    let reuse = |end: &EndRef, vlan: Option<u16>| {
        old.get(&(end, vlan)).map_or_else(
            || {
                Arc::new(EndCounters {
                    probe_hash: probe::vxc_hash(&end.vxc),
                    ..EndCounters::default()
                })
            },
            |c| Arc::clone(c),
        )
    };
    let mut ends = Vec::new();
    let mut table = PortTable {
        untagged: None,
        vlan_end: Box::new([0u16; 4096]),
        ends: Vec::new(),
    };
    if let Some(end) = &port.untagged {
        let c = reuse(end, None);
        table.untagged = Some(Arc::clone(&c));
        ends.push((end.clone(), None, c));
    }
    for (vlan, end) in &port.vlans {
        let c = reuse(end, Some(*vlan));
        table.ends.push(Arc::clone(&c));
        table.vlan_end[usize::from(*vlan & 0x0fff)] = table.ends.len() as u16;
        ends.push((end.clone(), Some(*vlan), c));
    }
    (table, ends)
}

fn port_view(interface: &str, w: &PortWorker) -> PortView {
    let c = &w.shared.counters;
    let ends = w
        .ends
        .iter()
        .map(|(end, vlan, n)| EndView {
            vxc: end.vxc.clone(),
            side: end.side.as_str().to_string(),
            vlan: *vlan,
            rx_frames: n.rx_frames.load(Ordering::Relaxed),
            rx_bytes: n.rx_bytes.load(Ordering::Relaxed),
            tx_frames: n.tx_frames.load(Ordering::Relaxed),
            tx_bytes: n.tx_bytes.load(Ordering::Relaxed),
            probes_rx: n.probes[0].load(Ordering::Relaxed),
            probes_tx: n.probes[1].load(Ordering::Relaxed),
        })
        .collect();
    let mut violations = Vec::new();
    for (i, cell) in c.violations.iter().enumerate() {
        let count = cell.count.load(Ordering::Relaxed);
        if count == 0 {
            continue;
        }
        let Some(kind) = ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)) else {
            continue;
        };
        let slot = i % SLOTS;
        let tpid = cell.tpid.load(Ordering::Relaxed);
        let inner = cell.inner.load(Ordering::Relaxed);
        violations.push(ViolationView {
            kind,
            vlan: (slot != UNTAGGED_SLOT).then_some(slot as u16),
            tpid: (tpid != 0).then_some(tpid),
            inner_vlan: (inner != 0).then_some((inner & 0x0fff) as u16),
            direction: if i < SLOTS {
                Direction::Rx
            } else {
                Direction::Tx
            },
            count,
            last_seen: rfc3339(cell.last_seen_ns.load(Ordering::Relaxed)),
        });
    }
    let alive = w.thread.as_ref().is_some_and(|t| !t.is_finished());
    PortView {
        port: w.port.clone(),
        interface: interface.to_string(),
        capturing: alive,
        error: w
            .error
            .clone()
            .or_else(|| (!alive).then(|| "capture thread ended (see the log)".to_string())),
        ends,
        violations,
        probes_rx: c.probes[0].load(Ordering::Relaxed),
        probes_tx: c.probes[1].load(Ordering::Relaxed),
        unparsed: c.unparsed.load(Ordering::Relaxed),
        kernel_drops: c.kernel_drops.load(Ordering::Relaxed),
        host_frames: c.host_frames.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------------------
// Active verification

/// One end of the VXC to verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyEnd {
    pub port: String,
    /// The port's interface (parent); for an end on a peer, the tunnel device.
    pub interface: String,
    /// `None`: untagged.
    pub vlan: Option<u16>,
    /// The tunnel to the peer holding this end.
    #[serde(default)]
    pub tunnel: Option<VerifyTunnel>,
}

/// Where a probe into the local end must go on the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyTunnel {
    pub vni: u32,
    pub remote: std::net::IpAddr,
    pub udp_port: u16,
    /// The uplink to capture on; `None`: the tunnel device is as far as verify can see.
    pub uplink: Option<String>,
}

/// A VXC to verify and the other port interfaces the probes must not leave on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySpec {
    pub vxc: String,
    pub a: VerifyEnd,
    pub b: VerifyEnd,
    /// (port, interface) of every other port.
    pub other_ports: Vec<(String, String)>,
}

impl VerifySpec {
    pub fn from_vxc(vxc: &VxcSpec, all_ports: &[(String, String)]) -> VerifySpec {
        let end = |e: &crate::dataplane::EndSpec| VerifyEnd {
            port: e.port.clone(),
            interface: e.interface.clone(),
            vlan: e.vlan,
            tunnel: e.tunnel.as_ref().map(|t| VerifyTunnel {
                vni: t.vni,
                remote: t.remote,
                udp_port: t.udp_port,
                uplink: t.uplink.clone(),
            }),
        };
        VerifySpec {
            vxc: vxc.id.clone(),
            a: end(&vxc.a),
            b: end(&vxc.b),
            other_ports: all_ports
                .iter()
                .filter(|(_, i)| *i != vxc.a.interface && *i != vxc.b.interface)
                .cloned()
                .collect(),
        }
    }
}

/// Verification settings.
#[derive(Debug, Clone, Copy)]
pub struct VerifyConfig {
    /// How long to wait for a probe to leave the far port.
    pub timeout: Duration,
    /// After the probe left, how long to keep watching the other ports for copies. A copy on
    /// another port leaves in the same softirq pass; the grace covers ring hand-over.
    pub leak_grace: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            leak_grace: Duration::from_millis(50),
        }
    }
}

/// How a probe was seen leaving a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub port: String,
    pub interface: String,
    pub direction: Direction,
    /// Outer tag; `None`: untagged.
    pub tag: Option<Tag>,
    pub inner: Option<Tag>,
}

/// How a probe was seen leaving the uplink, encapsulated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSighting {
    pub interface: String,
    pub vni: u32,
    /// The outer destination: the peer it went to.
    pub remote: std::net::IpAddr,
    pub udp_port: u16,
}

/// Result of one direction (probe into `from`, expected out of `to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionResult {
    /// "a->b" or "b->a".
    pub direction: String,
    pub pass: bool,
    /// VLAN the probe must carry when leaving `to`; `None` = untagged.
    pub expected_vlan: Option<u16>,
    /// Tag it carried when leaving `to` (first sighting); `None` also when not seen.
    pub observed_tag: Option<Tag>,
    pub observed_inner: Option<Tag>,
    /// Whether it left `to` at all.
    pub seen: bool,
    /// Every sighting as it left a port (Tx), including wrong ones.
    pub left_on: Vec<Sighting>,
    /// Towards a peer: the VNI the probe must carry on the core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_vni: Option<u32>,
    /// Towards a peer: every encapsulated copy seen leaving the uplink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core: Vec<CoreSighting>,
    /// Whether the capture saw the probe enter the source port's receive path.
    pub entered: bool,
    pub elapsed_us: u64,
    /// Human-readable verdict.
    pub detail: String,
}

/// Result of verifying a VXC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    pub vxc: String,
    pub pass: bool,
    pub directions: Vec<DirectionResult>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn tag_text(tag: Option<Tag>) -> String {
    tag.map_or("untagged".to_string(), |t| {
        format!("VLAN {} (TPID {:#06x})", t.vid, t.tpid)
    })
}

/// Verifies both directions of a VXC with probes (blocking: run it on a blocking thread).
/// Opens captures on the two end ports and every other port, and one tap injector per end.
pub fn verify(spec: &VerifySpec, cfg: VerifyConfig) -> Result<VerifyResult, InspectError> {
    let verr = |cause: String| InspectError::Verify {
        vxc: spec.vxc.clone(),
        cause,
    };
    let mut ports: Vec<(String, String)> = vec![
        (spec.a.port.clone(), spec.a.interface.clone()),
        (spec.b.port.clone(), spec.b.interface.clone()),
    ];
    for p in &spec.other_ports {
        if !ports.iter().any(|(_, i)| *i == p.1) {
            ports.push(p.clone());
        }
    }
    let ring_cfg = RingConfig {
        // Room for the outer headers of a probe leaving the core (14 + 40 + 8 + 8) and the
        // probe inside.
        snap_len: 256,
        block_size: 1 << 16,
        block_count: 4,
        block_timeout_ms: 1,
    };
    let mut rings = Vec::new();
    for (port, interface) in &ports {
        let ring = ring::Ring::open(interface, ring_cfg)
            .map_err(|e| verr(format!("capturing on port {port}: {e}")))?;
        rings.push((port.clone(), interface.clone(), ring));
    }
    let tunnel = [&spec.a, &spec.b]
        .into_iter()
        .find_map(|e| e.tunnel.clone());
    let mut core_ring = match tunnel.as_ref().and_then(|t| t.uplink.clone()) {
        Some(uplink) => {
            let ring = ring::Ring::open(&uplink, ring_cfg)
                .map_err(|e| verr(format!("capturing on the core uplink {uplink}: {e}")))?;
            Some((uplink, ring))
        }
        None => None,
    };
    let hash = probe::vxc_hash(&spec.vxc);
    let mut directions = Vec::new();
    for (entry, from, to) in [(0u8, &spec.a, &spec.b), (1u8, &spec.b, &spec.a)] {
        let injector = probe::Injector::new(&from.interface)
            .map_err(|e| verr(format!("probe injector into port {}: {e}", from.port)))?;
        let mark = probe::ProbeMark {
            vxc_hash: hash,
            nonce: (u64::from(std::process::id()) << 32) | NONCE.fetch_add(1, Ordering::Relaxed),
            entry,
        };
        let frame = probe::build(from.vlan, mark);
        let started = Instant::now();
        injector.inject(&frame).map_err(|e| verr(e.to_string()))?;
        let mut left_on: Vec<Sighting> = Vec::new();
        let mut core: Vec<CoreSighting> = Vec::new();
        // Towards a peer with a known uplink, the probe has arrived once it leaves the core.
        let to_core = to.tunnel.as_ref().filter(|t| t.uplink.is_some());
        let mut entered = false;
        let mut arrived_at: Option<Instant> = None;
        let mut elapsed = Duration::ZERO;
        loop {
            let now = Instant::now();
            match arrived_at {
                Some(t) if now >= t + cfg.leak_grace => break,
                None if now >= started + cfg.timeout => break,
                _ => {}
            }
            for (port, interface, ring) in &mut rings {
                ring.next_block(1, |raw| {
                    let Some(tags) = frame::parse(raw.data, raw.meta_tag) else {
                        return;
                    };
                    if probe::parse(tags.ether_type, tags.payload) != Some(mark) {
                        return;
                    }
                    if raw.direction == Direction::Rx {
                        if *interface == from.interface {
                            entered = true;
                        }
                        return;
                    }
                    if *interface == to.interface && arrived_at.is_none() && to_core.is_none() {
                        arrived_at = Some(Instant::now());
                        elapsed = started.elapsed();
                    }
                    left_on.push(Sighting {
                        port: port.clone(),
                        interface: interface.clone(),
                        direction: raw.direction,
                        tag: tags.outer,
                        inner: tags.inner,
                    });
                })
                .map_err(|e| verr(e.to_string()))?;
            }
            if let (Some((uplink, ring)), Some(t)) = (&mut core_ring, &tunnel) {
                ring.next_block(1, |raw| {
                    if raw.direction != Direction::Tx {
                        return;
                    }
                    let Some(outer) = frame::parse(raw.data, raw.meta_tag) else {
                        return;
                    };
                    let Some(e) = vxlan::decapsulate(outer.ether_type, outer.payload, t.udp_port)
                    else {
                        return;
                    };
                    let Some(inner) = frame::parse(e.inner, None) else {
                        return;
                    };
                    if probe::parse(inner.ether_type, inner.payload) != Some(mark) {
                        return;
                    }
                    if to_core.is_some() && arrived_at.is_none() {
                        arrived_at = Some(Instant::now());
                        elapsed = started.elapsed();
                    }
                    core.push(CoreSighting {
                        interface: uplink.clone(),
                        vni: e.vni,
                        remote: e.destination,
                        udp_port: e.udp_port,
                    });
                })
                .map_err(|e| verr(e.to_string()))?;
            }
        }
        if arrived_at.is_none() {
            elapsed = started.elapsed();
        }
        // Towards a peer: exactly one copy on the core, with the VXC's VNI, to the peer. Into
        // this host: none (a probe from the tunnel that went back out would loop to the peer).
        let core_problem = match to_core {
            Some(t) => match core.as_slice() {
                [] => Some(format!(
                    "never left the core uplink {} encapsulated (expected VNI {} to {})",
                    t.uplink.as_deref().unwrap_or("?"),
                    t.vni,
                    t.remote
                )),
                [c] if c.vni != t.vni || c.remote != t.remote => Some(format!(
                    "left the core uplink {} with VNI {} to {} instead of VNI {} to {}",
                    c.interface, c.vni, c.remote, t.vni, t.remote
                )),
                [_] => None,
                more => Some(format!("left the core uplink {} times", more.len())),
            },
            None => core.first().map(|c| {
                format!(
                    "also left the core uplink {} with VNI {} to {}",
                    c.interface, c.vni, c.remote
                )
            }),
        };
        let at_target: Vec<&Sighting> = left_on
            .iter()
            .filter(|s| s.interface == to.interface)
            .collect();
        let elsewhere: Vec<&Sighting> = left_on
            .iter()
            .filter(|s| s.interface != to.interface)
            .collect();
        let first = at_target.first();
        let expected_ok = |s: &Sighting| match to.vlan {
            None => s.tag.is_none(),
            Some(v) => s.tag.is_some_and(|t| t.tpid == 0x8100 && t.vid == v) && s.inner.is_none(),
        };
        let pass = at_target.len() == 1
            && at_target.iter().all(|s| expected_ok(s))
            && elsewhere.is_empty()
            && core_problem.is_none();
        let name = if entry == 0 { "a->b" } else { "b->a" };
        let expected_text = to
            .vlan
            .map_or("untagged".to_string(), |v| format!("VLAN {v}"));
        let from_text = match &from.tunnel {
            Some(t) => format!(
                "tunnel {} (VNI {} from {})",
                from.interface, t.vni, t.remote
            ),
            None => format!("port {}", from.port),
        };
        let detail = if pass {
            match (&to.tunnel, core.first()) {
                (Some(_), Some(c)) => format!(
                    "probe into {from_text} left tunnel {} and the core uplink {} with VNI {} to {} as expected",
                    to.interface, c.interface, c.vni, c.remote
                ),
                (Some(t), None) => format!(
                    "probe into {from_text} left tunnel {} (VNI {} to {}) as expected",
                    to.interface, t.vni, t.remote
                ),
                (None, _) => format!(
                    "probe into {from_text} left port {} {expected_text} as expected",
                    to.port
                ),
            }
        } else if at_target.is_empty() {
            let to_text = match &to.tunnel {
                Some(t) => format!("tunnel {} (VNI {} to {})", to.interface, t.vni, t.remote),
                None => format!("port {} (expected {expected_text})", to.port),
            };
            format!(
                "probe into {from_text} never left {to_text} within {:?}; entered: {}{}{}",
                cfg.timeout,
                if entered { "yes" } else { "not seen" },
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left instead on {}",
                        elsewhere
                            .iter()
                            .map(|s| format!("{} {}", s.port, tag_text(s.tag)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                core_problem
                    .as_ref()
                    .map_or(String::new(), |p| format!("; {p}"))
            )
        } else {
            let mut problems = Vec::new();
            if let Some(s) = at_target.iter().find(|s| !expected_ok(s)) {
                problems.push(format!(
                    "left port {} {}{} instead of {expected_text}",
                    to.port,
                    tag_text(s.tag),
                    s.inner
                        .map_or(String::new(), |i| format!(" with inner VLAN {}", i.vid))
                ));
            }
            if at_target.len() > 1 {
                problems.push(format!("left port {} {} times", to.port, at_target.len()));
            }
            for s in &elsewhere {
                problems.push(format!(
                    "also left port {} ({}) {}",
                    s.port,
                    s.interface,
                    tag_text(s.tag)
                ));
            }
            problems.extend(core_problem.clone());
            format!("probe into {from_text}: {}", problems.join("; "))
        };
        if !pass {
            log::error!("verify {}: {name}: {detail}", spec.vxc);
        }
        directions.push(DirectionResult {
            direction: name.to_string(),
            pass,
            expected_vlan: to.vlan,
            observed_tag: first.and_then(|s| s.tag),
            observed_inner: first.and_then(|s| s.inner),
            seen: first.is_some(),
            left_on,
            expected_vni: to.tunnel.as_ref().map(|t| t.vni),
            core,
            entered,
            elapsed_us: elapsed.as_micros() as u64,
            detail,
        });
    }
    Ok(VerifyResult {
        vxc: spec.vxc.clone(),
        pass: directions.iter().all(|d| d.pass),
        directions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::{MetaTag, RawFrame};

    fn table_for(port: &PortExpect) -> PortTable {
        build_table(port, &[]).0
    }

    fn raw(data: &[u8], meta: Option<MetaTag>, direction: Direction) -> RawFrame<'_> {
        RawFrame {
            direction,
            meta_tag: meta,
            wire_len: data.len() as u32,
            ts_ns: 1,
            data,
        }
    }

    fn eth(inline_tags: &[(u16, u16)], ether_type: u16) -> Vec<u8> {
        let mut f = vec![2u8; 12];
        for (tpid, vid) in inline_tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.resize(60, 0);
        f
    }

    fn end_ref(vxc: &str) -> EndRef {
        EndRef {
            vxc: vxc.into(),
            side: Side::A,
        }
    }

    #[test]
    fn inspector_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Inspector>();
    }

    #[test]
    fn frames_the_host_sends_are_the_hosts_not_vxcds_egress() {
        let violations = |c: &PortCounters| -> u64 {
            c.violations
                .iter()
                .map(|v| v.count.load(Ordering::Relaxed))
                .sum()
        };
        // A port with no VXC end: whatever leaves it is the host's (MLD, ND, ...).
        let empty = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![],
        };
        let counters = PortCounters::new("i");
        let mld = eth(&[], 0x86dd);
        classify(
            &table_for(&empty),
            &counters,
            &raw(&mld, None, Direction::Tx),
            1,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 0);
        // Received, the same frame is the customer's and a violation.
        classify(
            &table_for(&empty),
            &counters,
            &raw(&mld, None, Direction::Rx),
            2,
        );
        assert_eq!(violations(&counters), 1);

        // A port with an end: a frame from the port's own MAC is the host's; one with another
        // source (the pipe forwards the customers' frames) and a wrong tag is vxcd's egress.
        let tagged = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![(200, end_ref("v1"))],
        };
        let mut counters = PortCounters::new("i");
        counters.own_mac = Some([2; 6]);
        let from_host = eth(&[], 0x86dd); // eth() puts 02:02:02:02:02:02 as the source
        classify(
            &table_for(&tagged),
            &counters,
            &raw(&from_host, None, Direction::Tx),
            3,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 0);
        let mut from_pipe = eth(&[], 0x0800);
        from_pipe[6..12].copy_from_slice(&[0x0a; 6]);
        classify(
            &table_for(&tagged),
            &counters,
            &raw(&from_pipe, None, Direction::Tx),
            4,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 1);
    }

    #[test]
    fn classify_counts_ends_with_tag_bytes_and_files_violations() {
        let tagged = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![(200, end_ref("v1"))],
        };
        let table = table_for(&tagged);
        let counters = PortCounters::new("i");
        // Tag 200 as metadata (received): 60 bytes of data + the 4 tag bytes on the wire.
        let data = eth(&[], 0x0800);
        let meta = Some(MetaTag {
            tpid: 0x8100,
            tci: 200,
        });
        classify(&table, &counters, &raw(&data, meta, Direction::Rx), 1);
        // Tag 200 inline (sent without offload): 60 bytes with the tag.
        let inline = eth(&[(0x8100, 200)], 0x0800);
        classify(&table, &counters, &raw(&inline, None, Direction::Tx), 2);
        let end = &table.ends[0];
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(end.rx_bytes.load(Ordering::Relaxed), 64);
        assert_eq!(end.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(end.tx_bytes.load(Ordering::Relaxed), 60);

        // S-tag 200 with C-tag 7: not the 802.1Q subinterface's frame.
        let qinq = eth(&[(0x8100, 7)], 0x0800);
        let s_meta = Some(MetaTag {
            tpid: 0x88a8,
            tci: 200,
        });
        classify(&table, &counters, &raw(&qinq, s_meta, Direction::Rx), 3);
        let cell = &counters.violations[200];
        assert_eq!(cell.count.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)),
            Some(ViolationKind::UnexpectedTpid)
        );
        assert_eq!(cell.inner.load(Ordering::Relaxed), 0x1_0000 | 7);
        assert_eq!(cell.last_seen_ns.load(Ordering::Relaxed), 3);

        // Untagged on this tagged port, sent: the Tx half of the cells.
        classify(&table, &counters, &raw(&data, None, Direction::Tx), 4);
        let cell = &counters.violations[SLOTS + UNTAGGED_SLOT];
        assert_eq!(cell.count.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)),
            Some(ViolationKind::UntaggedOnTaggedPort)
        );

        // A probe tagged 200 counts as a probe only.
        let mark = probe::ProbeMark {
            vxc_hash: 1,
            nonce: 2,
            entry: 0,
        };
        let p = probe::build(Some(200), mark);
        classify(&table, &counters, &raw(&p, None, Direction::Rx), 5);
        assert_eq!(counters.probes[0].load(Ordering::Relaxed), 1);
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);

        // Runts are counted apart.
        classify(&table, &counters, &raw(&data[..8], None, Direction::Rx), 6);
        assert_eq!(counters.unparsed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn untagged_port_takes_untagged_frames_and_flags_tagged_ones() {
        let plain = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: Some(end_ref("v1")),
            vlans: vec![],
        };
        let table = table_for(&plain);
        let counters = PortCounters::new("i");
        let data = eth(&[], 0x0800);
        classify(&table, &counters, &raw(&data, None, Direction::Rx), 1);
        let meta = Some(MetaTag {
            tpid: 0x8100,
            tci: 5,
        });
        classify(&table, &counters, &raw(&data, meta, Direction::Rx), 2);
        let end = table.untagged.as_ref().expect("untagged end");
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(counters.violations[5].kind.load(Ordering::Relaxed)),
            Some(ViolationKind::TaggedOnUntaggedPort)
        );
    }

    #[test]
    fn expectation_from_vxcs_maps_ends_to_ports() {
        let vxc = VxcSpec {
            id: "v".into(),
            rate_mbps: 10,
            a: crate::dataplane::EndSpec {
                port: "p1".into(),
                interface: "eth1".into(),
                vlan: Some(200),
                tunnel: None,
            },
            b: crate::dataplane::EndSpec {
                port: "p2".into(),
                interface: "eth2".into(),
                vlan: None,
                tunnel: None,
            },
            shutdown: false,
        };
        let exp = Expectation::from_vxcs(&[("p3".into(), "eth3".into())], &[vxc]);
        assert_eq!(exp.ports.len(), 3);
        let p1 = exp.ports.iter().find(|p| p.port == "p1").expect("p1");
        assert_eq!(
            p1.vlans,
            vec![(
                200,
                EndRef {
                    vxc: "v".into(),
                    side: Side::A
                }
            )]
        );
        let p2 = exp.ports.iter().find(|p| p.port == "p2").expect("p2");
        assert_eq!(
            p2.untagged,
            Some(EndRef {
                vxc: "v".into(),
                side: Side::B
            })
        );
        let p3 = exp.ports.iter().find(|p| p.port == "p3").expect("p3");
        assert!(p3.untagged.is_none() && p3.vlans.is_empty());
    }
}
