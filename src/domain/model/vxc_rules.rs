//! The VXC rules: what a `vxc.put` may create or change (its ends, its rate within the key, its
//! tunnel to a peer), and the commit and delete of a VXC.

use std::net::IpAddr;

use time::OffsetDateTime;

use super::{rate, text, vlan_in_range, Change, Model, VxcPlan};
use crate::domain::{
    AEnd, BEnd, Holder, KeyId, PortName, RuleError, ServiceKey, Vlan, Vni, Vxc, VxcId, VxcRequest,
};

/// What a new VXC asks of the core: the A-End's peer (if the A-End is there) and the VNI.
struct Tunnel {
    a_host: Option<IpAddr>,
    vni: Option<Vni>,
}

fn vni_in_range(raw: i64) -> Result<Vni, RuleError> {
    Vni::new(raw).ok_or_else(|| {
        RuleError::BadRequest(format!(
            "vni {raw} is outside 1..={}",
            crate::domain::VNI_MAX
        ))
    })
}

impl Model {
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
                crate::domain::VNI_MAX
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
                self.revise(&vxc.id);
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
                self.revise(&after.id);
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
        self.revisions.remove(id);
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
