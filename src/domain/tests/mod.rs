//! Unit tests for the domain core: every rule of `shared/domain.md` and the protocol v1 issue, and
//! every error code the model produces. Each refusal is checked for its code, its details and for
//! leaving the model exactly as it was.

use time::macros::datetime;
use time::OffsetDateTime;

use super::*;

/// The clock of every plan unless a test says otherwise.
pub(super) const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
pub(super) const PORTS: [&str; 4] = ["p1", "p2", "p3", "p4"];

// ---------------------------------------------------------------------------------------------
// Builders and probes
// ---------------------------------------------------------------------------------------------

pub(super) fn pn(raw: &str) -> PortName {
    PortName::parse("port", raw).unwrap()
}

pub(super) fn kid(raw: &str) -> KeyId {
    KeyId::parse("key", raw).unwrap()
}

pub(super) fn vid(raw: &str) -> VxcId {
    VxcId::parse("id", raw).unwrap()
}

pub(super) fn v(raw: u16) -> Vlan {
    Vlan::new(raw.into()).unwrap()
}

pub(super) fn model() -> Model {
    Model::new(PORTS.map(pn))
}

/// A multi-use key with a 1000 Mbps maximum and no window.
pub(super) fn multi(key: &str, port: &str) -> KeyRequest {
    KeyRequest {
        key: key.to_owned(),
        port: port.to_owned(),
        description: String::new(),
        single_use: false,
        max_speed_mbps: 1000,
        vlan: None,
        valid_from: None,
        valid_until: None,
        active: true,
        host: None,
    }
}

pub(super) fn single(key: &str, port: &str, vlan: i64) -> KeyRequest {
    KeyRequest {
        single_use: true,
        vlan: Some(vlan),
        ..multi(key, port)
    }
}

/// A VXC at 100 Mbps whose A-End VLAN is assigned.
pub(super) fn vxc(id: &str, key: &str, a_port: &str) -> VxcRequest {
    VxcRequest {
        id: id.to_owned(),
        name: format!("VXC {id}"),
        service_key: key.to_owned(),
        rate_mbps: 100,
        a_end: AEndRequest {
            port: a_port.to_owned(),
            vlan: None,
            untagged: false,
            host: None,
        },
        service_level_ref: None,
        shutdown: false,
        vni: None,
    }
}

pub(super) fn tagged(mut req: VxcRequest, vlan: i64) -> VxcRequest {
    req.a_end.vlan = Some(vlan);
    req
}

pub(super) fn untagged(mut req: VxcRequest) -> VxcRequest {
    req.a_end.untagged = true;
    req
}

pub(super) fn put_key(m: &mut Model, req: KeyRequest) -> ServiceKey {
    let change = m
        .plan_key(&req)
        .unwrap_or_else(|e| panic!("key.put {} refused: {e}", req.key));
    let after = change.after().clone();
    m.commit_key(change);
    after
}

pub(super) fn put_vxc(m: &mut Model, req: VxcRequest) -> Vxc {
    let plan = m
        .plan_vxc(&req, NOW)
        .unwrap_or_else(|e| panic!("vxc.put {} refused: {e}", req.id));
    let after = plan.change.after().clone();
    m.commit_vxc(plan);
    after
}

pub(super) fn delete_vxc(m: &mut Model, id: &str) -> Vxc {
    let planned = m.plan_delete_vxc(id).unwrap().clone();
    let deleted = m.commit_delete_vxc(&planned.id).unwrap();
    assert_eq!(planned, deleted);
    deleted
}

/// Everything observable about a model, to prove that a refusal changed nothing.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    keys: Vec<ServiceKey>,
    vxcs: Vec<Vxc>,
    ports: Vec<PortUsage>,
    key_users: Vec<(KeyId, Vec<VxcId>)>,
}

pub(super) fn snapshot(m: &Model) -> Snapshot {
    Snapshot {
        keys: m.keys().cloned().collect(),
        vxcs: m.vxcs().cloned().collect(),
        ports: m.ports().collect(),
        key_users: m
            .keys()
            .map(|k| (k.id.clone(), m.key_users(&k.id)))
            .collect(),
    }
}

pub(super) fn refuse_key(m: &Model, req: &KeyRequest) -> RuleError {
    let before = snapshot(m);
    let err = match m.plan_key(req) {
        Ok(change) => panic!("key.put {} was accepted: {change:?}", req.key),
        Err(err) => err,
    };
    assert_eq!(snapshot(m), before, "refused key.put changed the model");
    err
}

pub(super) fn refuse_vxc_at(m: &Model, req: &VxcRequest, now: OffsetDateTime) -> RuleError {
    let before = snapshot(m);
    let err = match m.plan_vxc(req, now) {
        Ok(plan) => panic!("vxc.put {} was accepted: {plan:?}", req.id),
        Err(err) => err,
    };
    assert_eq!(snapshot(m), before, "refused vxc.put changed the model");
    err
}

pub(super) fn refuse_vxc(m: &Model, req: &VxcRequest) -> RuleError {
    refuse_vxc_at(m, req, NOW)
}

pub(super) fn usage(m: &Model, port: &str) -> PortUsage {
    m.ports()
        .find(|p| p.name.as_str() == port)
        .unwrap_or_else(|| panic!("port {port} missing from ports()"))
}

pub(super) fn port_vlans(m: &Model, port: &str) -> Vec<u16> {
    usage(m, port).vlans.into_iter().map(Vlan::get).collect()
}

/// Who holds `vlan` on `port`, found the way a client would: by trying to store a single-use key
/// there.
pub(super) fn holder(m: &Model, port: &str, vlan: u16) -> Option<Holder> {
    match m.plan_key(&single("probe", port, vlan.into())) {
        Ok(_) => None,
        Err(RuleError::VlanInUse { held_by, .. }) => Some(held_by),
        Err(other) => panic!("probing VLAN {vlan} on {port}: {other}"),
    }
}

pub(super) fn assert_code(err: &RuleError, code: &str) {
    assert_eq!(err.code(), code, "{err:?}");
}

mod cross_host;
mod errors;
mod keys;
mod restore;
mod vxc_changes;
mod vxc_put;
