//! Untagged A-Ends, vxc.put on an existing id, vxc.delete.

use time::Duration;

use super::*;

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
