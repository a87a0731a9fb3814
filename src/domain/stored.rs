//! The stored objects: service keys and VXCs with their ends, as the state file keeps them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{KeyId, PortName, Vlan, Vni, VxcId};

/// A stored service key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKey {
    #[serde(rename = "key")]
    pub id: KeyId,
    pub port: PortName,
    pub description: String,
    pub single_use: bool,
    pub max_speed_mbps: u32,
    /// The B-End VLAN of a single-use key; `None` for multi-use keys.
    pub vlan: Option<Vlan>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    pub active: bool,
    /// The VXC that used up a single-use key; stays set after that VXC is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_by: Option<VxcId>,
    /// The core address of the peer edge host whose port this is; `None`: a port of this host.
    /// A remote key's port is not checked here and reserves no VLAN here (the peer does both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
}

/// The A-End of a stored VXC: its port and VLAN, `None` when untagged (the whole port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AEnd {
    pub port: PortName,
    pub vlan: Option<Vlan>,
    /// The peer edge host holding this end; `None`: this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
}

/// The B-End of a stored VXC, on the key's port: always tagged. On a peer (`host`), its VLAN is
/// the peer's to assign: known here only from a single-use key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BEnd {
    pub port: PortName,
    pub vlan: Option<Vlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
}

impl AEnd {
    pub fn is_local(&self) -> bool {
        self.host.is_none()
    }
}

impl BEnd {
    pub fn is_local(&self) -> bool {
        self.host.is_none()
    }
}

/// A stored VXC with its effective ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vxc {
    pub id: VxcId,
    pub name: String,
    pub service_key: KeyId,
    pub rate_mbps: u32,
    #[serde(default)]
    pub service_level_ref: Option<String>,
    pub a_end: AEnd,
    pub b_end: BEnd,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Shut down by the operator: kept, with its VLANs reserved, but no frame crosses. Written
    /// only when true, so a journal of a VXC never shut reads the same as before the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shutdown: bool,
    /// The VXLAN network identifier carrying it between the two edge hosts; set exactly when one
    /// end is on a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<Vni>,
}

impl Vxc {
    /// The peer edge host of a VXC with an end there.
    pub fn peer(&self) -> Option<IpAddr> {
        self.a_end.host.or(self.b_end.host)
    }
}
