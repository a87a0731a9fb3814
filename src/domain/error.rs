//! Every way a request can break a rule, each with the protocol's error code and a sentence that
//! names the object and the cause.

use time::OffsetDateTime;

use std::net::IpAddr;

use super::{KeyId, PortName, Vlan, Vni, VxcId};

/// Who holds a VLAN on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A single-use key reserves its B-End VLAN from the moment it is stored until it is redeemed.
    Key(KeyId),
    /// A VXC end.
    Vxc(VxcId),
}

impl Holder {
    pub fn id(&self) -> &str {
        match self {
            Holder::Key(k) => k.as_str(),
            Holder::Vxc(v) => v.as_str(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Holder::Key(_) => "key",
            Holder::Vxc(_) => "vxc",
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Key(k) => write!(f, "reserved by single-use service key {k}"),
            Holder::Vxc(v) => write!(f, "in use by VXC {v}"),
        }
    }
}

fn offer(next: &Option<Vlan>) -> String {
    match next {
        Some(v) => format!("next available {v}"),
        None => "no VLAN is free on that port".to_owned(),
    }
}

fn list(ids: &[VxcId]) -> String {
    ids.iter().map(VxcId::as_str).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("port {port} is not configured on this host")]
    UnknownPort { port: String },
    #[error("service key {key} does not exist")]
    UnknownKey { key: String },
    #[error("service key {key} is inactive; it can be activated with key.put")]
    KeyInactive { key: KeyId },
    #[error("service key {key} is not valid before {valid_from}")]
    KeyNotYetValid {
        key: KeyId,
        valid_from: OffsetDateTime,
    },
    #[error("service key {key} expired at {valid_until}")]
    KeyExpired {
        key: KeyId,
        valid_until: OffsetDateTime,
    },
    #[error("single-use service key {key} was already redeemed by VXC {by}")]
    KeyUsed { key: KeyId, by: VxcId },
    #[error(
        "service key {key} cannot be removed; deactivate it with key.put and \"active\": false"
    )]
    KeyNotRemovable { key: String },
    #[error("{object}: field {field} cannot be changed once created")]
    ImmutableField { object: String, field: &'static str },
    #[error("{0}")]
    VlanInvalid(String),
    #[error("single-use service key {key} needs a B-End vlan (2..=4093)")]
    VlanRequired { key: KeyId },
    #[error("VLAN {vlan} on port {port} is {held_by}; {}", offer(next_available))]
    VlanInUse {
        port: PortName,
        vlan: Vlan,
        held_by: Holder,
        next_available: Option<Vlan>,
    },
    #[error("no VLAN is free on port {port}: all of 2..=4093 are in use or reserved")]
    NoFreeVlan { port: PortName },
    #[error("port {port} carries untagged VXC {vxc}, which takes the whole port")]
    PortUntaggedBusy { port: PortName, vxc: VxcId },
    #[error(
        "port {port} carries VXCs {}; an untagged A-End must be the only VXC on its port",
        list(vxcs)
    )]
    PortNotEmpty { port: PortName, vxcs: Vec<VxcId> },
    #[error(
        "{field} {value} is invalid: it must be a whole number of Mbps from 1 to {}",
        u32::MAX
    )]
    RateInvalid { field: &'static str, value: i64 },
    #[error("VNI {vni} is in use by VXC {vxc}; a VNI carries one VXC")]
    VniInUse { vni: Vni, vxc: VxcId },
    #[error(
        "A-End of VXC {vxc} is on peer {host}, which assigns its VLAN: state the vlan it \
         assigned, or untagged: true"
    )]
    RemoteVlanRequired { vxc: VxcId, host: IpAddr },
    #[error(
        "rate {rate_mbps} Mbps exceeds the {max_speed_mbps} Mbps maximum of service key {key}"
    )]
    RateExceedsKey {
        key: KeyId,
        rate_mbps: u32,
        max_speed_mbps: u32,
    },
}

impl RuleError {
    /// The protocol's error code for this rule.
    pub fn code(&self) -> &'static str {
        match self {
            RuleError::BadRequest(_) => "bad_request",
            RuleError::NotFound { .. } => "not_found",
            RuleError::UnknownPort { .. } => "unknown_port",
            RuleError::UnknownKey { .. } => "unknown_key",
            RuleError::KeyInactive { .. } => "key_inactive",
            RuleError::KeyNotYetValid { .. } => "key_not_yet_valid",
            RuleError::KeyExpired { .. } => "key_expired",
            RuleError::KeyUsed { .. } => "key_used",
            RuleError::KeyNotRemovable { .. } => "key_not_removable",
            RuleError::ImmutableField { .. } => "immutable_field",
            RuleError::VlanInvalid(_) => "vlan_invalid",
            RuleError::VlanRequired { .. } => "vlan_required",
            RuleError::VlanInUse { .. } | RuleError::NoFreeVlan { .. } => "vlan_in_use",
            RuleError::PortUntaggedBusy { .. } => "port_untagged_busy",
            RuleError::PortNotEmpty { .. } => "port_not_empty",
            RuleError::RateInvalid { .. } => "rate_invalid",
            RuleError::RateExceedsKey { .. } => "rate_exceeds_key",
            RuleError::VniInUse { .. } => "vni_in_use",
            RuleError::RemoteVlanRequired { .. } => "vlan_required",
        }
    }
}
