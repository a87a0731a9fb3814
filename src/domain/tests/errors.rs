//! Error codes and messages.

use super::cross_host::{ip, PEER};
use super::*;

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
