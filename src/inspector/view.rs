//! What the inspector reports: per port, per end, per kind of violation.

use serde::{Deserialize, Serialize};

use super::ring::Direction;

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

    pub(super) fn code(self) -> u8 {
        match self {
            ViolationKind::UnknownVlan => 1,
            ViolationKind::UntaggedOnTaggedPort => 2,
            ViolationKind::TaggedOnUntaggedPort => 3,
            ViolationKind::UnexpectedTpid => 4,
        }
    }
    pub(super) fn from_code(code: u8) -> Option<ViolationKind> {
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
