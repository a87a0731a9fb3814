//! key.put on new and existing keys, and redeeming a key.

use time::macros::datetime;
use time::Duration;

use super::*;

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
