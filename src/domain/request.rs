//! The requests as sent: `key.put`'s and `vxc.put`'s arguments, with wide numbers so that an
//! out-of-range value reaches the rule that names it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `key.put`'s argument, as sent. Numbers are wide so that out-of-range values reach the rule that
/// names them (`vlan_invalid`, `rate_invalid`) instead of a generic parse error.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub key: String,
    pub port: String,
    #[serde(default)]
    pub description: String,
    pub single_use: bool,
    #[serde(deserialize_with = "wide_int")]
    pub max_speed_mbps: i64,
    #[serde(default, deserialize_with = "wide_int_opt")]
    pub vlan: Option<i64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    #[serde(default = "default_active")]
    pub active: bool,
    /// The peer edge host's core address when the port is on a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn default_active() -> bool {
    true
}

/// A whole number of any size, saturated to the i64 range, so that a VLAN or rate far out of
/// range gets the rule's own error (`vlan_invalid`, `rate_invalid`) rather than a parse error.
/// Fractions are still refused as `bad_request`: they are not numbers anyone meant.
fn wide_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match n.as_f64() {
        // `as` saturates at the i64 bounds.
        Some(f) if f.fract() == 0.0 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number, got {n}"
        ))),
    }
}

fn wide_int_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<serde_json::Value>::deserialize(d)?
        .map(|v| wide_int(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// `vxc.put`'s argument, as sent.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VxcRequest {
    pub id: String,
    pub name: String,
    pub service_key: String,
    #[serde(deserialize_with = "wide_int")]
    pub rate_mbps: i64,
    pub a_end: AEndRequest,
    #[serde(default)]
    pub service_level_ref: Option<String>,
    /// `true`: shut the VXC down (kept, VLANs reserved, no frame crosses); `false` (the
    /// default, so a put that omits it brings a shut VXC back): carry frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shutdown: bool,
    /// VXLAN network identifier, 1..=16777215: required when one end is on a peer.
    #[serde(
        default,
        deserialize_with = "wide_int_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub vni: Option<i64>,
}

/// The A-End as asked for: a port, and a VLAN (omitted: assign one) or `untagged: true`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AEndRequest {
    pub port: String,
    #[serde(default, deserialize_with = "wide_int_opt")]
    pub vlan: Option<i64>,
    #[serde(default)]
    pub untagged: bool,
    /// The peer edge host's core address when the A-End is on a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}
