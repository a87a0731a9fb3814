//! Keys, VXCs and ports, and every rule that binds them. Checks are pure: `plan_*` looks at the
//! model and returns what would change (or the rule that refuses it) without changing anything;
//! `commit_*` applies a plan that was accepted. The daemon programs the kernel and writes the state
//! file between the two, so a refused or failed request leaves the model exactly as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Holder, KeyId, PortName, RuleError, Vlan, VlanSet, Vni, VxcId};

/// Longest description, name and service level reference.
pub const MAX_TEXT_LEN: usize = 255;

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

/// What a put would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T> {
    /// Identical to what is stored: nothing to write, nothing to program.
    Unchanged(T),
    Created(T),
    Updated {
        before: T,
        after: T,
    },
}

impl<T> Change<T> {
    /// The object as it is after the change.
    pub fn after(&self) -> &T {
        match self {
            Change::Unchanged(t) | Change::Created(t) => t,
            Change::Updated { after, .. } => after,
        }
    }
}

/// What `vxc.put` would do: the VXC change, and the key as it becomes when a single-use key is
/// used up by a new VXC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxcPlan {
    pub change: Change<Vxc>,
    pub key_after: Option<ServiceKey>,
}

/// What a new VXC asks of the core: the A-End's peer (if the A-End is there) and the VNI.
struct Tunnel {
    a_host: Option<IpAddr>,
    vni: Option<Vni>,
}

/// One port's VLAN and VXC bookkeeping.
#[derive(Clone, Debug, Default)]
struct PortState {
    /// False for a port that the state mentions but the config no longer has.
    configured: bool,
    taken: VlanSet,
    holders: HashMap<Vlan, Holder>,
    untagged: Option<VxcId>,
    /// VXCs with an end on this port.
    vxcs: BTreeSet<VxcId>,
}

/// A port as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortUsage {
    pub name: PortName,
    pub configured: bool,
    /// VLANs in use by VXC ends or reserved by single-use keys, ascending.
    pub vlans: Vec<Vlan>,
    pub untagged_vxc: Option<VxcId>,
    /// False while an untagged VXC takes the whole port.
    pub accepting: bool,
}

/// The whole model: ports from the config, keys and VXCs from the state.
#[derive(Clone, Debug, Default)]
pub struct Model {
    ports: BTreeMap<PortName, PortState>,
    keys: BTreeMap<KeyId, ServiceKey>,
    vxcs: BTreeMap<VxcId, Vxc>,
    /// Live VXCs built from each key.
    key_users: HashMap<KeyId, BTreeSet<VxcId>>,
    /// This host's core (VTEP) address; `None`: no `[core]`, so no end may be on a peer.
    core: Option<IpAddr>,
    /// The VXC each VNI carries.
    vnis: HashMap<Vni, VxcId>,
}

fn text(field: &str, value: &str, min: usize) -> Result<(), RuleError> {
    let len = value.chars().count();
    if len < min || len > MAX_TEXT_LEN {
        return Err(RuleError::BadRequest(format!(
            "{field} must be {min} to {MAX_TEXT_LEN} characters, got {len}"
        )));
    }
    Ok(())
}

fn rate(field: &'static str, value: i64) -> Result<u32, RuleError> {
    u32::try_from(value)
        .ok()
        .filter(|r| *r >= 1)
        .ok_or(RuleError::RateInvalid { field, value })
}

fn vlan_in_range(what: &str, raw: i64) -> Result<Vlan, RuleError> {
    Vlan::new(raw).ok_or_else(|| {
        RuleError::VlanInvalid(format!(
            "{what} {raw} is outside 2..=4093 (1, 4094 and 4095 are reserved)"
        ))
    })
}

fn vni_in_range(raw: i64) -> Result<Vni, RuleError> {
    Vni::new(raw).ok_or_else(|| {
        RuleError::BadRequest(format!("vni {raw} is outside 1..={}", super::VNI_MAX))
    })
}

impl Model {
    /// The same model on a host whose core address is `core` (`None`: no `[core]`).
    pub fn with_core(mut self, core: Option<IpAddr>) -> Self {
        self.core = core;
        self
    }

    pub fn set_core(&mut self, core: Option<IpAddr>) {
        self.core = core;
    }

    pub fn core(&self) -> Option<IpAddr> {
        self.core
    }

    /// Parses a `host` field: a peer edge host's core address. Refused on a host without
    /// `[core]`, for this host's own address, and for addresses no host has.
    fn peer_host(&self, field: &str, raw: Option<&str>) -> Result<Option<IpAddr>, RuleError> {
        let Some(raw) = raw else { return Ok(None) };
        let host: IpAddr = raw.parse().map_err(|_| {
            RuleError::BadRequest(format!("{field} {raw:?} is not an IPv4 or IPv6 address"))
        })?;
        if host.is_unspecified() || host.is_multicast() || host.is_loopback() {
            return Err(RuleError::BadRequest(format!(
                "{field} {host} is not the unicast core address of an edge host"
            )));
        }
        match self.core {
            None => Err(RuleError::BadRequest(format!(
                "{field} {host}: this host has no [core] address configured, so it takes no \
                 ends on peers"
            ))),
            Some(own) if own == host => Err(RuleError::BadRequest(format!(
                "{field} {host} is this host's own core address; leave host out for a port of \
                 this host"
            ))),
            Some(_) => Ok(Some(host)),
        }
    }

    /// An empty model with the configured ports.
    pub fn new(ports: impl IntoIterator<Item = PortName>) -> Self {
        let ports = ports
            .into_iter()
            .map(|p| {
                let state = PortState {
                    configured: true,
                    ..PortState::default()
                };
                (p, state)
            })
            .collect();
        Model {
            ports,
            ..Model::default()
        }
    }

    /// Rebuilds a model from stored keys and VXCs. Objects on ports that the config no longer has
    /// are kept (nothing acknowledged is dropped) on unconfigured ports. Two objects that claim
    /// the same VLAN, a VXC beside an untagged VXC, an object stored twice, or a VXC whose key is
    /// missing, make the state inconsistent: refused, naming them.
    pub fn restore(
        ports: impl IntoIterator<Item = PortName>,
        keys: impl IntoIterator<Item = ServiceKey>,
        vxcs: impl IntoIterator<Item = Vxc>,
    ) -> Result<Self, String> {
        let mut model = Model::new(ports);
        for key in keys {
            // A second copy would replace the first but leave the first's VLAN claimed forever.
            if model.keys.contains_key(&key.id) {
                return Err(format!("service key {} appears twice in the state", key.id));
            }
            // A peer's port is the peer's: nothing of it is kept here.
            if key.host.is_none() {
                model.port_mut(&key.port);
                if let (true, Some(vlan), None) = (key.single_use, key.vlan, &key.redeemed_by) {
                    model.claim(&key.port, vlan, Holder::Key(key.id.clone()))?;
                }
            }
            model.keys.insert(key.id.clone(), key);
        }
        for vxc in vxcs {
            if model.vxcs.contains_key(&vxc.id) {
                return Err(format!("VXC {} appears twice in the state", vxc.id));
            }
            if !model.keys.contains_key(&vxc.service_key) {
                return Err(format!(
                    "VXC {} refers to service key {}, which the state does not hold",
                    vxc.id, vxc.service_key
                ));
            }
            if let Some(vni) = vxc.vni {
                if let Some(other) = model.vnis.get(&vni) {
                    return Err(format!(
                        "VNI {vni} is claimed twice: VXCs {other} and {}",
                        vxc.id
                    ));
                }
            }
            if !vxc.a_end.is_local() && !vxc.b_end.is_local() {
                return Err(format!("VXC {} has both ends on peers", vxc.id));
            }
            // An untagged VXC takes its whole port: no other VXC may have an end there.
            let a_local = vxc.a_end.is_local().then_some(&vxc.a_end.port);
            let b_local = vxc.b_end.is_local().then_some(&vxc.b_end.port);
            for port in a_local.into_iter().chain(b_local) {
                if let Some(other) = model.port_mut(port).untagged.clone() {
                    return Err(format!(
                        "VXC {} has an end on port {port}, which untagged VXC {other} takes whole",
                        vxc.id
                    ));
                }
            }
            if vxc.a_end.is_local() {
                if let Some(vlan) = vxc.a_end.vlan {
                    model.claim(&vxc.a_end.port, vlan, Holder::Vxc(vxc.id.clone()))?;
                } else if let Some(other) = model.port_mut(&vxc.a_end.port).vxcs.first().cloned() {
                    return Err(format!(
                        "untagged VXC {} would take port {}, where VXC {other} has an end",
                        vxc.id, vxc.a_end.port
                    ));
                }
            }
            if vxc.b_end.is_local() {
                let Some(vlan) = vxc.b_end.vlan else {
                    return Err(format!(
                        "VXC {} has a B-End on this host without a VLAN",
                        vxc.id
                    ));
                };
                model.claim(&vxc.b_end.port, vlan, Holder::Vxc(vxc.id.clone()))?;
            }
            model.index_vxc(&vxc);
            model.vxcs.insert(vxc.id.clone(), vxc);
        }
        Ok(model)
    }

    fn port_mut(&mut self, port: &PortName) -> &mut PortState {
        self.ports.entry(port.clone()).or_default()
    }

    fn claim(&mut self, port: &PortName, vlan: Vlan, holder: Holder) -> Result<(), String> {
        let state = self.port_mut(port);
        if let Some(other) = state.holders.get(&vlan) {
            return Err(format!(
                "VLAN {vlan} on port {port} is claimed twice: {other} and {holder}"
            ));
        }
        state.taken.insert(vlan);
        state.holders.insert(vlan, holder);
        Ok(())
    }

    /// Records a VXC's port memberships (ends on this host only), VNI and key use; its VLANs
    /// are claimed by the caller.
    fn index_vxc(&mut self, vxc: &Vxc) {
        if vxc.a_end.is_local() {
            let a = self.port_mut(&vxc.a_end.port);
            a.vxcs.insert(vxc.id.clone());
            if vxc.a_end.vlan.is_none() {
                a.untagged = Some(vxc.id.clone());
            }
        }
        if vxc.b_end.is_local() {
            self.port_mut(&vxc.b_end.port).vxcs.insert(vxc.id.clone());
        }
        if let Some(vni) = vxc.vni {
            self.vnis.insert(vni, vxc.id.clone());
        }
        self.key_users
            .entry(vxc.service_key.clone())
            .or_default()
            .insert(vxc.id.clone());
    }

    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.keys.values()
    }

    pub fn key(&self, id: &str) -> Option<&ServiceKey> {
        KeyId::parse("key", id).ok().and_then(|k| self.keys.get(&k))
    }

    pub fn vxcs(&self) -> impl Iterator<Item = &Vxc> {
        self.vxcs.values()
    }

    pub fn vxc(&self, id: &str) -> Option<&Vxc> {
        VxcId::parse("id", id).ok().and_then(|v| self.vxcs.get(&v))
    }

    /// The live VXCs built from a key, in id order.
    pub fn key_users(&self, key: &KeyId) -> Vec<VxcId> {
        self.key_users
            .get(key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The VXCs with an end on a port (at most one per VLAN, so bounded by the VLAN space).
    pub fn vxcs_on_port(&self, port: &PortName) -> impl Iterator<Item = &Vxc> {
        self.ports
            .get(port)
            .into_iter()
            .flat_map(|state| state.vxcs.iter())
            .filter_map(|id| self.vxcs.get(id))
    }

    pub fn ports(&self) -> impl Iterator<Item = PortUsage> + '_ {
        self.ports.iter().map(|(name, state)| PortUsage {
            name: name.clone(),
            configured: state.configured,
            vlans: state
                .holders
                .keys()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            untagged_vxc: state.untagged.clone(),
            accepting: state.untagged.is_none(),
        })
    }

    fn configured_port(&self, field: &str, raw: &str) -> Result<(PortName, &PortState), RuleError> {
        let port = PortName::parse(field, raw)?;
        match self.ports.get(&port) {
            Some(state) if state.configured => Ok((port, state)),
            _ => Err(RuleError::UnknownPort {
                port: raw.to_owned(),
            }),
        }
    }

    fn untagged_busy(&self, port: &PortName) -> Result<(), RuleError> {
        match self.ports.get(port).and_then(|s| s.untagged.as_ref()) {
            Some(vxc) => Err(RuleError::PortUntaggedBusy {
                port: port.clone(),
                vxc: vxc.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why a key cannot be redeemed right now, or `None` when it can.
    pub fn key_refusal(&self, key: &ServiceKey, now: OffsetDateTime) -> Option<RuleError> {
        if !key.active {
            return Some(RuleError::KeyInactive {
                key: key.id.clone(),
            });
        }
        if let Some(valid_from) = key.valid_from.filter(|from| now < *from) {
            return Some(RuleError::KeyNotYetValid {
                key: key.id.clone(),
                valid_from,
            });
        }
        if let Some(valid_until) = key.valid_until.filter(|until| now >= *until) {
            return Some(RuleError::KeyExpired {
                key: key.id.clone(),
                valid_until,
            });
        }
        if let (true, Some(by)) = (key.single_use, &key.redeemed_by) {
            return Some(RuleError::KeyUsed {
                key: key.id.clone(),
                by: by.clone(),
            });
        }
        if let Some(host) = key.host {
            // The peer checks its port; this host must still be able to reach it.
            return self.core.is_none().then(|| {
                RuleError::BadRequest(format!(
                    "service key {} is on peer {host}, and this host has no [core] address \
                     configured",
                    key.id
                ))
            });
        }
        // Redeeming builds a B-End on the key's port, which must still be configured here.
        if !self.ports.get(&key.port).is_some_and(|s| s.configured) {
            return Some(RuleError::UnknownPort {
                port: key.port.to_string(),
            });
        }
        self.untagged_busy(&key.port).err()
    }

    /// Checks a `key.put`. An existing key may change only `active` and the validity window.
    pub fn plan_key(&self, req: &KeyRequest) -> Result<Change<ServiceKey>, RuleError> {
        let id = KeyId::parse("key", &req.key)?;
        let port = PortName::parse("port", &req.port)?;
        text("description", &req.description, 0)?;
        let max_speed_mbps = rate("max_speed_mbps", req.max_speed_mbps)?;
        let host = self.peer_host("host", req.host.as_deref())?;
        let vlan = match (req.single_use, req.vlan) {
            (true, None) => return Err(RuleError::VlanRequired { key: id }),
            (true, Some(raw)) => Some(vlan_in_range("B-End vlan", raw)?),
            (false, Some(raw)) => {
                return Err(RuleError::VlanInvalid(format!(
                    "multi-use service key {id} cannot carry a vlan ({raw}): B-End VLANs of a \
                     multi-use key are assigned on port {port} for each VXC"
                )))
            }
            (false, None) => None,
        };
        if let (Some(from), Some(until)) = (req.valid_from, req.valid_until) {
            if from >= until {
                return Err(RuleError::BadRequest(format!(
                    "service key {id}: valid_from {from} is not before valid_until {until}"
                )));
            }
        }
        let wanted = ServiceKey {
            id: id.clone(),
            port,
            description: req.description.clone(),
            single_use: req.single_use,
            max_speed_mbps,
            vlan,
            valid_from: req.valid_from,
            valid_until: req.valid_until,
            active: req.active,
            redeemed_by: None,
            host,
        };
        if let Some(existing) = self.keys.get(&id) {
            let object = format!("service key {id}");
            let immutable = [
                ("port", existing.port != wanted.port),
                ("single_use", existing.single_use != wanted.single_use),
                (
                    "max_speed_mbps",
                    existing.max_speed_mbps != wanted.max_speed_mbps,
                ),
                ("vlan", existing.vlan != wanted.vlan),
                ("description", existing.description != wanted.description),
                ("host", existing.host != wanted.host),
            ];
            if let Some((field, _)) = immutable.into_iter().find(|(_, differs)| *differs) {
                return Err(RuleError::ImmutableField { object, field });
            }
            let after = ServiceKey {
                redeemed_by: existing.redeemed_by.clone(),
                ..wanted
            };
            return Ok(if &after == existing {
                Change::Unchanged(after)
            } else {
                Change::Updated {
                    before: existing.clone(),
                    after,
                }
            });
        }
        if wanted.host.is_some() {
            // The port and its VLANs are the peer's to check.
            return Ok(Change::Created(wanted));
        }
        let (port, state) = self.configured_port("port", &req.port)?;
        self.untagged_busy(&port)?;
        if let Some(vlan) = vlan {
            if let Some(holder) = state.holders.get(&vlan) {
                return Err(RuleError::VlanInUse {
                    port,
                    vlan,
                    held_by: holder.clone(),
                    next_available: state.taken.next_available(vlan),
                });
            }
        }
        Ok(Change::Created(wanted))
    }

    /// Applies an accepted key plan.
    pub fn commit_key(&mut self, change: Change<ServiceKey>) {
        match change {
            Change::Unchanged(_) => {}
            Change::Created(key) => {
                if let (true, Some(vlan), None) = (key.single_use, key.vlan, key.host) {
                    let state = self.port_mut(&key.port);
                    state.taken.insert(vlan);
                    state.holders.insert(vlan, Holder::Key(key.id.clone()));
                }
                self.keys.insert(key.id.clone(), key);
            }
            Change::Updated { after, .. } => {
                self.keys.insert(after.id.clone(), after);
            }
        }
    }

    /// Checks a `vxc.put` (and answers `vxc.plan`). A new id redeems the key; an existing id may
    /// change only `name`, `service_level_ref`, `rate_mbps`, `shutdown` and a tagged A-End's VLAN.
    pub fn plan_vxc(&self, req: &VxcRequest, now: OffsetDateTime) -> Result<VxcPlan, RuleError> {
        let id = VxcId::parse("id", &req.id)?;
        text("name", &req.name, 1)?;
        if let Some(reference) = &req.service_level_ref {
            text("service_level_ref", reference, 0)?;
        }
        let key_id = KeyId::parse("service_key", &req.service_key)?;
        let a_port = PortName::parse("a_end.port", &req.a_end.port)?;
        let a_host = self.peer_host("a_end.host", req.a_end.host.as_deref())?;
        let vni = req.vni.map(vni_in_range).transpose()?;
        let rate_mbps = rate("rate_mbps", req.rate_mbps)?;
        let a_vlan = match (req.a_end.untagged, req.a_end.vlan) {
            (true, Some(raw)) => {
                return Err(RuleError::VlanInvalid(format!(
                    "A-End of VXC {id}: vlan {raw} given together with untagged; choose one"
                )))
            }
            (true, None) => None,
            (false, Some(raw)) => Some(vlan_in_range("A-End vlan", raw)?),
            (false, None) => None,
        };
        match self.vxcs.get(&id) {
            Some(existing) => self.plan_vxc_update(
                existing,
                req,
                &key_id,
                (&a_port, a_host),
                a_vlan,
                vni,
                rate_mbps,
            ),
            None => {
                let tunnel = Tunnel { a_host, vni };
                self.plan_vxc_create(id, req, key_id, a_vlan, tunnel, rate_mbps, now)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_vxc_update(
        &self,
        existing: &Vxc,
        req: &VxcRequest,
        key_id: &KeyId,
        (a_port, a_host): (&PortName, Option<IpAddr>),
        a_vlan: Option<Vlan>,
        vni: Option<Vni>,
        rate_mbps: u32,
    ) -> Result<VxcPlan, RuleError> {
        let untagged_now = existing.a_end.vlan.is_none();
        let immutable = [
            ("service_key", &existing.service_key != key_id),
            ("a_end.port", &existing.a_end.port != a_port),
            ("a_end.host", existing.a_end.host != a_host),
            ("a_end.untagged", untagged_now != req.a_end.untagged),
            ("vni", existing.vni != vni),
        ];
        if let Some((field, _)) = immutable.into_iter().find(|(_, differs)| *differs) {
            return Err(RuleError::ImmutableField {
                object: format!("VXC {}", existing.id),
                field,
            });
        }
        self.check_rate_within_key(key_id, rate_mbps)?;
        // A tagged A-End may move to another VLAN of its port (an omitted VLAN keeps the one
        // assigned), under the rules of a new one: free on the port, or refused naming the
        // holder and the next free VLAN.
        let a_end_vlan = match (existing.a_end.vlan, a_vlan) {
            (Some(now), Some(wanted)) if wanted != now && !existing.a_end.is_local() => {
                // A peer's VLAN: the peer checked it.
                Some(wanted)
            }
            (Some(now), Some(wanted)) if wanted != now => {
                let state = self.ports.get(a_port);
                if let (Some(state), Some(holder)) =
                    (state, state.and_then(|s| s.holders.get(&wanted)))
                {
                    return Err(RuleError::VlanInUse {
                        port: a_port.clone(),
                        vlan: wanted,
                        held_by: holder.clone(),
                        next_available: state.taken.next_available(wanted),
                    });
                }
                Some(wanted)
            }
            (now, _) => now,
        };
        let after = Vxc {
            name: req.name.clone(),
            service_level_ref: req.service_level_ref.clone(),
            rate_mbps,
            shutdown: req.shutdown,
            a_end: AEnd {
                port: existing.a_end.port.clone(),
                vlan: a_end_vlan,
                host: existing.a_end.host,
            },
            ..existing.clone()
        };
        let change = if &after == existing {
            Change::Unchanged(after)
        } else {
            Change::Updated {
                before: existing.clone(),
                after,
            }
        };
        Ok(VxcPlan {
            change,
            key_after: None,
        })
    }

    fn check_rate_within_key(
        &self,
        key_id: &KeyId,
        rate_mbps: u32,
    ) -> Result<&ServiceKey, RuleError> {
        let key = self.keys.get(key_id).ok_or_else(|| RuleError::UnknownKey {
            key: key_id.to_string(),
        })?;
        if rate_mbps > key.max_speed_mbps {
            return Err(RuleError::RateExceedsKey {
                key: key.id.clone(),
                rate_mbps,
                max_speed_mbps: key.max_speed_mbps,
            });
        }
        Ok(key)
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_vxc_create(
        &self,
        id: VxcId,
        req: &VxcRequest,
        key_id: KeyId,
        a_vlan: Option<Vlan>,
        tunnel: Tunnel,
        rate_mbps: u32,
        now: OffsetDateTime,
    ) -> Result<VxcPlan, RuleError> {
        let a_local = tunnel.a_host.is_none();
        let (a_port, a_state) = if a_local {
            let (port, state) = self.configured_port("a_end.port", &req.a_end.port)?;
            (port, Some(state))
        } else {
            (PortName::parse("a_end.port", &req.a_end.port)?, None)
        };
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| RuleError::UnknownKey {
                key: key_id.to_string(),
            })?;
        self.check_tunnel(&id, &a_port, &tunnel, key)?;
        if let Some(refusal) = self.key_refusal(key, now) {
            return Err(refusal);
        }
        let untagged = req.a_end.untagged;
        if let Some(a_state) = a_state {
            self.untagged_busy(&a_port)?;
            if untagged {
                if !a_state.vxcs.is_empty() {
                    return Err(RuleError::PortNotEmpty {
                        port: a_port,
                        vxcs: a_state.vxcs.iter().cloned().collect(),
                    });
                }
                if a_port == key.port && key.host.is_none() {
                    return Err(RuleError::VlanInvalid(format!(
                        "A-End port {a_port} is also the B-End port of service key {key_id}: an \
                         untagged A-End cannot share its port with a tagged B-End"
                    )));
                }
            }
        }
        self.check_rate_within_key(&key_id, rate_mbps)?;

        if let (Some(host), false, None) = (tunnel.a_host, untagged, a_vlan) {
            return Err(RuleError::RemoteVlanRequired { vxc: id, host });
        }
        let a_end_vlan =
            match (untagged, a_vlan, a_state) {
                (true, _, _) => None,
                // A peer's VLAN: the peer assigned and checked it.
                (false, vlan, None) => vlan,
                (false, Some(vlan), Some(a_state)) => match a_state.holders.get(&vlan) {
                    Some(holder) => {
                        return Err(RuleError::VlanInUse {
                            port: a_port,
                            vlan,
                            held_by: holder.clone(),
                            next_available: a_state.taken.next_available(vlan),
                        })
                    }
                    None => Some(vlan),
                },
                (false, None, Some(a_state)) => Some(a_state.taken.first_free().ok_or_else(
                    || RuleError::NoFreeVlan {
                        port: a_port.clone(),
                    },
                )?),
            };
        let b_vlan = match key.vlan {
            Some(reserved) if key.single_use => Some(reserved),
            // A multi-use key's VLAN on a peer's port is the peer's to assign.
            _ if key.host.is_some() => None,
            _ => {
                let b_state = self.ports.get(&key.port);
                let mut taken = b_state.map(|s| s.taken.clone()).unwrap_or_default();
                if let (true, true, Some(a)) = (a_local, a_port == key.port, a_end_vlan) {
                    taken.insert(a);
                }
                Some(taken.first_free().ok_or_else(|| RuleError::NoFreeVlan {
                    port: key.port.clone(),
                })?)
            }
        };
        let vxc = Vxc {
            id: id.clone(),
            name: req.name.clone(),
            service_key: key_id,
            rate_mbps,
            service_level_ref: req.service_level_ref.clone(),
            a_end: AEnd {
                port: a_port,
                vlan: a_end_vlan,
                host: tunnel.a_host,
            },
            b_end: BEnd {
                port: key.port.clone(),
                vlan: b_vlan,
                host: key.host,
            },
            created_at: now,
            shutdown: req.shutdown,
            vni: tunnel.vni,
        };
        let key_after = key.single_use.then(|| ServiceKey {
            redeemed_by: Some(id),
            ..key.clone()
        });
        Ok(VxcPlan {
            change: Change::Created(vxc),
            key_after,
        })
    }

    /// The rules of a new VXC's ends on peers: at most one end there, and then a VNI that no
    /// other VXC of this host uses; no VNI for a VXC of this host alone.
    fn check_tunnel(
        &self,
        id: &VxcId,
        a_port: &PortName,
        tunnel: &Tunnel,
        key: &ServiceKey,
    ) -> Result<(), RuleError> {
        if let (Some(a), Some(b)) = (tunnel.a_host, key.host) {
            return Err(RuleError::BadRequest(format!(
                "VXC {id}: A-End port {a_port} is on peer {a} and service key {}'s port {} is on \
                 peer {b}; nothing of it would be on this host",
                key.id, key.port
            )));
        }
        let peer = tunnel.a_host.or(key.host);
        match (peer, tunnel.vni) {
            (Some(peer), None) => Err(RuleError::BadRequest(format!(
                "VXC {id} has an end on peer {peer}: a vni (1..={}) is required to carry it",
                super::VNI_MAX
            ))),
            (None, Some(vni)) => Err(RuleError::BadRequest(format!(
                "VXC {id} has both ends on this host: vni {vni} is only for a VXC with an end on \
                 a peer"
            ))),
            (Some(_), Some(vni)) => match self.vnis.get(&vni) {
                Some(holder) => Err(RuleError::VniInUse {
                    vni,
                    vxc: holder.clone(),
                }),
                None => Ok(()),
            },
            (None, None) => Ok(()),
        }
    }

    /// Applies an accepted VXC plan.
    pub fn commit_vxc(&mut self, plan: VxcPlan) {
        if let Some(key) = plan.key_after {
            self.keys.insert(key.id.clone(), key);
        }
        match plan.change {
            Change::Unchanged(_) => {}
            Change::Created(vxc) => {
                let holder = Holder::Vxc(vxc.id.clone());
                if let (Some(vlan), true) = (vxc.a_end.vlan, vxc.a_end.is_local()) {
                    let a = self.port_mut(&vxc.a_end.port);
                    a.taken.insert(vlan);
                    a.holders.insert(vlan, holder.clone());
                }
                // For a single-use key this replaces the key's reservation by the VXC.
                if let (Some(vlan), true) = (vxc.b_end.vlan, vxc.b_end.is_local()) {
                    let b = self.port_mut(&vxc.b_end.port);
                    b.taken.insert(vlan);
                    b.holders.insert(vlan, holder);
                }
                self.index_vxc(&vxc);
                self.vxcs.insert(vxc.id.clone(), vxc);
            }
            Change::Updated { before, after } => {
                if before.a_end.vlan != after.a_end.vlan && after.a_end.is_local() {
                    let holder = Holder::Vxc(after.id.clone());
                    let a = self.port_mut(&after.a_end.port);
                    if let Some(old) = before.a_end.vlan {
                        a.taken.remove(old);
                        a.holders.remove(&old);
                    }
                    if let Some(new) = after.a_end.vlan {
                        a.taken.insert(new);
                        a.holders.insert(new, holder);
                    }
                }
                self.vxcs.insert(after.id.clone(), after);
            }
        }
    }

    /// Checks a `vxc.delete`: the VXC that would go.
    pub fn plan_delete_vxc(&self, id: &str) -> Result<&Vxc, RuleError> {
        self.vxc(id).ok_or_else(|| RuleError::NotFound {
            what: "VXC",
            id: id.to_owned(),
        })
    }

    /// Removes a VXC and frees its VLANs. A single-use key stays used.
    pub fn commit_delete_vxc(&mut self, id: &VxcId) -> Option<Vxc> {
        let vxc = self.vxcs.remove(id)?;
        if let Some(vni) = vxc.vni {
            self.vnis.remove(&vni);
        }
        if let Some(a) = self
            .ports
            .get_mut(&vxc.a_end.port)
            .filter(|_| vxc.a_end.is_local())
        {
            if let Some(vlan) = vxc.a_end.vlan {
                a.taken.remove(vlan);
                a.holders.remove(&vlan);
            } else {
                a.untagged = None;
            }
            a.vxcs.remove(id);
        }
        if let Some(b) = self
            .ports
            .get_mut(&vxc.b_end.port)
            .filter(|_| vxc.b_end.is_local())
        {
            if let Some(vlan) = vxc.b_end.vlan {
                b.taken.remove(vlan);
                b.holders.remove(&vlan);
            }
            b.vxcs.remove(id);
        }
        if let Some(users) = self.key_users.get_mut(&vxc.service_key) {
            users.remove(id);
        }
        Some(vxc)
    }
}
