//! key_users, ports(), restore and the serde of stored objects.

use serde_json::json;
use time::macros::datetime;

use super::*;

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
