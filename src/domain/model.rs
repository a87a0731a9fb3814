//! Keys, VXCs and ports, and every rule that binds them. Checks are pure: `plan_*` looks at the
//! model and returns what would change (or the rule that refuses it) without changing anything;
//! `commit_*` applies a plan that was accepted. The daemon programs the kernel and writes the state
//! file between the two, so a refused or failed request leaves the model exactly as it was.
//!
//! This file holds the model itself (ports, indexes, restore, queries and the checks both kinds of
//! request share); the key rules are in `key_rules`, the VXC rules in `vxc_rules`.

mod key_rules;
mod vxc_rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::{Holder, KeyId, PortName, RuleError, ServiceKey, Vlan, VlanSet, Vni, Vxc, VxcId};

/// Longest description, name and service level reference.
pub const MAX_TEXT_LEN: usize = 255;

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
    /// Each VXC's revision: a number no earlier commit of any VXC had, given at each create or
    /// update. A reader that saw revision r and finds r again knows the VXC was not touched
    /// meanwhile, even if it was changed and changed back (the reconcile pass relies on it).
    revisions: HashMap<VxcId, u64>,
    last_revision: u64,
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

    /// The revision of a VXC (see `revisions`); `None` when there is no such VXC.
    pub fn revision(&self, id: &VxcId) -> Option<u64> {
        self.revisions.get(id).copied()
    }

    /// The same model with `from`'s revisions: a model rebuilt from the same VXCs (new ports)
    /// keeps them, so that no revision number is ever given twice.
    pub fn with_revisions_of(mut self, from: &Model) -> Self {
        self.revisions = from.revisions.clone();
        self.last_revision = from.last_revision;
        self
    }

    fn revise(&mut self, id: &VxcId) {
        self.last_revision += 1;
        self.revisions.insert(id.clone(), self.last_revision);
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
}
