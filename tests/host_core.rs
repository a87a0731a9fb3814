//! Host tier: VXCs across edge hosts, on this kernel's VXLAN (no 802.1Q needed: the local end
//! here is untagged). vxcd runs in edge namespace `e`; the peer edge host is namespace `p`, where
//! the test makes by hand what the peer's vxcd would (a VXLAN device for VNI 17 holding the
//! provider's address), so a connection from the customer crosses vxcd's pipe, its tunnel device
//! and the core.
//!
//! customer `eth0` 10.5.0.1 --veth-- `cust0` [e: vxcd, core0 10.99.0.1] --veth-- [p: core0
//! 10.99.0.2, vx17 10.5.0.2]

mod common;

use std::time::{Duration, Instant};

use common::daemon::{err, ok, Daemon};
use common::{veth, Netns};
use serde_json::{json, Value};

const OWNER_GROUP: &str = "30819";

struct Core {
    customer: Netns,
    edge: Netns,
    peer: Netns,
}

impl Core {
    fn new() -> Core {
        common::require_root();
        let core = Core {
            customer: Netns::new("cc"),
            edge: Netns::new("ce"),
            peer: Netns::new("cp"),
        };
        veth(&core.customer, "eth0", &core.edge, "cust0");
        common::veth_local(&core.edge, "prov0", "prov1");
        veth(&core.edge, "core0", &core.peer, "core0");
        core.customer
            .ip(&["addr", "add", "10.5.0.1/24", "dev", "eth0"]);
        core.edge
            .ip(&["addr", "add", "10.99.0.1/24", "dev", "core0"]);
        core.peer
            .ip(&["addr", "add", "10.99.0.2/24", "dev", "core0"]);
        core.peer.ip(&[
            "link",
            "add",
            "vx17",
            "type",
            "vxlan",
            "id",
            "17",
            "local",
            "10.99.0.2",
            "remote",
            "10.99.0.1",
            "dstport",
            "4789",
            "nolearning",
        ]);
        core.peer.ip(&["addr", "add", "10.5.0.2/24", "dev", "vx17"]);
        core.peer.ip(&["link", "set", "vx17", "up"]);
        core
    }

    fn vxcd(&self, extra: &str) -> Daemon {
        let config = format!(
            "[core]\naddress = \"10.99.0.1\"\ninterface = \"core0\"\n\n[reconcile]\ninterval_s = 1\n{extra}"
        );
        Daemon::start(&self.edge, &[("cust", "cust0"), ("prov", "prov0")], &config)
    }
}

fn remote_key(key: &str) -> Value {
    json!({"op": "key.put", "key": {"key": key, "port": "mel-1", "host": "10.99.0.2",
        "single_use": true, "max_speed_mbps": 1000, "vlan": 100}})
}

fn vxc_put(id: &str, key: &str, vni: u32) -> Value {
    json!({"op": "vxc.put", "vxc": {"id": id, "name": "across", "service_key": key,
        "rate_mbps": 100, "a_end": {"port": "cust", "untagged": true}, "vni": vni}})
}

/// `ip -d link show` of one link, `None` when it does not exist.
fn link(ns: &Netns, name: &str) -> Option<String> {
    ns.ip_ok(&["link", "show", "dev", name])
        .then(|| ns.ip(&["-d", "link", "show", "dev", name]))
}

/// Polls (bounded: a hang limit, not a timing assertion) until `ready`.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_vxc_to_a_peer_carries_traffic_over_its_own_tunnel_and_survives_restarts() {
    let core = Core::new();
    let mut d = core.vxcd("");
    let status = ok(d.call(json!({"op": "status"})));
    assert_eq!(status["core"]["address"], json!("10.99.0.1"), "{status}");
    assert_eq!(status["core"]["udp_port"], json!(4789), "{status}");
    assert_eq!(status["core"]["tunnels"], json!(0), "{status}");

    let key = ok(d.call(remote_key("k1")))["key"].clone();
    assert_eq!(key["host"], json!("10.99.0.2"), "{key}");
    // The peer's port and VLAN are not this host's: port.list shows only cust, VLAN-free.
    let ports = ok(d.call(json!({"op": "port.list"})));
    let names: Vec<&str> = ports["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["cust", "prov"], "{ports}");
    assert_eq!(ports["ports"][0]["vlans"], json!([]), "{ports}");

    let vxc = ok(d.call(vxc_put("v1", "k1", 17)))["vxc"].clone();
    assert_eq!(vxc["state"], json!("up"), "{vxc}");
    assert_eq!(vxc["vni"], json!(17), "{vxc}");
    assert_eq!(vxc["a_end"]["host"], Value::Null, "{vxc}");
    assert_eq!(vxc["a_end"]["interface"], json!("cust0"), "{vxc}");
    assert_eq!(vxc["b_end"]["host"], json!("10.99.0.2"), "{vxc}");
    assert_eq!(vxc["b_end"]["vlan"], json!(100), "{vxc}");
    assert_eq!(vxc["b_end"]["interface"], json!("vxc17"), "{vxc}");

    // The tunnel device, as the dataplane's module doc describes it.
    let tunnel = link(&core.edge, "vxc17").expect("vxc17 exists");
    for part in [
        "vxlan id 17 remote 10.99.0.2 local 10.99.0.1 dev core0 ",
        "dstport 4789 nolearning",
        &format!("group {OWNER_GROUP}"),
        "alias vxcd:v1:b",
        "mtu 1450",
        "addrgenmode none",
        "state UNKNOWN",
    ] {
        assert!(tunnel.contains(part), "vxc17 lacks {part:?}:\n{tunnel}");
    }
    // The pipe both ways; the local end shaped, the tunnel not (the peer shapes towards its
    // customer).
    let qdiscs = core.edge.tc(&["qdisc", "show"]);
    assert!(
        qdiscs.contains("qdisc tbf 7863: dev cust0 root"),
        "{qdiscs}"
    );
    assert!(!qdiscs.contains("qdisc tbf 7863: dev vxc17"), "{qdiscs}");
    assert!(qdiscs.contains("qdisc ingress ffff: dev vxc17"), "{qdiscs}");
    for (dev, to) in [("cust0", "vxc17"), ("vxc17", "cust0")] {
        let filters = core.edge.tc(&["filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains(&format!("Redirect to device {to}")),
            "{dev}: {filters}"
        );
    }
    assert!(
        core.customer.reaches(&core.peer, "10.5.0.2"),
        "the customer does not reach the peer across the VXC"
    );

    // verify proves the local half both ways: into cust0, out of vxc17 and the uplink with VNI
    // 17 towards the peer; into vxc17's receive path, out of cust0 untagged and nowhere else.
    let verified = ok(d.call(json!({"op": "verify", "id": "v1"})));
    assert_eq!(verified["pass"], json!(true), "{verified}");
    let directions = &verified["results"][0]["directions"];
    let towards = &directions[0];
    assert_eq!(towards["direction"], json!("a->b"), "{verified}");
    assert_eq!(towards["expected_vni"], json!(17), "{verified}");
    assert_eq!(
        towards["core"],
        json!([{"interface": "core0", "vni": 17, "remote": "10.99.0.2", "udp_port": 4789}]),
        "{verified}"
    );

    // The customer port's MTU 1500 plus 50 bytes of VXLAN does not fit the uplink's 1500: the
    // operator is told, in the VXC's state reason and in status.
    let status = ok(d.call(json!({"op": "status"})));
    assert_eq!(status["core"]["tunnels"], json!(1), "{status}");
    assert_eq!(status["core"]["interface_mtu"], json!(1500), "{status}");
    let warning = status["core"]["mtu_warnings"][0]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        warning.contains("port cust (MTU 1500) cannot cross the core")
            && warning.contains("raise its MTU to 1550"),
        "{status}"
    );
    let vxc = ok(d.call(json!({"op": "vxc.get", "id": "v1"})))["vxc"].clone();
    assert_eq!(vxc["state"], json!("up"), "{vxc}");
    assert_eq!(vxc["state_reason"], json!(warning), "{vxc}");
    // Raised: the warning goes, and the tunnel takes the new room at the next pass.
    core.edge.ip(&["link", "set", "core0", "mtu", "1550"]);
    core.peer.ip(&["link", "set", "core0", "mtu", "1550"]);
    wait_for("the tunnel's MTU to follow the uplink's", || {
        link(&core.edge, "vxc17").is_some_and(|l| l.contains("mtu 1500"))
            && ok(d.call(json!({"op": "status"})))["core"]["mtu_warnings"] == json!([])
    });
    let vxc = ok(d.call(json!({"op": "vxc.get", "id": "v1"})))["vxc"].clone();
    assert!(vxc.get("state_reason").is_none(), "{vxc}");

    // Restart and kill -9: nothing lost, the tunnel device is not made again.
    let index = core.edge.ifindex("vxc17");
    assert_eq!(d.terminate(), Some(0));
    d.restart();
    assert_eq!(core.edge.ifindex("vxc17"), index, "restart remade vxc17");
    d.kill9();
    d.restart();
    assert_eq!(
        core.edge.ifindex("vxc17"),
        index,
        "kill -9 and restart remade vxc17"
    );
    let vxc = ok(d.call(json!({"op": "vxc.get", "id": "v1"})))["vxc"].clone();
    assert_eq!(
        (vxc["state"].clone(), vxc["vni"].clone()),
        (json!("up"), json!(17)),
        "{vxc}"
    );
    assert!(
        core.customer.reaches(&core.peer, "10.5.0.2"),
        "after the restarts"
    );

    // A foreign VXLAN device is left alone; the tunnel deleted by hand comes back.
    core.edge.ip(&[
        "link",
        "add",
        "vxfor",
        "type",
        "vxlan",
        "id",
        "99",
        "local",
        "10.99.0.1",
        "remote",
        "10.99.0.2",
        "dstport",
        "4789",
        "nolearning",
    ]);
    core.edge.ip(&["link", "del", "vxc17"]);
    wait_for("vxc17 to be made again", || {
        link(&core.edge, "vxc17").is_some_and(|l| l.contains("alias vxcd:v1:b"))
    });
    wait_for("the pipe into the new vxc17", || {
        core.edge
            .tc(&["filter", "show", "dev", "cust0", "ingress"])
            .contains("Redirect to device vxc17")
    });
    assert!(
        core.customer.reaches(&core.peer, "10.5.0.2"),
        "after the repair"
    );
    let foreign = link(&core.edge, "vxfor").expect("the foreign VXLAN device is still there");
    assert!(foreign.contains("vxlan id 99"), "{foreign}");

    // Deleting the VXC takes the tunnel device and the pipe away; the foreign device stays.
    ok(d.call(json!({"op": "vxc.delete", "id": "v1"})));
    assert!(
        link(&core.edge, "vxc17").is_none(),
        "vxc17 outlived its VXC"
    );
    let qdiscs = core.edge.tc(&["qdisc", "show"]);
    assert!(!qdiscs.contains("7863:"), "{qdiscs}");
    assert!(link(&core.edge, "vxfor").is_some());
    assert_eq!(
        ok(d.call(json!({"op": "status"})))["core"]["tunnels"],
        json!(0)
    );
}

#[test]
fn rules_across_hosts_are_refused_with_their_own_errors_and_change_nothing() {
    let core = Core::new();
    let d = core.vxcd("");
    ok(d.call(remote_key("k1")));
    ok(d.call(
        json!({"op": "key.put", "key": {"key": "k2", "port": "mel-1", "host": "10.99.0.2",
        "single_use": false, "max_speed_mbps": 1000}}),
    ));
    ok(
        d.call(json!({"op": "key.put", "key": {"key": "k3", "port": "prov",
        "single_use": false, "max_speed_mbps": 1000}})),
    );
    ok(d.call(vxc_put("v1", "k1", 17)));
    let before = (
        ok(d.call(json!({"op": "vxc.list"}))),
        ok(d.call(json!({"op": "key.list"}))),
        core.edge.ip(&["-o", "link", "show"]),
    );
    let tagged = |id: &str, key: &str, vni: Option<u32>, a_end: Value| {
        let mut vxc = json!({"id": id, "name": "n", "service_key": key, "rate_mbps": 100,
            "a_end": a_end});
        if let Some(vni) = vni {
            vxc["vni"] = json!(vni);
        }
        json!({"op": "vxc.put", "vxc": vxc})
    };
    for (request, code, says) in [
        (
            tagged(
                "v2",
                "k2",
                Some(17),
                json!({"port": "cust", "untagged": true}),
            ),
            "vni_in_use",
            "VNI 17 is in use by VXC v1",
        ),
        (
            tagged("v2", "k2", None, json!({"port": "cust", "untagged": true})),
            "bad_request",
            "a vni (1..=16777215) is required",
        ),
        (
            tagged(
                "v2",
                "k3",
                Some(18),
                json!({"port": "cust", "untagged": true}),
            ),
            "bad_request",
            "both ends on this host",
        ),
        (
            tagged(
                "v2",
                "k3",
                Some(18),
                json!({"port": "syd-1", "host": "10.99.0.3"}),
            ),
            "vlan_required",
            "state the vlan it assigned",
        ),
        (
            tagged(
                "v2",
                "k2",
                Some(18),
                json!({"port": "syd-1", "host": "10.99.0.3", "vlan": 200}),
            ),
            "bad_request",
            "nothing of it would be on this host",
        ),
        (
            tagged(
                "v2",
                "k1",
                Some(18),
                json!({"port": "cust", "untagged": true}),
            ),
            "key_used",
            "already redeemed by VXC v1",
        ),
        (
            json!({"op": "vxc.put", "vxc": {"id": "v2", "name": "n", "service_key": "k2",
                "rate_mbps": 1001, "a_end": {"port": "prov", "untagged": true}, "vni": 18}}),
            "rate_exceeds_key",
            "exceeds the 1000 Mbps maximum",
        ),
        (
            tagged(
                "v1",
                "k1",
                Some(18),
                json!({"port": "cust", "untagged": true}),
            ),
            "immutable_field",
            "field vni cannot be changed",
        ),
        (
            json!({"op": "key.put", "key": {"key": "k9", "port": "mel-1", "host": "10.99.0.1",
                "single_use": false, "max_speed_mbps": 1}}),
            "bad_request",
            "is this host's own core address",
        ),
    ] {
        let error = err(d.call(request.clone()), code);
        let message = error["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{request}: {message}");
    }
    let after = (
        ok(d.call(json!({"op": "vxc.list"}))),
        ok(d.call(json!({"op": "key.list"}))),
        core.edge.ip(&["-o", "link", "show"]),
    );
    assert_eq!(after, before, "a refusal changed something");
}

#[test]
fn a_host_without_core_takes_no_end_on_a_peer() {
    common::require_root();
    let edge = Netns::new("cn");
    common::veth_local(&edge, "cust0", "peer0");
    let d = Daemon::start(&edge, &[("cust", "cust0")], "");
    let status = ok(d.call(json!({"op": "status"})));
    assert_eq!(status["core"], Value::Null, "{status}");
    let error = err(d.call(remote_key("k1")), "bad_request");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("no [core] address configured")),
        "{error}"
    );
}

#[test]
fn verify_names_the_peer_a_tunnel_was_pointed_at_by_hand() {
    let core = Core::new();
    let d = core.vxcd("repair = false\n");
    ok(d.call(remote_key("k1")));
    ok(d.call(vxc_put("v1", "k1", 17)));
    // 10.99.0.3 answers ARP on the core, so the misdirected probe does leave.
    core.peer
        .ip(&["addr", "add", "10.99.0.3/24", "dev", "core0"]);
    core.edge.ip(&[
        "link",
        "set",
        "vxc17",
        "type",
        "vxlan",
        "remote",
        "10.99.0.3",
    ]);
    let verified = ok(d.call(json!({"op": "verify", "id": "v1"})));
    assert_eq!(verified["pass"], json!(false), "{verified}");
    let details: Vec<&str> = verified["results"][0]["directions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["detail"].as_str())
        .collect();
    assert!(
        details.iter().any(|d| d.contains(
            "left the core uplink core0 with VNI 17 to 10.99.0.3 instead of VNI 17 to 10.99.0.2"
        )),
        "{verified}"
    );
    // A tunnel device with vxcd's marks made again by hand with another VNI (the kernel cannot
    // change a VNI in place): the drift names the field.
    core.edge.ip(&["link", "del", "vxc17"]);
    core.edge.ip(&[
        "link",
        "add",
        "vxc17",
        "group",
        OWNER_GROUP,
        "type",
        "vxlan",
        "id",
        "18",
        "local",
        "10.99.0.1",
        "remote",
        "10.99.0.2",
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "core0",
    ]);
    core.edge
        .ip(&["link", "set", "dev", "vxc17", "alias", "vxcd:v1:b", "up"]);
    wait_for("the wrong VNI to be reported", || {
        let vxc = ok(d.call(json!({"op": "vxc.get", "id": "v1"})))["vxc"].clone();
        vxc["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("VNI expected 17, observed 18"))
    });
    core.edge.ip(&["link", "del", "vxc17"]);
    core.edge.ip(&[
        "link",
        "add",
        "vxc17",
        "group",
        OWNER_GROUP,
        "type",
        "vxlan",
        "id",
        "17",
        "local",
        "10.99.0.1",
        "remote",
        "10.99.0.3",
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "core0",
    ]);
    core.edge
        .ip(&["link", "set", "dev", "vxc17", "alias", "vxcd:v1:b", "up"]);
    // Repair off: the drift is reported, not mended.
    wait_for("the drift to be reported", || {
        let vxc = ok(d.call(json!({"op": "vxc.get", "id": "v1"})))["vxc"].clone();
        vxc["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("remote expected 10.99.0.2, observed 10.99.0.3"))
    });
}

#[test]
fn an_atomic_batch_of_deletes_takes_the_links_down_at_once_and_never_a_foreign_one() {
    let core = Core::new();
    let ports: Vec<(String, String)> = (0..6)
        .map(|i| {
            common::veth_local(&core.edge, &format!("c{i}"), &format!("h{i}"));
            (format!("port-{i}"), format!("c{i}"))
        })
        .collect();
    let port_refs: Vec<(&str, &str)> = ports
        .iter()
        .map(|(p, i)| (p.as_str(), i.as_str()))
        .collect();
    let d = Daemon::start(
        &core.edge,
        &port_refs,
        "[core]\naddress = \"10.99.0.1\"\ninterface = \"core0\"\n",
    );
    ok(d.call(
        json!({"op": "key.put", "key": {"key": "k-far", "port": "mel-1",
        "host": "10.99.0.2", "single_use": false, "max_speed_mbps": 1000}}),
    ));
    let create = |vni0: u32| {
        for i in 0..6u32 {
            ok(d.call(
                json!({"op": "vxc.put", "vxc": {"id": format!("v{i}"), "name": "bulk",
                "service_key": "k-far", "rate_mbps": 10,
                "a_end": {"port": format!("port-{i}"), "untagged": true}, "vni": vni0 + i}}),
            ));
        }
    };
    let deletes = json!({"op": "batch", "atomic": true,
        "ops": (0..6).map(|i| json!({"op": "vxc.delete", "id": format!("v{i}")})).collect::<Vec<_>>()});
    let tunnels = |vni0: u32| -> Vec<bool> {
        (0..6)
            .map(|i| link(&core.edge, &format!("vxc{}", vni0 + i)).is_some())
            .collect()
    };

    create(100);
    assert_eq!(tunnels(100), [true; 6]);
    let answer = ok(d.call(deletes.clone()));
    assert_eq!(answer["applied"], json!(true), "{answer}");
    assert_eq!(tunnels(100), [false; 6], "the tunnels outlived the batch");
    assert!(
        d.log()
            .contains("deleted 6 links at once (group 1073772643)"),
        "{}",
        d.log()
    );
    let qdiscs = core.edge.tc(&["qdisc", "show"]);
    assert!(!qdiscs.contains("7863:"), "{qdiscs}");
    assert_eq!(ok(d.call(json!({"op": "vxc.list"})))["vxcs"], json!([]));

    // A link of someone else's in the doomed group: the group is not deleted at once.
    create(200);
    core.edge.ip(&[
        "link",
        "add",
        "theirs",
        "group",
        "1073772643",
        "type",
        "vxlan",
        "id",
        "999",
        "dstport",
        "4789",
        "local",
        "10.99.0.1",
        "remote",
        "10.99.0.2",
    ]);
    ok(d.call(deletes));
    assert_eq!(tunnels(200), [false; 6]);
    assert!(
        link(&core.edge, "theirs").is_some(),
        "a foreign link in the doomed group was deleted"
    );
    assert!(
        d.log().contains("holds links vxcd is not deleting"),
        "{}",
        d.log()
    );
}
