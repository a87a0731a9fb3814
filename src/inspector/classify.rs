//! The hot path: one frame's tags against the port's table, counted in relaxed atomics (no
//! allocation, no lock per frame).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::expect::*;
use super::frame::{self};
use super::probe;
use super::ring::{self, Direction};
use super::view::*;

#[derive(Default)]
pub(super) struct EndCounters {
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    /// The VXC's probe hash ([`probe::vxc_hash`]), set when the table is built.
    pub(super) probe_hash: u64,
    pub(super) probes: [AtomicU64; 2],
}

#[derive(Default)]
pub(super) struct ViolationCell {
    pub(super) count: AtomicU64,
    pub(super) last_seen_ns: AtomicU64,
    pub(super) kind: AtomicU8,
    pub(super) tpid: AtomicU16,
    /// 0: none; else 0x1_0000 | inner VLAN.
    pub(super) inner: AtomicU32,
}

/// Slot of untagged frames in the violation cells (VLANs take 0..4096).
pub(super) const UNTAGGED_SLOT: usize = 4096;

pub(super) const SLOTS: usize = 4097;

/// Counters of one port, alive as long as the port is inspected.
pub(super) struct PortCounters {
    /// `SLOTS` cells per direction: [rx..., tx...].
    pub(super) violations: Box<[ViolationCell]>,
    pub(super) probes: [AtomicU64; 2],
    pub(super) unparsed: AtomicU64,
    pub(super) kernel_drops: AtomicU64,
    pub(super) host_frames: AtomicU64,
    /// The port interface's own MAC: a frame it sends from that address is the host's, since the
    /// pipe forwards the customers' frames with the customers' addresses.
    pub(super) own_mac: Option<[u8; 6]>,
    pub(super) interface: String,
}

impl PortCounters {
    pub(super) fn new(interface: &str) -> PortCounters {
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
pub(super) fn read_mac(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The classification table of one port; replaced whole by `update`.
pub(super) struct PortTable {
    pub(super) untagged: Option<Arc<EndCounters>>,
    /// VLAN -> index + 1 into `ends` (0: no end).
    pub(super) vlan_end: Box<[u16; 4096]>,
    pub(super) ends: Vec<Arc<EndCounters>>,
}

pub(super) fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Rx => 0,
        Direction::Tx => 1,
    }
}

/// The end a frame's tag belongs to on this port, or the violation it is.
pub(super) fn end_of<'t>(
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
pub(super) fn classify(
    table: &PortTable,
    counters: &PortCounters,
    raw: &ring::RawFrame<'_>,
    ts_ns: u64,
) {
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

/// An end on a port: who, which VLAN, its counters.
pub(super) type EndSlot = (EndRef, Option<u16>, Arc<EndCounters>);

pub(super) fn build_table(port: &PortExpect, old: &[EndSlot]) -> (PortTable, Vec<EndSlot>) {
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
