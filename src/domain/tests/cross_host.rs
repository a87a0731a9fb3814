//! VXCs across edge hosts.

use serde_json::json;

use super::*;

// ---------------------------------------------------------------------------------------------
// VXCs across edge hosts: an end on a peer, carried over the VXLAN core
// ---------------------------------------------------------------------------------------------

pub(super) const SELF: &str = "10.99.0.1";
pub(super) const PEER: &str = "10.99.0.2";

pub(super) fn ip(raw: &str) -> std::net::IpAddr {
    raw.parse().unwrap()
}

/// A host with `[core] address = SELF`.
pub(super) fn core_model() -> Model {
    model().with_core(Some(ip(SELF)))
}

/// A copy of a key whose port is on the peer.
pub(super) fn remote(mut req: KeyRequest, host: &str) -> KeyRequest {
    req.host = Some(host.to_owned());
    req
}

pub(super) fn with_vni(mut req: VxcRequest, vni: i64) -> VxcRequest {
    req.vni = Some(vni);
    req
}

/// A VXC whose A-End is on the peer, on its port `syd-1`.
pub(super) fn remote_a(mut req: VxcRequest, host: &str, vlan: Option<i64>) -> VxcRequest {
    req.a_end.port = "syd-1".to_owned();
    req.a_end.host = Some(host.to_owned());
    req.a_end.vlan = vlan;
    req
}

pub(super) fn bad_request(err: RuleError) -> String {
    match err {
        RuleError::BadRequest(message) => message,
        other => panic!("expected bad_request, got {} ({other})", other.code()),
    }
}

#[test]
pub(super) fn a_key_on_a_peer_reserves_nothing_here_and_its_port_is_not_checked() {
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
pub(super) fn a_host_must_be_a_peer_core_address_on_a_host_with_a_core() {
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
pub(super) fn a_vxc_to_a_b_end_on_a_peer_keeps_the_local_a_end_and_the_vni() {
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
pub(super) fn vni_rules_each_have_their_own_error_and_change_nothing() {
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
pub(super) fn an_a_end_on_a_peer_states_its_vlan_and_the_b_end_is_assigned_here() {
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
pub(super) fn both_ends_on_peers_is_a_bad_request() {
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
pub(super) fn restore_keeps_ends_on_peers_off_this_hosts_ports_and_their_vnis_unique() {
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
pub(super) fn a_key_on_a_peer_is_refused_for_redemption_once_core_is_gone() {
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
