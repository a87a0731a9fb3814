//! The service key rules: when a key can be redeemed, and what a `key.put` may change.

use time::OffsetDateTime;

use super::{rate, text, vlan_in_range, Change, Model};
use crate::domain::{Holder, KeyId, KeyRequest, PortName, RuleError, ServiceKey};

impl Model {
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
}
