//! vxc.put: field rules and VLAN assignment.

use super::*;

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
