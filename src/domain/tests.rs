//! Unit tests for the domain core: every rule of `shared/domain.md` and the protocol v1 issue, and
//! every error code the model produces. Each refusal is checked for its code, its details and for
//! leaving the model exactly as it was.

use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;

/// The clock of every plan unless a test says otherwise.
const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
const PORTS: [&str; 4] = ["p1", "p2", "p3", "p4"];

// ---------------------------------------------------------------------------------------------
// Builders and probes
// ---------------------------------------------------------------------------------------------

fn pn(raw: &str) -> PortName {
    PortName::parse("port", raw).unwrap()
}

fn kid(raw: &str) -> KeyId {
    KeyId::parse("key", raw).unwrap()
}

fn vid(raw: &str) -> VxcId {
    VxcId::parse("id", raw).unwrap()
}

fn v(raw: u16) -> Vlan {
    Vlan::new(raw.into()).unwrap()
}

fn model() -> Model {
    Model::new(PORTS.map(pn))
}

/// A multi-use key with a 1000 Mbps maximum and no window.
fn multi(key: &str, port: &str) -> KeyRequest {
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

fn single(key: &str, port: &str, vlan: i64) -> KeyRequest {
    KeyRequest {
        single_use: true,
        vlan: Some(vlan),
        ..multi(key, port)
    }
}

/// A VXC at 100 Mbps whose A-End VLAN is assigned.
fn vxc(id: &str, key: &str, a_port: &str) -> VxcRequest {
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

fn tagged(mut req: VxcRequest, vlan: i64) -> VxcRequest {
    req.a_end.vlan = Some(vlan);
    req
}

fn untagged(mut req: VxcRequest) -> VxcRequest {
    req.a_end.untagged = true;
    req
}

fn put_key(m: &mut Model, req: KeyRequest) -> ServiceKey {
    let change = m
        .plan_key(&req)
        .unwrap_or_else(|e| panic!("key.put {} refused: {e}", req.key));
    let after = change.after().clone();
    m.commit_key(change);
    after
}

fn put_vxc(m: &mut Model, req: VxcRequest) -> Vxc {
    let plan = m
        .plan_vxc(&req, NOW)
        .unwrap_or_else(|e| panic!("vxc.put {} refused: {e}", req.id));
    let after = plan.change.after().clone();
    m.commit_vxc(plan);
    after
}

fn delete_vxc(m: &mut Model, id: &str) -> Vxc {
    let planned = m.plan_delete_vxc(id).unwrap().clone();
    let deleted = m.commit_delete_vxc(&planned.id).unwrap();
    assert_eq!(planned, deleted);
    deleted
}

/// Everything observable about a model, to prove that a refusal changed nothing.
#[derive(Debug, PartialEq)]
struct Snapshot {
    keys: Vec<ServiceKey>,
    vxcs: Vec<Vxc>,
    ports: Vec<PortUsage>,
    key_users: Vec<(KeyId, Vec<VxcId>)>,
}

fn snapshot(m: &Model) -> Snapshot {
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

fn refuse_key(m: &Model, req: &KeyRequest) -> RuleError {
    let before = snapshot(m);
    let err = match m.plan_key(req) {
        Ok(change) => panic!("key.put {} was accepted: {change:?}", req.key),
        Err(err) => err,
    };
    assert_eq!(snapshot(m), before, "refused key.put changed the model");
    err
}

fn refuse_vxc_at(m: &Model, req: &VxcRequest, now: OffsetDateTime) -> RuleError {
    let before = snapshot(m);
    let err = match m.plan_vxc(req, now) {
        Ok(plan) => panic!("vxc.put {} was accepted: {plan:?}", req.id),
        Err(err) => err,
    };
    assert_eq!(snapshot(m), before, "refused vxc.put changed the model");
    err
}

fn refuse_vxc(m: &Model, req: &VxcRequest) -> RuleError {
    refuse_vxc_at(m, req, NOW)
}

fn usage(m: &Model, port: &str) -> PortUsage {
    m.ports()
        .find(|p| p.name.as_str() == port)
        .unwrap_or_else(|| panic!("port {port} missing from ports()"))
}

fn port_vlans(m: &Model, port: &str) -> Vec<u16> {
    usage(m, port).vlans.into_iter().map(Vlan::get).collect()
}

/// Who holds `vlan` on `port`, found the way a client would: by trying to store a single-use key
/// there.
fn holder(m: &Model, port: &str, vlan: u16) -> Option<Holder> {
    match m.plan_key(&single("probe", port, vlan.into())) {
        Ok(_) => None,
        Err(RuleError::VlanInUse { held_by, .. }) => Some(held_by),
        Err(other) => panic!("probing VLAN {vlan} on {port}: {other}"),
    }
}

fn assert_code(err: &RuleError, code: &str) {
    assert_eq!(err.code(), code, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// key.put: field rules of a new key
// ---------------------------------------------------------------------------------------------

#[test]
fn key_request_json_defaults_to_empty_description_active_and_no_vlan_or_window() {
    let req: KeyRequest = serde_json::from_str(
        r#"{"key":"k1","port":"p1","single_use":false,"max_speed_mbps":1000}"#,
    )
    .unwrap();
    assert_eq!(req, multi("k1", "p1"));
}

#[test]
fn key_request_json_refuses_unknown_fields() {
    let err = serde_json::from_str::<KeyRequest>(
        r#"{"key":"k1","port":"p1","single_use":false,"max_speed_mbps":1,"colour":"red"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn new_multi_use_key_is_created_as_asked_and_reserves_no_vlan() {
    let mut m = model();
    let change = m.plan_key(&multi("k1", "p1")).unwrap();
    let expected = ServiceKey {
        id: kid("k1"),
        port: pn("p1"),
        description: String::new(),
        single_use: false,
        max_speed_mbps: 1000,
        vlan: None,
        valid_from: None,
        valid_until: None,
        active: true,
        redeemed_by: None,
        host: None,
    };
    assert_eq!(change, Change::Created(expected.clone()));
    m.commit_key(change);
    assert_eq!(m.key("k1"), Some(&expected));
    assert_eq!(m.keys().count(), 1);
    assert!(port_vlans(&m, "p1").is_empty());
}

#[test]
fn new_single_use_key_reserves_its_vlan_on_its_port_only() {
    let mut m = model();
    let key = put_key(&mut m, single("k1", "p1", 100));
    assert_eq!(key.vlan, Some(v(100)));
    assert_eq!(port_vlans(&m, "p1"), [100]);
    assert_eq!(holder(&m, "p1", 100), Some(Holder::Key(kid("k1"))));
    assert!(port_vlans(&m, "p2").is_empty());
    assert_eq!(holder(&m, "p2", 100), None);
}

#[test]
fn key_id_must_be_1_to_64_letters_digits_or_dashes() {
    let m = model();
    let too_long = "k".repeat(65);
    for bad in ["", "k 1", "k_1", "k.1", "k/1", "clé", too_long.as_str()] {
        let err = refuse_key(&m, &multi(bad, "p1"));
        assert_code(&err, "bad_request");
        assert!(err.to_string().starts_with("key: service key id"), "{err}");
    }
    let longest = "k".repeat(64);
    for good in [
        "K-1",
        "6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11",
        longest.as_str(),
    ] {
        assert!(m.plan_key(&multi(good, "p1")).is_ok(), "{good}");
    }
}

#[test]
fn key_port_with_bad_syntax_is_bad_request_and_unconfigured_port_is_unknown_port() {
    let m = model();
    let err = refuse_key(&m, &multi("k1", "p 1"));
    assert_code(&err, "bad_request");
    assert!(err.to_string().starts_with("port: port name"), "{err}");
    let err = refuse_key(&m, &single("k1", "p9", 100));
    assert_eq!(
        err,
        RuleError::UnknownPort {
            port: "p9".to_owned()
        }
    );
    assert_code(&err, "unknown_port");
}

#[test]
fn key_description_is_limited_to_255_characters_counted_as_characters() {
    let m = model();
    let longest = KeyRequest {
        description: "é".repeat(255),
        ..multi("k1", "p1")
    };
    assert!(m.plan_key(&longest).is_ok(), "255 two-byte characters fit");
    let err = refuse_key(
        &m,
        &KeyRequest {
            description: "d".repeat(256),
            ..multi("k1", "p1")
        },
    );
    assert_code(&err, "bad_request");
    assert!(err.to_string().contains("description"), "{err}");
    assert!(err.to_string().contains("256"), "{err}");
}

#[test]
fn key_max_speed_must_be_1_to_u32_max_else_rate_invalid() {
    let m = model();
    for bad in [0, -1, i64::from(u32::MAX) + 1, i64::MIN] {
        let err = refuse_key(
            &m,
            &KeyRequest {
                max_speed_mbps: bad,
                ..multi("k1", "p1")
            },
        );
        assert_eq!(
            err,
            RuleError::RateInvalid {
                field: "max_speed_mbps",
                value: bad
            }
        );
        assert_code(&err, "rate_invalid");
    }
    for good in [1, i64::from(u32::MAX)] {
        let change = m
            .plan_key(&KeyRequest {
                max_speed_mbps: good,
                ..multi("k1", "p1")
            })
            .unwrap();
        assert_eq!(i64::from(change.after().max_speed_mbps), good);
    }
}

#[test]
fn single_use_key_without_vlan_is_vlan_required() {
    let m = model();
    let req = KeyRequest {
        single_use: true,
        ..multi("k1", "p1")
    };
    let err = refuse_key(&m, &req);
    assert_eq!(err, RuleError::VlanRequired { key: kid("k1") });
    assert_code(&err, "vlan_required");
}

#[test]
fn single_use_key_vlan_outside_2_to_4093_is_vlan_invalid() {
    let m = model();
    for bad in [i64::MIN, -1, 0, 1, 4094, 4095, 4096, 65536 + 100] {
        let err = refuse_key(&m, &single("k1", "p1", bad));
        assert_code(&err, "vlan_invalid");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
    }
    for good in [2, 4093] {
        assert!(m.plan_key(&single("k1", "p1", good)).is_ok(), "{good}");
    }
}

#[test]
fn multi_use_key_with_any_vlan_is_vlan_invalid() {
    let m = model();
    for vlan in [100, 2, 0, -1] {
        let req = KeyRequest {
            vlan: Some(vlan),
            ..multi("k1", "p1")
        };
        let err = refuse_key(&m, &req);
        assert_code(&err, "vlan_invalid");
        assert!(err.to_string().contains("multi-use"), "{err}");
        assert!(err.to_string().contains("k1"), "{err}");
    }
}

#[test]
fn key_validity_window_must_start_before_it_ends() {
    let m = model();
    let t = datetime!(2025-01-01 00:00 UTC);
    for (from, until) in [(t, t), (t + Duration::hours(1), t)] {
        let req = KeyRequest {
            valid_from: Some(from),
            valid_until: Some(until),
            ..multi("k1", "p1")
        };
        let err = refuse_key(&m, &req);
        assert_code(&err, "bad_request");
        assert!(err.to_string().contains("valid_from"), "{err}");
    }
    for (from, until) in [
        (Some(t), Some(t + Duration::nanoseconds(1))),
        (Some(t), None),
        (None, Some(t)),
    ] {
        let req = KeyRequest {
            valid_from: from,
            valid_until: until,
            ..multi("k1", "p1")
        };
        let key = m.plan_key(&req).unwrap().after().clone();
        assert_eq!((key.valid_from, key.valid_until), (from, until));
    }
}

#[test]
fn single_use_key_on_a_vlan_reserved_by_another_key_is_vlan_in_use() {
    let mut m = model();
    put_key(&mut m, single("k1", "p1", 100));
    put_key(&mut m, single("k2", "p1", 101));
    let err = refuse_key(&m, &single("k3", "p1", 100));
    assert_eq!(
        err,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(100),
            held_by: Holder::Key(kid("k1")),
            next_available: Some(v(102)),
        }
    );
    assert_code(&err, "vlan_in_use");
    // The same VLAN on another port is free.
    assert!(m.plan_key(&single("k3", "p2", 100)).is_ok());
}

#[test]
fn single_use_key_on_a_vlan_held_by_either_end_of_a_vxc_is_vlan_in_use() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    assert_eq!(x1.b_end.vlan, Some(v(2)));
    let a_side = refuse_key(&m, &single("k2", "p1", 100));
    assert_eq!(
        a_side,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(100),
            held_by: Holder::Vxc(vid("x1")),
            next_available: Some(v(101)),
        }
    );
    let b_side = refuse_key(&m, &single("k2", "p2", 2));
    assert_eq!(
        b_side,
        RuleError::VlanInUse {
            port: pn("p2"),
            vlan: v(2),
            held_by: Holder::Vxc(vid("x1")),
            next_available: Some(v(3)),
        }
    );
}

#[test]
fn new_key_on_a_port_with_an_untagged_vxc_is_port_untagged_busy() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    let busy = RuleError::PortUntaggedBusy {
        port: pn("p1"),
        vxc: vid("x1"),
    };
    for req in [multi("k2", "p1"), single("k2", "p1", 100)] {
        let err = refuse_key(&m, &req);
        assert_eq!(err, busy);
        assert_code(&err, "port_untagged_busy");
    }
}

// ---------------------------------------------------------------------------------------------
// key.put: an existing key
// ---------------------------------------------------------------------------------------------

#[test]
fn existing_key_refuses_a_change_of_each_immutable_field_and_names_it() {
    let mut m = model();
    let stored = KeyRequest {
        description: "for acme".to_owned(),
        ..single("k1", "p1", 100)
    };
    put_key(&mut m, stored.clone());
    let cases = [
        (
            "port",
            KeyRequest {
                port: "p2".to_owned(),
                ..stored.clone()
            },
        ),
        (
            "single_use",
            KeyRequest {
                single_use: false,
                vlan: None,
                ..stored.clone()
            },
        ),
        (
            "max_speed_mbps",
            KeyRequest {
                max_speed_mbps: 999,
                ..stored.clone()
            },
        ),
        (
            "vlan",
            KeyRequest {
                vlan: Some(101),
                ..stored.clone()
            },
        ),
        (
            "description",
            KeyRequest {
                description: String::new(),
                ..stored.clone()
            },
        ),
    ];
    for (field, req) in cases {
        let err = refuse_key(&m, &req);
        assert_eq!(
            err,
            RuleError::ImmutableField {
                object: "service key k1".to_owned(),
                field
            },
            "changing {field}"
        );
        assert_code(&err, "immutable_field");
    }
    // A multi-use key cannot become single-use either.
    put_key(&mut m, multi("k2", "p1"));
    let err = refuse_key(&m, &single("k2", "p1", 200));
    assert_eq!(
        err,
        RuleError::ImmutableField {
            object: "service key k2".to_owned(),
            field: "single_use"
        }
    );
}

#[test]
fn existing_key_may_change_active_and_validity_window_in_place() {
    let mut m = model();
    let before = put_key(&mut m, single("k1", "p1", 100));
    let from = datetime!(2025-01-01 00:00 UTC);
    let until = datetime!(2026-01-01 00:00 UTC);
    let req = KeyRequest {
        active: false,
        valid_from: Some(from),
        valid_until: Some(until),
        ..single("k1", "p1", 100)
    };
    let change = m.plan_key(&req).unwrap();
    let after = ServiceKey {
        active: false,
        valid_from: Some(from),
        valid_until: Some(until),
        ..before.clone()
    };
    assert_eq!(
        change,
        Change::Updated {
            before,
            after: after.clone()
        }
    );
    let ports_before: Vec<_> = m.ports().collect();
    m.commit_key(change);
    assert_eq!(m.key("k1"), Some(&after));
    assert_eq!(m.keys().count(), 1);
    assert_eq!(m.ports().collect::<Vec<_>>(), ports_before);
    assert_eq!(holder(&m, "p1", 100), Some(Holder::Key(kid("k1"))));
}

#[test]
fn identical_key_put_is_unchanged_and_committing_it_changes_nothing() {
    let mut m = model();
    for req in [single("k1", "p1", 100), multi("k2", "p2")] {
        let stored = put_key(&mut m, req.clone());
        let before = snapshot(&m);
        let change = m.plan_key(&req).unwrap();
        assert_eq!(change, Change::Unchanged(stored));
        m.commit_key(change);
        assert_eq!(snapshot(&m), before);
    }
}

#[test]
fn key_put_on_a_redeemed_single_use_key_keeps_it_redeemed() {
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let stored = m.key("k1").unwrap().clone();
    assert_eq!(stored.redeemed_by, Some(vid("x1")));

    let change = m.plan_key(&single("k1", "p2", 100)).unwrap();
    assert_eq!(change, Change::Unchanged(stored.clone()));

    let deactivate = KeyRequest {
        active: false,
        ..single("k1", "p2", 100)
    };
    let change = m.plan_key(&deactivate).unwrap();
    assert_eq!(change.after().redeemed_by, Some(vid("x1")));
    m.commit_key(change);
    let reactivate = m.plan_key(&single("k1", "p2", 100)).unwrap();
    m.commit_key(reactivate);
    assert_eq!(m.key("k1"), Some(&stored));
    let err = refuse_vxc(&m, &vxc("x2", "k1", "p1"));
    assert_code(&err, "key_used");
}

#[test]
fn existing_key_on_a_port_with_an_untagged_vxc_can_still_be_updated() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p1"));
    put_key(&mut m, multi("k2", "p2"));
    put_vxc(&mut m, untagged(vxc("x1", "k2", "p1")));
    let change = m
        .plan_key(&KeyRequest {
            active: false,
            ..multi("k1", "p1")
        })
        .unwrap();
    assert!(!change.after().active);
    assert!(matches!(change, Change::Updated { .. }));
}

#[test]
fn existing_key_put_checks_field_rules_before_immutability() {
    // Arbitrary but pinned: a put that breaks a field rule is refused for that rule even when it
    // also tries to change an immutable field.
    let mut m = model();
    put_key(&mut m, multi("k1", "p1"));
    let req = KeyRequest {
        single_use: true,
        ..multi("k1", "p1")
    };
    assert_eq!(
        refuse_key(&m, &req),
        RuleError::VlanRequired { key: kid("k1") }
    );
    let req = KeyRequest {
        max_speed_mbps: 0,
        port: "p2".to_owned(),
        ..multi("k1", "p1")
    };
    assert_code(&refuse_key(&m, &req), "rate_invalid");
}

// ---------------------------------------------------------------------------------------------
// Redeeming a key: key_refusal and its codes
// ---------------------------------------------------------------------------------------------

#[test]
fn key_validity_window_is_half_open_from_inclusive_until_exclusive() {
    let mut m = model();
    let from = datetime!(2025-06-01 00:00 UTC);
    let until = datetime!(2025-07-01 00:00 UTC);
    let key = put_key(
        &mut m,
        KeyRequest {
            valid_from: Some(from),
            valid_until: Some(until),
            ..multi("k1", "p2")
        },
    );
    let ns = Duration::nanoseconds(1);
    let not_yet = RuleError::KeyNotYetValid {
        key: kid("k1"),
        valid_from: from,
    };
    let expired = RuleError::KeyExpired {
        key: kid("k1"),
        valid_until: until,
    };
    let cases = [
        (from - ns, Some(not_yet)),
        (from, None),
        (until - ns, None),
        (until, Some(expired.clone())),
        (until + Duration::days(400), Some(expired)),
    ];
    for (now, refusal) in cases {
        assert_eq!(m.key_refusal(&key, now), refusal, "at {now}");
        match refusal {
            Some(err) => assert_eq!(refuse_vxc_at(&m, &vxc("x1", "k1", "p1"), now), err),
            None => assert!(m.plan_vxc(&vxc("x1", "k1", "p1"), now).is_ok(), "at {now}"),
        }
    }
    assert_code(
        &m.key_refusal(&key, from - ns).unwrap(),
        "key_not_yet_valid",
    );
    assert_code(&m.key_refusal(&key, until).unwrap(), "key_expired");
}

#[test]
fn inactive_key_is_refused_until_it_is_activated_again() {
    let mut m = model();
    put_key(
        &mut m,
        KeyRequest {
            active: false,
            ..multi("k1", "p2")
        },
    );
    let err = refuse_vxc(&m, &vxc("x1", "k1", "p1"));
    assert_eq!(err, RuleError::KeyInactive { key: kid("k1") });
    assert_code(&err, "key_inactive");
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
}

#[test]
fn single_use_key_is_used_once_redeemed_and_stays_used_after_its_vxc_is_deleted() {
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let used = RuleError::KeyUsed {
        key: kid("k1"),
        by: vid("x1"),
    };
    let err = refuse_vxc(&m, &vxc("x2", "k1", "p1"));
    assert_eq!(err, used);
    assert_code(&err, "key_used");
    delete_vxc(&mut m, "x1");
    assert_eq!(m.key("k1").unwrap().redeemed_by, Some(vid("x1")));
    assert_eq!(refuse_vxc(&m, &vxc("x2", "k1", "p1")), used);
    assert_eq!(m.key_refusal(m.key("k1").unwrap(), NOW), Some(used));
}

#[test]
fn multi_use_key_is_redeemed_by_many_vxcs() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for id in ["x1", "x2", "x3"] {
        put_vxc(&mut m, vxc(id, "k1", "p1"));
    }
    assert_eq!(m.key("k1").unwrap().redeemed_by, None);
    assert_eq!(m.key_users(&kid("k1")), [vid("x1"), vid("x2"), vid("x3")]);
}

#[test]
fn key_refusal_reports_inactive_then_window_then_used_then_untagged_port() {
    // Arbitrary but pinned: the first failing check wins, in this order.
    let mut m = model();
    put_key(&mut m, multi("k9", "p1"));
    put_key(&mut m, single("k1", "p3", 100));
    // Only a key reservation on p3, so an untagged VXC may take it; k1 is then unredeemable.
    put_vxc(&mut m, untagged(vxc("x2", "k9", "p3")));
    let used_key = ServiceKey {
        redeemed_by: Some(vid("x1")),
        ..m.key("k1").unwrap().clone()
    };
    let past = NOW - Duration::days(1);
    let future = NOW + Duration::days(1);
    let cases = [
        (
            ServiceKey {
                active: false,
                valid_until: Some(past),
                ..used_key.clone()
            },
            "key_inactive",
        ),
        (
            ServiceKey {
                valid_from: Some(future),
                ..used_key.clone()
            },
            "key_not_yet_valid",
        ),
        (
            ServiceKey {
                valid_until: Some(past),
                ..used_key.clone()
            },
            "key_expired",
        ),
        (used_key.clone(), "key_used"),
        (
            ServiceKey {
                redeemed_by: None,
                ..used_key
            },
            "port_untagged_busy",
        ),
    ];
    for (key, code) in cases {
        let refusal = m.key_refusal(&key, NOW).unwrap();
        assert_code(&refusal, code);
    }
}

#[test]
fn key_whose_port_has_an_untagged_vxc_cannot_be_redeemed() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, single("k2", "p1", 100));
    put_key(&mut m, multi("k3", "p1"));
    put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    let busy = RuleError::PortUntaggedBusy {
        port: pn("p1"),
        vxc: vid("x1"),
    };
    for key in ["k2", "k3"] {
        assert_eq!(m.key_refusal(m.key(key).unwrap(), NOW), Some(busy.clone()));
        let err = refuse_vxc(&m, &vxc("x2", key, "p3"));
        assert_eq!(err, busy, "redeeming {key}");
        assert_code(&err, "port_untagged_busy");
    }
}

// ---------------------------------------------------------------------------------------------
// vxc.put: field rules
// ---------------------------------------------------------------------------------------------

#[test]
fn vxc_ids_names_refs_and_ports_follow_the_limits() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let base = vxc("x1", "k1", "p1");
    let cases = [
        (
            VxcRequest {
                id: String::new(),
                ..base.clone()
            },
            "id: VXC id",
        ),
        (
            VxcRequest {
                id: "x 1".to_owned(),
                ..base.clone()
            },
            "id: VXC id",
        ),
        (
            VxcRequest {
                id: "x".repeat(65),
                ..base.clone()
            },
            "id: VXC id",
        ),
        (
            VxcRequest {
                name: String::new(),
                ..base.clone()
            },
            "name must be 1 to 255",
        ),
        (
            VxcRequest {
                name: "n".repeat(256),
                ..base.clone()
            },
            "name must be 1 to 255",
        ),
        (
            VxcRequest {
                service_level_ref: Some("r".repeat(256)),
                ..base.clone()
            },
            "service_level_ref must be 0 to 255",
        ),
        (
            VxcRequest {
                service_key: "k_1".to_owned(),
                ..base.clone()
            },
            "service_key: service key id",
        ),
        (vxc("x1", "k1", "p/1"), "a_end.port: port name"),
    ];
    for (req, message) in cases {
        let err = refuse_vxc(&m, &req);
        assert_code(&err, "bad_request");
        assert!(err.to_string().starts_with(message), "{err}");
    }
    let longest = VxcRequest {
        name: "é".repeat(255),
        service_level_ref: Some("é".repeat(255)),
        ..base.clone()
    };
    assert!(m.plan_vxc(&longest, NOW).is_ok());
    let empty_ref = VxcRequest {
        service_level_ref: Some(String::new()),
        ..base
    };
    assert!(m.plan_vxc(&empty_ref, NOW).is_ok());
}

#[test]
fn vxc_rate_must_be_1_to_u32_max_else_rate_invalid() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for bad in [0, -1, i64::from(u32::MAX) + 1] {
        let req = VxcRequest {
            rate_mbps: bad,
            ..vxc("x1", "k1", "p1")
        };
        let err = refuse_vxc(&m, &req);
        assert_eq!(
            err,
            RuleError::RateInvalid {
                field: "rate_mbps",
                value: bad
            }
        );
        assert_code(&err, "rate_invalid");
    }
}

#[test]
fn vxc_rate_up_to_the_key_maximum_is_accepted_and_above_is_rate_exceeds_key() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let at_max = VxcRequest {
        rate_mbps: 1000,
        ..vxc("x1", "k1", "p1")
    };
    assert_eq!(
        m.plan_vxc(&at_max, NOW).unwrap().change.after().rate_mbps,
        1000
    );
    let err = refuse_vxc(
        &m,
        &VxcRequest {
            rate_mbps: 1001,
            ..vxc("x1", "k1", "p1")
        },
    );
    assert_eq!(
        err,
        RuleError::RateExceedsKey {
            key: kid("k1"),
            rate_mbps: 1001,
            max_speed_mbps: 1000
        }
    );
    assert_code(&err, "rate_exceeds_key");
}

#[test]
fn vxc_a_end_vlan_outside_2_to_4093_is_vlan_invalid() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for bad in [-1, 0, 1, 4094, 4095, 100_000] {
        let err = refuse_vxc(&m, &tagged(vxc("x1", "k1", "p1"), bad));
        assert_code(&err, "vlan_invalid");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
    }
    for good in [2, 4093] {
        let plan = m
            .plan_vxc(&tagged(vxc("x1", "k1", "p1"), good), NOW)
            .unwrap();
        assert_eq!(
            plan.change.after().a_end.vlan.map(|x| i64::from(x.get())),
            Some(good)
        );
    }
}

#[test]
fn vxc_a_end_with_vlan_and_untagged_together_is_vlan_invalid() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let err = refuse_vxc(&m, &untagged(tagged(vxc("x1", "k1", "p1"), 100)));
    assert_code(&err, "vlan_invalid");
    assert!(err.to_string().contains("untagged"), "{err}");
}

#[test]
fn vxc_on_an_unconfigured_a_end_port_is_unknown_port() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let err = refuse_vxc(&m, &vxc("x1", "k1", "p9"));
    assert_eq!(
        err,
        RuleError::UnknownPort {
            port: "p9".to_owned()
        }
    );
    assert_code(&err, "unknown_port");
}

#[test]
fn vxc_with_a_key_that_does_not_exist_is_unknown_key() {
    let m = model();
    let err = refuse_vxc(&m, &vxc("x1", "nokey", "p1"));
    assert_eq!(
        err,
        RuleError::UnknownKey {
            key: "nokey".to_owned()
        }
    );
    assert_code(&err, "unknown_key");
}

#[test]
fn new_vxc_records_its_fields_ends_and_creation_time() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let req = VxcRequest {
        name: "acme to cloud".to_owned(),
        rate_mbps: 250,
        service_level_ref: Some("CC-42".to_owned()),
        ..tagged(vxc("x1", "k1", "p1"), 300)
    };
    let plan = m.plan_vxc(&req, NOW).unwrap();
    let expected = Vxc {
        id: vid("x1"),
        name: "acme to cloud".to_owned(),
        service_key: kid("k1"),
        rate_mbps: 250,
        service_level_ref: Some("CC-42".to_owned()),
        a_end: AEnd {
            port: pn("p1"),
            vlan: Some(v(300)),
            host: None,
        },
        b_end: BEnd {
            port: pn("p2"),
            vlan: Some(v(2)),
            host: None,
        },
        created_at: NOW,
        shutdown: false,
        vni: None,
    };
    assert_eq!(
        plan,
        VxcPlan {
            change: Change::Created(expected.clone()),
            key_after: None
        }
    );
    m.commit_vxc(plan);
    assert_eq!(m.vxc("x1"), Some(&expected));
    assert_eq!(port_vlans(&m, "p1"), [300]);
    assert_eq!(port_vlans(&m, "p2"), [2]);
    assert_eq!(holder(&m, "p1", 300), Some(Holder::Vxc(vid("x1"))));
    assert_eq!(holder(&m, "p2", 2), Some(Holder::Vxc(vid("x1"))));
}

// ---------------------------------------------------------------------------------------------
// VLANs: assignment, reservation, vlan_in_use and next_available
// ---------------------------------------------------------------------------------------------

#[test]
fn assigned_a_end_vlan_is_the_smallest_free_on_the_port() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let a_vlan = |x: &Vxc| x.a_end.vlan.map(Vlan::get);
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    assert_eq!(a_vlan(&x1), Some(2));
    put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 3));
    let x3 = put_vxc(&mut m, vxc("x3", "k1", "p1"));
    assert_eq!(a_vlan(&x3), Some(4));
    delete_vxc(&mut m, "x1");
    let x4 = put_vxc(&mut m, vxc("x4", "k1", "p1"));
    assert_eq!(a_vlan(&x4), Some(2));
    assert_eq!(port_vlans(&m, "p1"), [2, 3, 4]);
}

#[test]
fn assignment_skips_vlans_reserved_by_single_use_keys() {
    let mut m = model();
    put_key(&mut m, single("k1", "p1", 2));
    put_key(&mut m, multi("k2", "p2"));
    put_key(&mut m, multi("k3", "p1"));
    let x1 = put_vxc(&mut m, vxc("x1", "k2", "p1"));
    assert_eq!(x1.a_end.vlan, Some(v(3)), "A-End skips k1's reservation");
    let x2 = put_vxc(&mut m, vxc("x2", "k3", "p3"));
    assert_eq!(
        x2.b_end.vlan,
        Some(v(4)),
        "B-End skips k1's reservation and x1"
    );
    assert_eq!(holder(&m, "p1", 2), Some(Holder::Key(kid("k1"))));
}

#[test]
fn multi_use_b_end_is_the_smallest_free_vlan_on_the_key_port() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p3"));
    put_vxc(&mut m, tagged(vxc("x0", "k2", "p2"), 3));
    let b_vlans: Vec<u16> = ["x1", "x2", "x3"]
        .into_iter()
        .map(|id| {
            put_vxc(&mut m, vxc(id, "k1", "p1"))
                .b_end
                .vlan
                .unwrap()
                .get()
        })
        .collect();
    assert_eq!(b_vlans, [2, 4, 5]);
    for id in ["x1", "x2", "x3"] {
        assert_eq!(m.vxc(id).unwrap().b_end.port, pn("p2"));
    }
}

#[test]
fn a_and_b_end_on_the_same_port_of_a_multi_use_key_get_distinct_vlans() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p1"));
    let ends = |x: &Vxc| (x.a_end.vlan.map(Vlan::get), x.b_end.vlan.unwrap().get());
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    assert_eq!(ends(&x1), (Some(2), 3), "B gets the next free after A");
    let x2 = put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 10));
    assert_eq!(ends(&x2), (Some(10), 4));
    let x3 = put_vxc(&mut m, tagged(vxc("x3", "k1", "p1"), 5));
    assert_eq!(ends(&x3), (Some(5), 6), "B skips the VLAN A just took");
    assert_eq!(port_vlans(&m, "p1"), [2, 3, 4, 5, 6, 10]);
    assert_eq!(usage(&m, "p1").untagged_vxc, None);
}

#[test]
fn single_use_key_with_the_a_end_on_its_own_port_keeps_its_vlan_for_the_b_end() {
    let mut m = model();
    put_key(&mut m, single("k1", "p1", 2));
    let err = refuse_vxc(&m, &tagged(vxc("x1", "k1", "p1"), 2));
    assert_eq!(
        err,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(2),
            held_by: Holder::Key(kid("k1")),
            next_available: Some(v(3)),
        }
    );
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    assert_eq!((x1.a_end.vlan, x1.b_end.vlan), (Some(v(3)), Some(v(2))));
}

#[test]
fn single_use_b_end_takes_the_key_vlan_and_the_reservation_passes_to_the_vxc() {
    let mut m = model();
    let key = put_key(&mut m, single("k1", "p2", 300));
    let plan = m.plan_vxc(&vxc("x1", "k1", "p1"), NOW).unwrap();
    assert_eq!(
        plan.change.after().b_end,
        BEnd {
            port: pn("p2"),
            vlan: Some(v(300)),
            host: None,
        }
    );
    assert_eq!(
        plan.key_after,
        Some(ServiceKey {
            redeemed_by: Some(vid("x1")),
            ..key
        })
    );
    // The plan alone changes nothing: the key is still unredeemed and still holds the VLAN.
    assert_eq!(m.key("k1").unwrap().redeemed_by, None);
    m.commit_vxc(plan);
    assert_eq!(m.key("k1").unwrap().redeemed_by, Some(vid("x1")));
    assert_eq!(holder(&m, "p2", 300), Some(Holder::Vxc(vid("x1"))));
    assert_eq!(port_vlans(&m, "p2"), [300]);
}

#[test]
fn requested_a_end_vlan_in_use_is_refused_offering_the_next_free_above_it() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for (id, vlan) in [("x100", 100), ("x101", 101), ("x102", 102)] {
        put_vxc(&mut m, tagged(vxc(id, "k1", "p1"), vlan));
    }
    for (requested, holder_id) in [(100, "x100"), (101, "x101"), (102, "x102")] {
        let err = refuse_vxc(&m, &tagged(vxc("x9", "k1", "p1"), requested));
        assert_eq!(
            err,
            RuleError::VlanInUse {
                port: pn("p1"),
                vlan: v(requested as u16),
                held_by: Holder::Vxc(vid(holder_id)),
                next_available: Some(v(103)),
            }
        );
        assert_code(&err, "vlan_in_use");
    }
    // Not the smallest free overall (2), and not "highest in use + 1" if a gap lies above.
    put_vxc(&mut m, tagged(vxc("x200", "k1", "p1"), 200));
    let err = refuse_vxc(&m, &tagged(vxc("x9", "k1", "p1"), 200));
    assert!(matches!(err, RuleError::VlanInUse { next_available: Some(n), .. } if n == v(201)));
}

#[test]
fn next_available_wraps_to_the_smallest_free_vlan_when_none_is_free_above() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for vlan in 4090..=4093 {
        put_vxc(&mut m, tagged(vxc(&format!("x{vlan}"), "k1", "p1"), vlan));
    }
    let next = |m: &Model, vlan: i64| match refuse_vxc(m, &tagged(vxc("x9", "k1", "p1"), vlan)) {
        RuleError::VlanInUse { next_available, .. } => next_available.map(Vlan::get),
        other => panic!("{other:?}"),
    };
    assert_eq!(next(&m, 4093), Some(2));
    assert_eq!(next(&m, 4090), Some(2));
    put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 2));
    assert_eq!(next(&m, 4093), Some(3));
    assert_eq!(next(&m, 2), Some(3));
}

#[test]
fn filling_a_port_assigns_every_vlan_from_2_to_4093_then_refuses() {
    // 4092 assignments on one port (A-Ends on p1, B-Ends on p2); VlanSet keeps each one to a few
    // word scans, so this runs in milliseconds even unoptimised.
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    for n in 0..4092u16 {
        let x = put_vxc(&mut m, vxc(&format!("x{n}"), "k1", "p1"));
        assert_eq!(x.a_end.vlan, Some(v(n + 2)));
        assert_eq!(x.b_end.vlan, Some(v(n + 2)));
    }
    assert_eq!(port_vlans(&m, "p1"), (2..=4093).collect::<Vec<u16>>());
    assert_eq!(m.key_users(&kid("k1")).len(), 4092);

    // A-End port full: assigning fails, requesting fails with no offer.
    let err = refuse_vxc(&m, &vxc("xx", "k1", "p1"));
    assert_eq!(err, RuleError::NoFreeVlan { port: pn("p1") });
    assert_code(&err, "vlan_in_use");
    assert!(err.to_string().contains("port p1"), "{err}");
    let err = refuse_vxc(&m, &tagged(vxc("xx", "k1", "p1"), 100));
    assert_eq!(
        err,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(100),
            held_by: Holder::Vxc(vid("x98")),
            next_available: None,
        }
    );
    assert!(
        err.to_string().ends_with("no VLAN is free on that port"),
        "{err}"
    );
    let err = refuse_key(&m, &single("k2", "p1", 4093));
    assert!(
        matches!(
            err,
            RuleError::VlanInUse {
                next_available: None,
                ..
            }
        ),
        "{err:?}"
    );

    // B-End port full: a free A-End port does not help a multi-use key on p2.
    let err = refuse_vxc(&m, &vxc("xx", "k1", "p3"));
    assert_eq!(err, RuleError::NoFreeVlan { port: pn("p2") });

    // Freeing one VLAN makes it the next assignment and the only offer.
    delete_vxc(&mut m, "x998");
    let err = refuse_vxc(&m, &tagged(vxc("xx", "k1", "p1"), 100));
    assert!(matches!(err, RuleError::VlanInUse { next_available: Some(n), .. } if n == v(1000)));
    let x = put_vxc(&mut m, vxc("xx", "k1", "p1"));
    assert_eq!((x.a_end.vlan, x.b_end.vlan), (Some(v(1000)), Some(v(1000))));
}

// ---------------------------------------------------------------------------------------------
// Untagged A-Ends: exclusivity in both directions
// ---------------------------------------------------------------------------------------------

#[test]
fn untagged_a_end_takes_the_whole_port() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    assert_eq!(x1.a_end.vlan, None);
    assert_eq!(x1.b_end.vlan, Some(v(2)));
    assert_eq!(
        usage(&m, "p1"),
        PortUsage {
            name: pn("p1"),
            configured: true,
            vlans: vec![],
            untagged_vxc: Some(vid("x1")),
            accepting: false,
        }
    );
    let p2 = usage(&m, "p2");
    assert!(p2.accepting && p2.untagged_vxc.is_none());
}

#[test]
fn port_with_an_untagged_vxc_accepts_no_further_vxc_of_any_kind() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    let busy = RuleError::PortUntaggedBusy {
        port: pn("p1"),
        vxc: vid("x1"),
    };
    for req in [
        vxc("x2", "k1", "p1"),
        tagged(vxc("x2", "k1", "p1"), 100),
        untagged(vxc("x2", "k1", "p1")),
    ] {
        assert_eq!(refuse_vxc(&m, &req), busy);
    }
}

#[test]
fn untagged_a_end_on_a_port_with_vxcs_is_port_not_empty_listing_them() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k3", "p1"));
    put_vxc(&mut m, vxc("x2", "k1", "p1")); // A-End on p1
    put_vxc(&mut m, vxc("x1", "k3", "p3")); // B-End on p1
    let err = refuse_vxc(&m, &untagged(vxc("x9", "k1", "p1")));
    assert_eq!(
        err,
        RuleError::PortNotEmpty {
            port: pn("p1"),
            vxcs: vec![vid("x1"), vid("x2")],
        }
    );
    assert_code(&err, "port_not_empty");
    assert!(err.to_string().contains("x1, x2"), "{err}");
    // Once both are gone the port takes an untagged VXC.
    delete_vxc(&mut m, "x1");
    delete_vxc(&mut m, "x2");
    put_vxc(&mut m, untagged(vxc("x9", "k1", "p1")));
}

#[test]
fn untagged_a_end_on_the_key_own_port_is_vlan_invalid() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p1"));
    put_key(&mut m, single("k2", "p2", 100));
    for (key, port) in [("k1", "p1"), ("k2", "p2")] {
        let err = refuse_vxc(&m, &untagged(vxc("x1", key, port)));
        assert_code(&err, "vlan_invalid");
        assert!(
            err.to_string()
                .contains(&format!("B-End port of service key {key}")),
            "{err}"
        );
    }
}

#[test]
fn untagged_a_end_is_allowed_beside_key_reservations_which_then_cannot_be_redeemed() {
    // Arbitrary but pinned: only VXCs make a port "not empty"; a single-use key's reservation does
    // not, and the key becomes unredeemable while the untagged VXC lives.
    let mut m = model();
    put_key(&mut m, single("k1", "p1", 100));
    put_key(&mut m, multi("k2", "p2"));
    put_vxc(&mut m, untagged(vxc("x1", "k2", "p1")));
    let p1 = usage(&m, "p1");
    assert_eq!((p1.vlans, p1.untagged_vxc), (vec![v(100)], Some(vid("x1"))));
    assert_eq!(
        refuse_vxc(&m, &vxc("x2", "k1", "p3")),
        RuleError::PortUntaggedBusy {
            port: pn("p1"),
            vxc: vid("x1")
        }
    );
}

#[test]
fn deleting_the_untagged_vxc_reopens_the_port_for_vxcs_and_keys() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p1"));
    put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    delete_vxc(&mut m, "x1");
    let p1 = usage(&m, "p1");
    assert!(p1.accepting && p1.untagged_vxc.is_none() && p1.vlans.is_empty());
    assert_eq!(m.key_refusal(m.key("k2").unwrap(), NOW), None);
    put_key(&mut m, single("k3", "p1", 100));
    put_vxc(&mut m, vxc("x2", "k2", "p3"));
    put_vxc(&mut m, vxc("x3", "k1", "p1"));
}

// ---------------------------------------------------------------------------------------------
// vxc.put on an existing id
// ---------------------------------------------------------------------------------------------

#[test]
fn existing_vxc_may_change_name_service_level_ref_and_rate() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let before = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let ports_before: Vec<_> = m.ports().collect();
    let req = VxcRequest {
        name: "renamed".to_owned(),
        service_level_ref: Some("CC-7".to_owned()),
        rate_mbps: 1000,
        ..vxc("x1", "k1", "p1")
    };
    let later = NOW + Duration::hours(5);
    let plan = m.plan_vxc(&req, later).unwrap();
    let after = Vxc {
        name: "renamed".to_owned(),
        service_level_ref: Some("CC-7".to_owned()),
        rate_mbps: 1000,
        ..before.clone()
    };
    assert_eq!(after.created_at, NOW, "an update keeps the creation time");
    assert_eq!(
        plan,
        VxcPlan {
            change: Change::Updated {
                before,
                after: after.clone()
            },
            key_after: None
        }
    );
    m.commit_vxc(plan);
    assert_eq!(m.vxc("x1"), Some(&after));
    assert_eq!(m.ports().collect::<Vec<_>>(), ports_before);
    assert_eq!(m.key_users(&kid("k1")), [vid("x1")]);
}

#[test]
fn existing_vxc_rate_change_is_bounded_by_the_key_maximum() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let req = VxcRequest {
        rate_mbps: 1001,
        ..vxc("x1", "k1", "p1")
    };
    assert_eq!(
        refuse_vxc(&m, &req),
        RuleError::RateExceedsKey {
            key: kid("k1"),
            rate_mbps: 1001,
            max_speed_mbps: 1000
        }
    );
    let req = VxcRequest {
        rate_mbps: 0,
        ..vxc("x1", "k1", "p1")
    };
    assert_code(&refuse_vxc(&m, &req), "rate_invalid");
}

#[test]
fn existing_vxc_refuses_a_change_of_each_immutable_field_and_names_it() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p2"));
    put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    put_vxc(&mut m, untagged(vxc("x2", "k1", "p3")));
    let cases = [
        ("x1", "service_key", tagged(vxc("x1", "k2", "p1"), 100)),
        ("x1", "a_end.port", tagged(vxc("x1", "k1", "p4"), 100)),
        ("x1", "a_end.untagged", untagged(vxc("x1", "k1", "p1"))),
        ("x2", "a_end.untagged", vxc("x2", "k1", "p3")),
        ("x2", "a_end.untagged", tagged(vxc("x2", "k1", "p3"), 5)),
    ];
    for (id, field, req) in cases {
        let err = refuse_vxc(&m, &req);
        assert_eq!(
            err,
            RuleError::ImmutableField {
                object: format!("VXC {id}"),
                field
            }
        );
        assert_code(&err, "immutable_field");
    }
}

#[test]
fn a_live_a_end_vlan_change_frees_the_old_vlan_and_takes_the_new_one() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let before = put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    let plan = m
        .plan_vxc(&tagged(vxc("x1", "k1", "p1"), 200), NOW)
        .unwrap();
    let after = Vxc {
        a_end: AEnd {
            port: pn("p1"),
            vlan: Some(v(200)),
            host: None,
        },
        ..before.clone()
    };
    assert_eq!(
        plan,
        VxcPlan {
            change: Change::Updated {
                before,
                after: after.clone()
            },
            key_after: None
        }
    );
    m.commit_vxc(plan);
    assert_eq!(m.vxc("x1"), Some(&after));
    // The old VLAN is free for another VXC; the new one is taken.
    let x2 = put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 100));
    assert_eq!(x2.a_end.vlan, Some(v(100)));
    let err = refuse_vxc(&m, &tagged(vxc("x3", "k1", "p1"), 200));
    assert_code(&err, "vlan_in_use");
    // The B-End VLAN stays the key's.
    assert_eq!(m.vxc("x1").map(|x| x.b_end.vlan), Some(after.b_end.vlan));
}

#[test]
fn a_live_a_end_vlan_change_to_a_vlan_in_use_names_the_holder_and_the_next_free() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 200));
    let before = snapshot(&m);
    let err = refuse_vxc(&m, &tagged(vxc("x1", "k1", "p1"), 200));
    assert_eq!(
        err,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(200),
            held_by: Holder::Vxc(vid("x2")),
            next_available: Some(v(201)),
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("x2") && message.contains("201"),
        "{message}"
    );
    assert_code(
        &refuse_vxc(&m, &tagged(vxc("x1", "k1", "p1"), 4094)),
        "vlan_invalid",
    );
    assert_eq!(snapshot(&m), before);
}

#[test]
fn shutdown_is_changed_in_place_both_ways_and_keeps_the_vlans() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let up = put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    let shut_req = VxcRequest {
        shutdown: true,
        ..tagged(vxc("x1", "k1", "p1"), 100)
    };
    let shut = put_vxc(&mut m, shut_req.clone());
    assert!(shut.shutdown);
    assert_eq!(
        (shut.a_end.clone(), shut.b_end.clone()),
        (up.a_end.clone(), up.b_end.clone())
    );
    assert_code(
        &refuse_vxc(&m, &tagged(vxc("x2", "k1", "p1"), 100)),
        "vlan_in_use",
    );
    // The same put again changes nothing; omitting shutdown brings it back.
    let again = m.plan_vxc(&shut_req, NOW).unwrap();
    assert_eq!(again.change, Change::Unchanged(shut.clone()));
    let back = put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    assert_eq!(back, up);
}

#[test]
fn identical_vxc_put_is_unchanged_and_an_omitted_vlan_matches_the_assigned_one() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p3"));
    let assigned = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let chosen = put_vxc(&mut m, tagged(vxc("x2", "k1", "p1"), 300));
    let whole = put_vxc(&mut m, untagged(vxc("x3", "k2", "p4")));
    let before = snapshot(&m);
    for (stored, req) in [
        (assigned.clone(), vxc("x1", "k1", "p1")),
        (assigned.clone(), tagged(vxc("x1", "k1", "p1"), 2)),
        (chosen.clone(), tagged(vxc("x2", "k1", "p1"), 300)),
        (chosen, vxc("x2", "k1", "p1")),
        (whole, untagged(vxc("x3", "k2", "p4"))),
    ] {
        let plan = m.plan_vxc(&req, NOW + Duration::days(1)).unwrap();
        assert_eq!(
            plan,
            VxcPlan {
                change: Change::Unchanged(stored),
                key_after: None
            }
        );
        m.commit_vxc(plan);
        assert_eq!(snapshot(&m), before);
    }
}

#[test]
fn repeating_the_put_that_redeemed_a_single_use_key_is_unchanged_not_key_used() {
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let plan = m.plan_vxc(&vxc("x1", "k1", "p1"), NOW).unwrap();
    assert_eq!(plan.change, Change::Unchanged(x1));
    assert_eq!(plan.key_after, None);
}

#[test]
fn existing_vxc_can_be_edited_whatever_state_its_key_is_in() {
    // Arbitrary but pinned: key_refusal guards redemption only; a live VXC stays editable when its
    // key is inactive, expired or used.
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    put_key(
        &mut m,
        KeyRequest {
            active: false,
            valid_until: Some(NOW),
            ..single("k1", "p2", 100)
        },
    );
    let req = VxcRequest {
        name: "still editable".to_owned(),
        ..vxc("x1", "k1", "p1")
    };
    let plan = m.plan_vxc(&req, NOW + Duration::days(1)).unwrap();
    assert_eq!(plan.change.after().name, "still editable");
}

#[test]
fn existing_vxc_put_without_service_level_ref_clears_it() {
    // Arbitrary but pinned: vxc.put replaces the editable fields; an omitted reference is None.
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(
        &mut m,
        VxcRequest {
            service_level_ref: Some("CC-1".to_owned()),
            ..vxc("x1", "k1", "p1")
        },
    );
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    assert_eq!(x1.service_level_ref, None);
}

// ---------------------------------------------------------------------------------------------
// vxc.delete
// ---------------------------------------------------------------------------------------------

#[test]
fn deleting_an_unknown_vxc_is_not_found_and_changes_nothing() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let before = snapshot(&m);
    for id in ["nope", "not a valid id"] {
        let err = m.plan_delete_vxc(id).unwrap_err();
        assert_eq!(
            err,
            RuleError::NotFound {
                what: "VXC",
                id: id.to_owned()
            }
        );
        assert_code(&err, "not_found");
        assert_eq!(err.to_string(), format!("VXC {id} does not exist"));
    }
    assert_eq!(m.commit_delete_vxc(&vid("nope")), None);
    assert_eq!(snapshot(&m), before);
}

#[test]
fn deleting_a_vxc_frees_both_its_vlans_and_its_key_use() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p1"));
    put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    put_vxc(&mut m, vxc("x2", "k2", "p1")); // A and B both on p1
    let x1 = delete_vxc(&mut m, "x1");
    assert_eq!(x1.id, vid("x1"));
    assert_eq!(m.vxc("x1"), None);
    assert_eq!(holder(&m, "p1", 100), None);
    assert_eq!(holder(&m, "p2", 2), None);
    assert!(m.key_users(&kid("k1")).is_empty());
    delete_vxc(&mut m, "x2");
    assert!(port_vlans(&m, "p1").is_empty() && port_vlans(&m, "p2").is_empty());
    assert!(m.key_users(&kid("k2")).is_empty());
    assert_eq!(m.vxcs().count(), 0);
    // Deleted twice: gone.
    assert_code(&m.plan_delete_vxc("x1").unwrap_err(), "not_found");
}

#[test]
fn deleting_a_single_use_vxc_frees_the_key_vlan_for_others() {
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    delete_vxc(&mut m, "x1");
    assert!(port_vlans(&m, "p2").is_empty());
    let k2 = put_key(&mut m, single("k2", "p2", 100));
    assert_eq!(k2.vlan, Some(v(100)));
    assert_eq!(holder(&m, "p2", 100), Some(Holder::Key(kid("k2"))));
}

#[test]
fn a_deleted_vxc_id_can_be_used_again_for_a_new_vxc() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    delete_vxc(&mut m, "x1");
    let again = put_vxc(&mut m, tagged(vxc("x1", "k1", "p3"), 200));
    assert_eq!(again.a_end.port, pn("p3"));
    assert_eq!(port_vlans(&m, "p3"), [200]);
}

// ---------------------------------------------------------------------------------------------
// key_users and ports()
// ---------------------------------------------------------------------------------------------

#[test]
fn key_users_lists_the_live_vxcs_of_a_key_in_id_order() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k2", "p3"));
    for id in ["x2", "x1", "x3"] {
        put_vxc(&mut m, vxc(id, "k1", "p1"));
    }
    put_vxc(&mut m, vxc("x4", "k2", "p1"));
    assert_eq!(m.key_users(&kid("k1")), [vid("x1"), vid("x2"), vid("x3")]);
    assert_eq!(m.key_users(&kid("k2")), [vid("x4")]);
    delete_vxc(&mut m, "x2");
    assert_eq!(m.key_users(&kid("k1")), [vid("x1"), vid("x3")]);
    assert!(m.key_users(&kid("unknown")).is_empty());
}

#[test]
fn ports_lists_every_configured_port_with_ascending_vlans_and_the_accepting_flag() {
    let mut m = model();
    assert_eq!(m.ports().map(|p| p.name).collect::<Vec<_>>(), PORTS.map(pn));
    assert!(m
        .ports()
        .all(|p| p.configured && p.accepting && p.vlans.is_empty()));
    put_key(&mut m, single("k1", "p1", 900));
    put_key(&mut m, multi("k2", "p2"));
    put_vxc(&mut m, tagged(vxc("x1", "k2", "p1"), 50));
    put_vxc(&mut m, tagged(vxc("x2", "k2", "p1"), 4000));
    put_vxc(&mut m, untagged(vxc("x3", "k2", "p3")));
    assert_eq!(port_vlans(&m, "p1"), [50, 900, 4000]);
    assert_eq!(port_vlans(&m, "p2"), [2, 3, 4]);
    let flags: Vec<(String, bool, Option<VxcId>)> = m
        .ports()
        .map(|p| (p.name.to_string(), p.accepting, p.untagged_vxc))
        .collect();
    assert_eq!(
        flags,
        [
            ("p1".to_owned(), true, None),
            ("p2".to_owned(), true, None),
            ("p3".to_owned(), false, Some(vid("x3"))),
            ("p4".to_owned(), true, None),
        ]
    );
}

#[test]
fn lookups_by_malformed_ids_find_nothing() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    assert!(m.key("k 1").is_none() && m.key("").is_none());
    assert!(m.vxc("x 1").is_none() && m.vxc("").is_none());
    assert!(m.key("k1").is_some() && m.vxc("x1").is_some());
}

// ---------------------------------------------------------------------------------------------
// restore
// ---------------------------------------------------------------------------------------------

/// A model with every kind of object: unredeemed, live-redeemed and dead-redeemed single-use keys,
/// a multi-use key with A and B on its own port, an untagged VXC, an inactive key with a window.
fn rich_model() -> Model {
    let mut m = model();
    put_key(&mut m, single("free", "p1", 100));
    put_key(&mut m, single("live", "p2", 200));
    put_key(&mut m, single("dead", "p2", 201));
    put_key(&mut m, multi("multi", "p1"));
    put_key(
        &mut m,
        KeyRequest {
            active: false,
            description: "later".to_owned(),
            valid_from: Some(datetime!(2025-01-01 00:00 UTC)),
            valid_until: Some(datetime!(2030-01-01 00:00:00.5 +02:00)),
            ..multi("sleepy", "p3")
        },
    );
    put_vxc(&mut m, vxc("x-live", "live", "p1"));
    put_vxc(&mut m, vxc("x-dead", "dead", "p1"));
    put_vxc(
        &mut m,
        VxcRequest {
            service_level_ref: Some("CC-1".to_owned()),
            ..vxc("x-same", "multi", "p1")
        },
    );
    put_vxc(&mut m, untagged(vxc("x-whole", "multi", "p4")));
    delete_vxc(&mut m, "x-dead");
    m
}

fn restore_via_json(m: &Model) -> Model {
    let keys = serde_json::to_string(&m.keys().collect::<Vec<_>>()).unwrap();
    let vxcs = serde_json::to_string(&m.vxcs().collect::<Vec<_>>()).unwrap();
    let keys: Vec<ServiceKey> = serde_json::from_str(&keys).unwrap();
    let vxcs: Vec<Vxc> = serde_json::from_str(&vxcs).unwrap();
    Model::restore(PORTS.map(pn), keys, vxcs).unwrap()
}

#[test]
fn restore_from_json_rebuilds_the_same_ports_holders_and_key_users() {
    let m = rich_model();
    let back = restore_via_json(&m);
    assert_eq!(snapshot(&back), snapshot(&m));
    for port in m.ports() {
        for vlan in &port.vlans {
            let p = port.name.as_str();
            assert_eq!(holder(&back, p, vlan.get()), holder(&m, p, vlan.get()));
            assert!(holder(&m, p, vlan.get()).is_some());
        }
    }
    assert_eq!(holder(&back, "p1", 100), Some(Holder::Key(kid("free"))));
    assert_eq!(
        holder(&back, "p2", 201),
        None,
        "a used key's VLAN is free once its VXC is gone"
    );
    // The rebuilt indexes answer the next requests the same way.
    let next = vxc("x-next", "multi", "p1");
    assert_eq!(back.plan_vxc(&next, NOW), m.plan_vxc(&next, NOW));
    let used = vxc("x-next", "dead", "p3");
    assert_code(&refuse_vxc(&back, &used), "key_used");
    assert_eq!(
        refuse_vxc(&back, &vxc("x-next", "multi", "p4")),
        RuleError::PortUntaggedBusy {
            port: pn("p4"),
            vxc: vid("x-whole")
        }
    );
    assert_code(
        &refuse_vxc(&back, &vxc("x-next", "sleepy", "p1")),
        "key_inactive",
    );
}

#[test]
fn restore_refuses_two_objects_claiming_one_vlan_and_names_both() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(&mut m, tagged(vxc("x1", "k1", "p1"), 100));
    let k1 = m.key("k1").unwrap().clone();
    let key_on = |id: &str, port: &str, vlan: u16| ServiceKey {
        id: kid(id),
        port: pn(port),
        single_use: true,
        vlan: Some(v(vlan)),
        ..k1.clone()
    };
    let twin = |id: &str, vlan: u16| Vxc {
        id: vid(id),
        a_end: AEnd {
            port: pn("p3"),
            vlan: Some(v(vlan)),
            host: None,
        },
        ..x1.clone()
    };
    let cases: [(Vec<ServiceKey>, Vec<Vxc>, [&str; 2]); 4] = [
        (
            vec![key_on("ka", "p1", 7), key_on("kb", "p1", 7)],
            vec![],
            ["service key ka", "service key kb"],
        ),
        (
            vec![k1.clone(), key_on("ka", "p1", 100)],
            vec![x1.clone()],
            ["service key ka", "VXC x1"],
        ),
        (
            vec![k1.clone()],
            vec![x1.clone(), twin("x2", 300)],
            ["VXC x1", "VXC x2"], // both B-Ends on p2 VLAN 2
        ),
        (
            vec![k1.clone()],
            vec![
                twin("x1", 5),
                Vxc {
                    b_end: BEnd {
                        port: pn("p2"),
                        vlan: Some(v(3)),
                        host: None,
                    },
                    ..twin("x2", 5)
                },
            ],
            ["VXC x1", "VXC x2"], // both A-Ends on p3 VLAN 5
        ),
    ];
    for (keys, vxcs, names) in cases {
        let err = Model::restore(PORTS.map(pn), keys, vxcs).unwrap_err();
        assert!(err.contains("claimed twice"), "{err}");
        for name in names {
            assert!(err.contains(name), "{err} should name {name}");
        }
    }
}

#[test]
fn restore_refuses_two_untagged_vxcs_on_one_port() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(&mut m, untagged(vxc("x1", "k1", "p1")));
    let x2 = Vxc {
        id: vid("x2"),
        b_end: BEnd {
            port: pn("p2"),
            vlan: Some(v(3)),
            host: None,
        },
        ..x1.clone()
    };
    let keys: Vec<ServiceKey> = m.keys().cloned().collect();
    let err = Model::restore(PORTS.map(pn), keys, [x1, x2]).unwrap_err();
    assert!(
        err.contains("x1") && err.contains("x2") && err.contains("port p1"),
        "{err}"
    );
}

#[test]
fn restore_refuses_a_vxc_beside_an_untagged_vxc_in_either_order() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    put_key(&mut m, multi("k3", "p3"));
    let whole = put_vxc(&mut m, untagged(vxc("x-whole", "k1", "p1")));
    let keys: Vec<ServiceKey> = m.keys().cloned().collect();
    // A tagged A-End, or a B-End, on p1 (as a hand-edited or corrupted state could hold).
    let a_end_there = Vxc {
        id: vid("x-tagged"),
        a_end: AEnd {
            port: pn("p1"),
            vlan: Some(v(10)),
            host: None,
        },
        b_end: BEnd {
            port: pn("p2"),
            vlan: Some(v(3)),
            host: None,
        },
        ..whole.clone()
    };
    let b_end_there = Vxc {
        id: vid("x-b"),
        service_key: kid("k3"),
        a_end: AEnd {
            port: pn("p4"),
            vlan: Some(v(10)),
            host: None,
        },
        b_end: BEnd {
            port: pn("p1"),
            vlan: Some(v(10)),
            host: None,
        },
        ..whole.clone()
    };
    for other in [a_end_there, b_end_there] {
        for vxcs in [
            vec![whole.clone(), other.clone()],
            vec![other.clone(), whole.clone()],
        ] {
            let order: Vec<String> = vxcs.iter().map(|x| x.id.to_string()).collect();
            let err = Model::restore(PORTS.map(pn), keys.clone(), vxcs).unwrap_err();
            assert!(
                err.contains("x-whole")
                    && err.contains(other.id.as_str())
                    && err.contains("port p1"),
                "{order:?}: {err}"
            );
        }
    }
}

#[test]
fn restore_refuses_an_object_stored_twice() {
    let mut m = model();
    put_key(&mut m, single("k1", "p2", 100));
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let k1 = m.key("k1").unwrap().clone();
    let moved_key = ServiceKey {
        vlan: Some(v(101)),
        redeemed_by: None,
        ..k1.clone()
    };
    let err = Model::restore(PORTS.map(pn), [moved_key, k1.clone()], [x1.clone()]).unwrap_err();
    assert!(
        err.contains("service key k1") && err.contains("twice"),
        "{err}"
    );
    let moved_vxc = Vxc {
        a_end: AEnd {
            port: pn("p3"),
            vlan: Some(v(7)),
            host: None,
        },
        b_end: BEnd {
            port: pn("p3"),
            vlan: Some(v(8)),
            host: None,
        },
        ..x1.clone()
    };
    let err = Model::restore(PORTS.map(pn), [k1], [x1, moved_vxc]).unwrap_err();
    assert!(err.contains("VXC x1") && err.contains("twice"), "{err}");
}

#[test]
fn restore_refuses_a_vxc_whose_key_is_missing() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let err = Model::restore(PORTS.map(pn), [], [x1]).unwrap_err();
    assert!(
        err.contains("VXC x1") && err.contains("service key k1"),
        "{err}"
    );
}

#[test]
fn restore_keeps_objects_on_ports_the_config_no_longer_has() {
    let m = rich_model();
    // p1 leaves the config.
    let configured = ["p2", "p3", "p4"].map(pn);
    let back = Model::restore(configured, m.keys().cloned(), m.vxcs().cloned()).unwrap();
    assert_eq!(back.keys().count(), m.keys().count());
    assert_eq!(back.vxcs().count(), m.vxcs().count());
    let p1 = usage(&back, "p1");
    assert!(!p1.configured);
    assert_eq!(p1.vlans, usage(&m, "p1").vlans);
    assert!(back
        .ports()
        .filter(|p| p.name != pn("p1"))
        .all(|p| p.configured));
    // Nothing new lands on it: keys, A-Ends and B-Ends of keys stored there.
    assert_eq!(
        refuse_key(&back, &multi("k-new", "p1")),
        RuleError::UnknownPort {
            port: "p1".to_owned()
        }
    );
    assert_eq!(
        refuse_vxc(&back, &vxc("x-new", "live", "p1")),
        RuleError::UnknownPort {
            port: "p1".to_owned()
        }
    );
}

#[test]
fn key_on_a_port_the_config_no_longer_has_cannot_be_redeemed() {
    let m = rich_model();
    let back = Model::restore(
        ["p2", "p3", "p4"].map(pn),
        m.keys().cloned(),
        m.vxcs().cloned(),
    )
    .unwrap();
    let unknown = RuleError::UnknownPort {
        port: "p1".to_owned(),
    };
    for key in ["free", "multi"] {
        assert_eq!(
            refuse_vxc(&back, &vxc("x-new", key, "p3")),
            unknown,
            "{key}"
        );
        assert_eq!(
            back.key_refusal(back.key(key).unwrap(), NOW),
            Some(unknown.clone())
        );
    }
    // Stored keys and live VXCs there stay editable.
    let req = KeyRequest {
        active: false,
        ..single("free", "p1", 100)
    };
    assert!(back.plan_key(&req).is_ok());
    let req = VxcRequest {
        name: "renamed".to_owned(),
        ..vxc("x-same", "multi", "p1")
    };
    assert!(back.plan_vxc(&req, NOW).is_ok());
}

// ---------------------------------------------------------------------------------------------
// serde of stored objects
// ---------------------------------------------------------------------------------------------

#[test]
fn service_key_serializes_its_id_as_key_and_redeemed_by_only_once_set() {
    let mut m = model();
    let key = put_key(
        &mut m,
        KeyRequest {
            description: "acme".to_owned(),
            valid_from: Some(datetime!(2025-06-01 00:00 UTC)),
            ..single("k1", "p2", 100)
        },
    );
    let expected = json!({
        "key": "k1",
        "port": "p2",
        "description": "acme",
        "single_use": true,
        "max_speed_mbps": 1000,
        "vlan": 100,
        "valid_from": "2025-06-01T00:00:00Z",
        "valid_until": null,
        "active": true,
    });
    assert_eq!(serde_json::to_value(&key).unwrap(), expected);
    assert_eq!(serde_json::from_value::<ServiceKey>(expected).unwrap(), key);

    put_vxc(&mut m, vxc("x1", "k1", "p1"));
    let used = m.key("k1").unwrap();
    let value = serde_json::to_value(used).unwrap();
    assert_eq!(value["redeemed_by"], json!("x1"));
    assert_eq!(&serde_json::from_value::<ServiceKey>(value).unwrap(), used);
}

#[test]
fn service_key_deserialization_enforces_the_id_vlan_and_field_rules() {
    let good = json!({
        "key": "k1", "port": "p2", "description": "", "single_use": true,
        "max_speed_mbps": 10, "vlan": 100, "valid_from": null, "valid_until": null,
        "active": true,
    });
    assert!(serde_json::from_value::<ServiceKey>(good.clone()).is_ok());
    let mutate = |field: &str, value: serde_json::Value| {
        let mut bad = good.clone();
        bad[field] = value;
        bad
    };
    let mut renamed = good.clone();
    let id = renamed.as_object_mut().unwrap().remove("key").unwrap();
    renamed["id"] = id;
    for bad in [
        mutate("vlan", json!(4094)),
        mutate("vlan", json!(1)),
        mutate("key", json!("k 1")),
        mutate("port", json!("")),
        mutate("valid_from", json!("yesterday")),
        mutate("extra", json!(1)),
        renamed,
    ] {
        assert!(
            serde_json::from_value::<ServiceKey>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn vxc_serializes_its_ends_and_rfc3339_creation_time() {
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let x1 = put_vxc(
        &mut m,
        VxcRequest {
            service_level_ref: Some("CC-1".to_owned()),
            ..tagged(vxc("x1", "k1", "p1"), 300)
        },
    );
    let expected = json!({
        "id": "x1",
        "name": "VXC x1",
        "service_key": "k1",
        "rate_mbps": 100,
        "service_level_ref": "CC-1",
        "a_end": {"port": "p1", "vlan": 300},
        "b_end": {"port": "p2", "vlan": 2},
        "created_at": "2025-06-01T12:00:00Z",
    });
    assert_eq!(serde_json::to_value(&x1).unwrap(), expected);
    assert_eq!(serde_json::from_value::<Vxc>(expected.clone()).unwrap(), x1);

    let x2 = put_vxc(&mut m, untagged(vxc("x2", "k1", "p3")));
    let value = serde_json::to_value(&x2).unwrap();
    assert_eq!(value["a_end"], json!({"port": "p3", "vlan": null}));
    assert_eq!(value["service_level_ref"], json!(null));
    // An omitted service_level_ref reads back as none.
    let mut without_ref = value.clone();
    without_ref
        .as_object_mut()
        .unwrap()
        .remove("service_level_ref");
    assert_eq!(serde_json::from_value::<Vxc>(without_ref).unwrap(), x2);
    let mut bad = expected;
    bad["b_end"]["vlan"] = json!(4095);
    assert!(serde_json::from_value::<Vxc>(bad).is_err());
}

#[test]
fn vxc_request_json_reads_untagged_and_defaults() {
    let req: VxcRequest = serde_json::from_str(
        r#"{"id":"x1","name":"n","service_key":"k1","rate_mbps":5,"a_end":{"port":"p1","untagged":true}}"#,
    )
    .unwrap();
    assert!(req.a_end.untagged && req.a_end.vlan.is_none() && req.service_level_ref.is_none());
    let req: VxcRequest = serde_json::from_str(
        r#"{"id":"x1","name":"n","service_key":"k1","rate_mbps":5,"a_end":{"port":"p1","vlan":-7}}"#,
    )
    .unwrap();
    assert_eq!((req.a_end.vlan, req.a_end.untagged), (Some(-7), false));
    assert!(serde_json::from_str::<VxcRequest>(
        r#"{"id":"x1","name":"n","service_key":"k1","rate_mbps":5,"a_end":{"port":"p1","tag":3}}"#,
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------------
// Error codes and messages
// ---------------------------------------------------------------------------------------------

#[test]
fn every_rule_error_maps_to_its_protocol_code() {
    let t = NOW;
    let cases = [
        (RuleError::BadRequest("x".into()), "bad_request"),
        (
            RuleError::NotFound {
                what: "VXC",
                id: "x1".into(),
            },
            "not_found",
        ),
        (RuleError::UnknownPort { port: "p9".into() }, "unknown_port"),
        (
            RuleError::VniInUse {
                vni: Vni::new(17).unwrap(),
                vxc: vid("x1"),
            },
            "vni_in_use",
        ),
        (
            RuleError::RemoteVlanRequired {
                vxc: vid("x1"),
                host: ip(PEER),
            },
            "vlan_required",
        ),
        (RuleError::UnknownKey { key: "k9".into() }, "unknown_key"),
        (RuleError::KeyInactive { key: kid("k1") }, "key_inactive"),
        (
            RuleError::KeyNotYetValid {
                key: kid("k1"),
                valid_from: t,
            },
            "key_not_yet_valid",
        ),
        (
            RuleError::KeyExpired {
                key: kid("k1"),
                valid_until: t,
            },
            "key_expired",
        ),
        (
            RuleError::KeyUsed {
                key: kid("k1"),
                by: vid("x1"),
            },
            "key_used",
        ),
        (
            RuleError::KeyNotRemovable { key: "k1".into() },
            "key_not_removable",
        ),
        (
            RuleError::ImmutableField {
                object: "VXC x1".into(),
                field: "a_end.port",
            },
            "immutable_field",
        ),
        (RuleError::VlanInvalid("x".into()), "vlan_invalid"),
        (RuleError::VlanRequired { key: kid("k1") }, "vlan_required"),
        (
            RuleError::VlanInUse {
                port: pn("p1"),
                vlan: v(100),
                held_by: Holder::Vxc(vid("x1")),
                next_available: Some(v(101)),
            },
            "vlan_in_use",
        ),
        (RuleError::NoFreeVlan { port: pn("p1") }, "vlan_in_use"),
        (
            RuleError::PortUntaggedBusy {
                port: pn("p1"),
                vxc: vid("x1"),
            },
            "port_untagged_busy",
        ),
        (
            RuleError::PortNotEmpty {
                port: pn("p1"),
                vxcs: vec![vid("x1")],
            },
            "port_not_empty",
        ),
        (
            RuleError::RateInvalid {
                field: "rate_mbps",
                value: 0,
            },
            "rate_invalid",
        ),
        (
            RuleError::RateExceedsKey {
                key: kid("k1"),
                rate_mbps: 2,
                max_speed_mbps: 1,
            },
            "rate_exceeds_key",
        ),
    ];
    for (err, code) in cases {
        assert_code(&err, code);
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn error_messages_name_the_object_and_the_cause() {
    let cases = [
        (
            RuleError::VlanInUse {
                port: pn("p1"),
                vlan: v(100),
                held_by: Holder::Vxc(vid("x1")),
                next_available: Some(v(101)),
            },
            "VLAN 100 on port p1 is in use by VXC x1; next available 101",
        ),
        (
            RuleError::VlanInUse {
                port: pn("p1"),
                vlan: v(100),
                held_by: Holder::Key(kid("k1")),
                next_available: None,
            },
            "VLAN 100 on port p1 is reserved by single-use service key k1; no VLAN is free on that port",
        ),
        (
            RuleError::KeyUsed {
                key: kid("k1"),
                by: vid("x1"),
            },
            "single-use service key k1 was already redeemed by VXC x1",
        ),
        (
            RuleError::ImmutableField {
                object: "service key k1".into(),
                field: "vlan",
            },
            "service key k1: field vlan cannot be changed once created",
        ),
        (
            RuleError::RateExceedsKey {
                key: kid("k1"),
                rate_mbps: 2000,
                max_speed_mbps: 1000,
            },
            "rate 2000 Mbps exceeds the 1000 Mbps maximum of service key k1",
        ),
        (
            RuleError::PortUntaggedBusy {
                port: pn("p1"),
                vxc: vid("x1"),
            },
            "port p1 carries untagged VXC x1, which takes the whole port",
        ),
    ];
    for (err, message) in cases {
        assert_eq!(err.to_string(), message);
    }
    let key = Holder::Key(kid("k1"));
    let vxc = Holder::Vxc(vid("x1"));
    assert_eq!((key.kind(), key.id()), ("key", "k1"));
    assert_eq!((vxc.kind(), vxc.id()), ("vxc", "x1"));
}

#[test]
fn change_after_is_the_object_as_it_becomes() {
    assert_eq!(Change::Unchanged(1).after(), &1);
    assert_eq!(Change::Created(2).after(), &2);
    assert_eq!(
        Change::Updated {
            before: 3,
            after: 4
        }
        .after(),
        &4
    );
}

#[test]
fn vxcs_on_port_lists_the_vxcs_with_an_end_there_and_forgets_deleted_ones() {
    let mut m = model();
    put_key(&mut m, multi("m-1", "p2"));
    put_vxc(&mut m, vxc("v-1", "m-1", "p1"));
    put_vxc(&mut m, vxc("v-2", "m-1", "p1"));
    let on = |m: &Model, port: &str| -> Vec<String> {
        m.vxcs_on_port(&pn(port))
            .map(|v| v.id.to_string())
            .collect()
    };
    assert_eq!(on(&m, "p1"), ["v-1", "v-2"]);
    assert_eq!(on(&m, "p2"), ["v-1", "v-2"]);
    delete_vxc(&mut m, "v-1");
    assert_eq!(on(&m, "p1"), ["v-2"]);
    assert_eq!(on(&m, "p2"), ["v-2"]);
    assert!(on(&m, "nowhere").is_empty());
}

// ---------------------------------------------------------------------------------------------
// VXCs across edge hosts: an end on a peer, carried over the VXLAN core
// ---------------------------------------------------------------------------------------------

const SELF: &str = "10.99.0.1";
const PEER: &str = "10.99.0.2";

fn ip(raw: &str) -> std::net::IpAddr {
    raw.parse().unwrap()
}

/// A host with `[core] address = SELF`.
fn core_model() -> Model {
    model().with_core(Some(ip(SELF)))
}

/// A copy of a key whose port is on the peer.
fn remote(mut req: KeyRequest, host: &str) -> KeyRequest {
    req.host = Some(host.to_owned());
    req
}

fn with_vni(mut req: VxcRequest, vni: i64) -> VxcRequest {
    req.vni = Some(vni);
    req
}

/// A VXC whose A-End is on the peer, on its port `syd-1`.
fn remote_a(mut req: VxcRequest, host: &str, vlan: Option<i64>) -> VxcRequest {
    req.a_end.port = "syd-1".to_owned();
    req.a_end.host = Some(host.to_owned());
    req.a_end.vlan = vlan;
    req
}

fn bad_request(err: RuleError) -> String {
    match err {
        RuleError::BadRequest(message) => message,
        other => panic!("expected bad_request, got {} ({other})", other.code()),
    }
}

#[test]
fn a_key_on_a_peer_reserves_nothing_here_and_its_port_is_not_checked() {
    let mut m = core_model();
    let key = put_key(&mut m, remote(single("k1", "mel-1", 100), PEER));
    assert_eq!((key.host, key.vlan), (Some(ip(PEER)), Some(v(100))));
    // No port mel-1 appears here, and VLAN 100 stays free on every port of this host.
    assert!(m
        .ports()
        .all(|p| p.name.as_str() != "mel-1" && p.vlans.is_empty()));
    // Even on a port name this host has: the peer's p1 is not this p1.
    put_key(&mut m, remote(single("k2", "p1", 100), PEER));
    assert_eq!(holder(&m, "p1", 100), None);
    // A multi-use key on a peer is stored too; the other key rules hold as for a local key.
    put_key(&mut m, remote(multi("k3", "mel-1"), PEER));
    assert_eq!(
        refuse_key(&m, &remote(single("k4", "mel-1", 4094), PEER)).code(),
        "vlan_invalid"
    );
    assert_eq!(
        refuse_key(
            &m,
            &KeyRequest {
                max_speed_mbps: 0,
                ..remote(multi("k4", "mel-1"), PEER)
            }
        )
        .code(),
        "rate_invalid"
    );
    // Its host cannot change: the copy names the port's host for good.
    let moved = refuse_key(&m, &remote(single("k1", "mel-1", 100), "10.99.0.3"));
    assert_eq!(
        moved,
        RuleError::ImmutableField {
            object: "service key k1".into(),
            field: "host"
        }
    );
    let local = refuse_key(&m, &single("k1", "mel-1", 100));
    assert_eq!(local.code(), "immutable_field");
}

#[test]
fn a_host_must_be_a_peer_core_address_on_a_host_with_a_core() {
    let m = core_model();
    for (host, says) in [
        ("mel", "is not an IPv4 or IPv6 address"),
        ("10.99.0.1", "is this host's own core address"),
        ("0.0.0.0", "is not the unicast core address"),
        ("127.0.0.1", "is not the unicast core address"),
        ("239.1.1.1", "is not the unicast core address"),
        ("::", "is not the unicast core address"),
    ] {
        let message = bad_request(refuse_key(&m, &remote(single("k1", "mel-1", 100), host)));
        assert!(message.contains(says), "{host}: {message}");
    }
    // An IPv6 peer is a peer.
    core_model()
        .plan_key(&remote(single("k1", "mel-1", 100), "fd00::2"))
        .unwrap();
    // Without [core], nothing may be on a peer.
    let message = bad_request(refuse_key(
        &model(),
        &remote(single("k1", "mel-1", 100), PEER),
    ));
    assert!(message.contains("no [core] address"), "{message}");
    let mut m = model();
    put_key(&mut m, multi("k1", "p2"));
    let message = bad_request(refuse_vxc(
        &m,
        &with_vni(remote_a(vxc("x1", "k1", "p1"), PEER, Some(200)), 17),
    ));
    assert!(message.contains("no [core] address"), "{message}");
}

#[test]
fn a_vxc_to_a_b_end_on_a_peer_keeps_the_local_a_end_and_the_vni() {
    let mut m = core_model();
    put_key(&mut m, remote(single("k1", "mel-1", 100), PEER));
    let x1 = put_vxc(&mut m, with_vni(tagged(vxc("x1", "k1", "p1"), 200), 17));
    assert_eq!(
        (x1.a_end.clone(), x1.b_end.clone(), x1.vni),
        (
            AEnd {
                port: pn("p1"),
                vlan: Some(v(200)),
                host: None
            },
            BEnd {
                port: pn("mel-1"),
                vlan: Some(v(100)),
                host: Some(ip(PEER))
            },
            Vni::new(17)
        )
    );
    assert_eq!(x1.peer(), Some(ip(PEER)));
    assert_eq!(port_vlans(&m, "p1"), [200]);
    assert!(m.ports().all(|p| p.name.as_str() != "mel-1"));
    // Single use on this host too.
    let again = refuse_vxc(&m, &with_vni(tagged(vxc("x2", "k1", "p1"), 201), 18));
    assert_eq!(
        again,
        RuleError::KeyUsed {
            key: kid("k1"),
            by: vid("x1")
        }
    );
    // The local port's rules: VLAN 200 is taken, with the next available.
    put_key(&mut m, remote(multi("k2", "mel-1"), PEER));
    let taken = refuse_vxc(&m, &with_vni(tagged(vxc("x2", "k2", "p1"), 200), 18));
    assert_eq!(
        taken,
        RuleError::VlanInUse {
            port: pn("p1"),
            vlan: v(200),
            held_by: Holder::Vxc(vid("x1")),
            next_available: Some(v(201)),
        }
    );
    // The key's maximum rate.
    let fast = refuse_vxc(
        &m,
        &VxcRequest {
            rate_mbps: 1001,
            ..with_vni(tagged(vxc("x2", "k2", "p1"), 201), 18)
        },
    );
    assert_eq!(fast.code(), "rate_exceeds_key");
    // A multi-use key's VLAN on the peer's port is the peer's to assign: not known here.
    let x2 = put_vxc(&mut m, with_vni(untagged(vxc("x2", "k2", "p3")), 18));
    assert_eq!((x2.a_end.vlan, x2.b_end.vlan), (None, None));
    assert_eq!(usage(&m, "p3").untagged_vxc, Some(vid("x2")));
    // Deleting frees the local VLAN and the VNI.
    delete_vxc(&mut m, "x1");
    assert_eq!(port_vlans(&m, "p1"), Vec::<u16>::new());
    put_key(&mut m, remote(multi("k3", "mel-1"), PEER));
    put_vxc(&mut m, with_vni(tagged(vxc("x3", "k3", "p1"), 200), 17));
}

#[test]
fn vni_rules_each_have_their_own_error_and_change_nothing() {
    let mut m = core_model();
    put_key(&mut m, remote(multi("k1", "mel-1"), PEER));
    put_key(&mut m, multi("k2", "p2"));
    let message = bad_request(refuse_vxc(&m, &tagged(vxc("x1", "k1", "p1"), 200)));
    assert!(
        message.contains("a vni (1..=16777215) is required"),
        "{message}"
    );
    let message = bad_request(refuse_vxc(&m, &with_vni(vxc("x1", "k2", "p1"), 17)));
    assert!(message.contains("both ends on this host"), "{message}");
    for raw in [0, -1, 16_777_216, i64::MAX] {
        let message = bad_request(refuse_vxc(&m, &with_vni(vxc("x1", "k1", "p1"), raw)));
        assert!(message.contains("outside 1..=16777215"), "{raw}: {message}");
    }
    put_vxc(&mut m, with_vni(vxc("x1", "k1", "p1"), 16_777_215));
    let twice = refuse_vxc(&m, &with_vni(vxc("x2", "k1", "p1"), 16_777_215));
    assert_eq!(
        twice,
        RuleError::VniInUse {
            vni: Vni::new(16_777_215).unwrap(),
            vxc: vid("x1")
        }
    );
    assert_eq!(twice.code(), "vni_in_use");
    assert!(twice.to_string().contains("in use by VXC x1"), "{twice}");
    // It cannot change on a live VXC, nor be dropped.
    let x1 = m.vxc("x1").unwrap().clone();
    let again = |vni: Option<i64>| VxcRequest {
        vni,
        ..tagged(
            vxc("x1", "k1", "p1"),
            i64::from(x1.a_end.vlan.unwrap().get()),
        )
    };
    for vni in [Some(18), None] {
        assert_eq!(
            refuse_vxc(&m, &again(vni)),
            RuleError::ImmutableField {
                object: "VXC x1".into(),
                field: "vni"
            }
        );
    }
    // The same put again is unchanged.
    let plan = m.plan_vxc(&again(Some(16_777_215)), NOW).unwrap();
    assert!(matches!(plan.change, Change::Unchanged(_)), "{plan:?}");
}

#[test]
fn an_a_end_on_a_peer_states_its_vlan_and_the_b_end_is_assigned_here() {
    let mut m = core_model();
    put_key(&mut m, multi("k1", "p2"));
    // The peer assigns and checks its VLAN: without one (nor untagged), refused.
    let missing = refuse_vxc(
        &m,
        &with_vni(remote_a(vxc("x1", "k1", "p1"), PEER, None), 17),
    );
    assert_eq!(
        missing,
        RuleError::RemoteVlanRequired {
            vxc: vid("x1"),
            host: ip(PEER)
        }
    );
    assert_eq!(missing.code(), "vlan_required");
    let x1 = put_vxc(
        &mut m,
        with_vni(remote_a(vxc("x1", "k1", "p1"), PEER, Some(200)), 17),
    );
    assert_eq!(
        x1.a_end,
        AEnd {
            port: pn("syd-1"),
            vlan: Some(v(200)),
            host: Some(ip(PEER))
        }
    );
    assert_eq!(
        x1.b_end.vlan,
        Some(v(2)),
        "the B-End VLAN is this host's to assign"
    );
    assert_eq!(port_vlans(&m, "p2"), [2]);
    // Another VXC may use the peer's VLAN 200 too: it is not this host's.
    let x2 = put_vxc(
        &mut m,
        with_vni(remote_a(vxc("x2", "k1", "p1"), PEER, Some(200)), 18),
    );
    assert_eq!(x2.b_end.vlan, Some(v(3)));
    // An untagged A-End on the peer is fine, and takes nothing of this host's ports.
    let x3 = put_vxc(
        &mut m,
        with_vni(untagged(remote_a(vxc("x3", "k1", "p1"), PEER, None)), 19),
    );
    assert_eq!(x3.a_end.vlan, None);
    assert!(usage(&m, "p1").accepting);
    // A live change of the peer's VLAN is recorded without a check here.
    let moved = put_vxc(
        &mut m,
        with_vni(remote_a(vxc("x1", "k1", "p1"), PEER, Some(300)), 17),
    );
    assert_eq!(moved.a_end.vlan, Some(v(300)));
    // Its host and port cannot change.
    let elsewhere = refuse_vxc(
        &m,
        &with_vni(remote_a(vxc("x1", "k1", "p1"), "10.99.0.3", Some(300)), 17),
    );
    assert_eq!(elsewhere.code(), "immutable_field");
}

#[test]
fn both_ends_on_peers_is_a_bad_request() {
    let mut m = core_model();
    put_key(&mut m, remote(multi("k1", "mel-1"), PEER));
    let message = bad_request(refuse_vxc(
        &m,
        &with_vni(remote_a(vxc("x1", "k1", "p1"), "10.99.0.3", Some(200)), 17),
    ));
    assert!(
        message.contains("nothing of it would be on this host"),
        "{message}"
    );
}

#[test]
fn restore_keeps_ends_on_peers_off_this_hosts_ports_and_their_vnis_unique() {
    let mut m = core_model();
    put_key(&mut m, remote(single("k1", "mel-1", 100), PEER));
    put_key(&mut m, multi("k2", "p2"));
    put_vxc(&mut m, with_vni(tagged(vxc("x1", "k1", "p1"), 200), 17));
    put_vxc(
        &mut m,
        with_vni(remote_a(vxc("x2", "k2", "p1"), PEER, Some(100)), 18),
    );
    let restored = Model::restore(PORTS.map(pn), m.keys().cloned(), m.vxcs().cloned())
        .unwrap()
        .with_core(Some(ip(SELF)));
    assert_eq!(snapshot(&restored), snapshot(&m));
    // The VNIs are known again.
    assert_eq!(
        refuse_vxc(&restored, &with_vni(tagged(vxc("x3", "k2", "p1"), 300), 17)).code(),
        "bad_request",
        "k2 is local and so is p1: no vni"
    );
    put_key(&mut m, remote(multi("k3", "mel-1"), PEER));
    let restored = Model::restore(PORTS.map(pn), m.keys().cloned(), m.vxcs().cloned())
        .unwrap()
        .with_core(Some(ip(SELF)));
    assert_eq!(
        refuse_vxc(&restored, &with_vni(tagged(vxc("x3", "k3", "p1"), 300), 18)).code(),
        "vni_in_use"
    );
    // A state holding one VNI twice is refused, naming both.
    let mut twin = m.vxc("x2").unwrap().clone();
    twin.id = vid("x9");
    let err = Model::restore(
        PORTS.map(pn),
        m.keys().cloned(),
        m.vxcs().cloned().chain([twin]),
    )
    .unwrap_err();
    assert!(err.contains("VNI 18 is claimed twice"), "{err}");
    // A stored VXC reads the same as before the fields existed when it has no end on a peer.
    let local = m.vxc("x2").unwrap();
    let text = serde_json::to_value(local).unwrap();
    assert_eq!(text["vni"], json!(18));
    assert!(text["b_end"].get("host").is_none(), "{text}");
}

#[test]
fn a_key_on_a_peer_is_refused_for_redemption_once_core_is_gone() {
    let mut m = core_model();
    let key = put_key(&mut m, remote(multi("k1", "mel-1"), PEER));
    assert_eq!(m.key_refusal(&key, NOW), None);
    let without = Model::restore(PORTS.map(pn), m.keys().cloned(), m.vxcs().cloned()).unwrap();
    let refusal = without
        .key_refusal(&key, NOW)
        .expect("refused without [core]");
    assert!(
        refusal.to_string().contains("no [core] address"),
        "{refusal}"
    );
}
