//! Issue 10, acceptance: VXCs across edge hosts, in the kernel lab (802.1Q and VXLAN).
//!
//! Two edge hosts, each its own namespace running its own vxcd (own config, state and socket),
//! joined by a routed core (a veth pair, 10.99.0.1/24 and 10.99.0.2/24, MTU 1600 so that
//! customers' 1500-byte frames fit with the 50 bytes of VXLAN):
//!
//! customer `eth0` --veth-- `cust0` [edge 1: vxcd, `cust` = cust0, `cust2` = cust1] `core0`
//!   --veth-- `core0` [edge 2: vxcd, `prov` = prov0] `prov0` --veth-- provider `eth0`
//! customer 2 `eth0` --veth-- `cust1` (edge 1), for the untagged A-End.
//!
//! The provider's key lives on edge 2 (its port); its copy, with `host`, on edge 1. The control
//! plane pushes the same VXC to both.

mod lab;

use std::collections::BTreeSet;
use std::time::Duration;

use lab::net::{tcpdump_vlans, veth, Netns};
use lab::proc::{wait_until, Vxcd};
use lab::rate::assert_rate;
use serde_json::{json, Value};

/// Bound on waiting for a capture, a repair: a hang limit, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(60);
const EDGE1: &str = "10.99.0.1";
const EDGE2: &str = "10.99.0.2";

struct Hosts {
    customer: Netns,
    customer2: Netns,
    edge1: Netns,
    edge2: Netns,
    provider: Netns,
}

impl Hosts {
    fn new() -> Hosts {
        let hosts = Hosts {
            customer: Netns::new("cust"),
            customer2: Netns::new("cust2"),
            edge1: Netns::new("edge1"),
            edge2: Netns::new("edge2"),
            provider: Netns::new("prov"),
        };
        veth(&hosts.customer, "eth0", &hosts.edge1, "cust0");
        veth(&hosts.customer2, "eth0", &hosts.edge1, "cust1");
        veth(&hosts.edge1, "core0", &hosts.edge2, "core0");
        veth(&hosts.edge2, "prov0", &hosts.provider, "eth0");
        for (edge, address) in [(&hosts.edge1, EDGE1), (&hosts.edge2, EDGE2)] {
            edge.ip("link set core0 mtu 1600");
            edge.addr("core0", &format!("{address}/24"));
        }
        hosts
    }

    fn vxcd1(&self, extra: &str) -> Vxcd {
        Vxcd::start(
            &self.edge1,
            &[("cust", "cust0"), ("cust2", "cust1")],
            &format!("[core]\naddress = \"{EDGE1}\"\ninterface = \"core0\"\n\n{extra}"),
        )
    }

    fn vxcd2(&self, extra: &str) -> Vxcd {
        Vxcd::start(
            &self.edge2,
            &[("prov", "prov0")],
            &format!("[core]\naddress = \"{EDGE2}\"\ninterface = \"core0\"\n\n{extra}"),
        )
    }
}

/// The provider's single-use key on its own host, or its copy on the redeemer's.
fn key(key: &str, vlan: u16, host: Option<&str>) -> Value {
    let mut body = json!({"key": key, "port": "prov", "single_use": true,
        "max_speed_mbps": 1000, "vlan": vlan, "description": "across"});
    if let Some(host) = host {
        body["host"] = json!(host);
    }
    json!({"op": "key.put", "key": body})
}

/// The same VXC as each host gets it: edge 1 holds its A-End (`a_end` as given), edge 2 the B-End
/// (the A-End on edge 1, with its VLAN or untagged).
fn vxc(id: &str, key: &str, vni: u32, rate: u32, a_end: Value) -> Value {
    json!({"op": "vxc.put", "vxc": {"id": id, "name": format!("across {id}"), "service_key": key,
        "rate_mbps": rate, "a_end": a_end, "vni": vni}})
}

fn icmp(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("ICMP echo")).collect()
}

/// Brings up VXC `v1` (customer VLAN 200 on edge 1 to provider VLAN 100 on edge 2, VNI 17) on
/// both hosts and returns the two daemons.
fn v1(hosts: &Hosts, rate: u32) -> (Vxcd, Vxcd) {
    let (d1, d2) = (hosts.vxcd1(""), hosts.vxcd2(""));
    d2.ok(key("k1", 100, None));
    d1.ok(key("k1", 100, Some(EDGE2)));
    let on1 = d1.ok(vxc(
        "v1",
        "k1",
        17,
        rate,
        json!({"port": "cust", "vlan": 200}),
    ))["vxc"]
        .clone();
    let on2 = d2.ok(vxc(
        "v1",
        "k1",
        17,
        rate,
        json!({"port": "cust", "host": EDGE1, "vlan": 200}),
    ))["vxc"]
        .clone();
    for (vxc, a_if, b_if) in [(&on1, "cust0.200", "vxc17"), (&on2, "vxc17", "prov0.100")] {
        assert_eq!(vxc["state"], json!("up"), "{vxc}");
        assert_eq!(vxc["vni"], json!(17), "{vxc}");
        assert_eq!(vxc["a_end"]["interface"], json!(a_if), "{vxc}");
        assert_eq!(vxc["b_end"]["interface"], json!(b_if), "{vxc}");
    }
    assert_eq!(on1["b_end"]["host"], json!(EDGE2), "{on1}");
    assert_eq!(on2["a_end"]["host"], json!(EDGE1), "{on2}");
    (d1, d2)
}

lab::lab_tests! {
    /// (1) + (5): a ping from the customer's VLAN 200 reaches the provider's VLAN 100; tcpdump -e
    /// sees tag 200 on the customer's wire, tag 100 on the provider's and VNI 17 on the core;
    /// verify passes on both hosts and the peer counts the probes it hands to its customer. An
    /// untagged A-End across hosts too. Then the peer's tunnel device made again by hand with a
    /// wrong VNI (repair off): verify there fails and names the VNI it saw.
    fn a_ping_crosses_the_core_with_each_hosts_own_tag_and_verify_proves_both_halves() {
        let hosts = Hosts::new();
        hosts.customer.add_vlan("eth0", 200, "10.1.0.1/24");
        hosts.provider.add_vlan("eth0", 100, "10.1.0.2/24");
        let customer_wire = hosts.customer.capture("eth0", "");
        let provider_wire = hosts.provider.capture("eth0", "");
        let core_wire = hosts.edge1.capture("core0", "udp port 4789");
        let (d1, d2) = v1(&hosts, 100);
        for d in [&d1, &d2] {
            let status = d.status();
            assert_eq!(status["core"]["tunnels"], json!(1), "{status}");
            assert_eq!(status["core"]["interface_mtu"], json!(1600), "{status}");
            assert_eq!(status["core"]["mtu_warnings"], json!([]), "{status}");
        }
        let tunnel = hosts.edge1.ip("-d link show dev vxc17");
        assert!(tunnel.contains("vxlan id 17 remote 10.99.0.2 local 10.99.0.1 dev core0")
            && tunnel.contains("mtu 1550"), "{tunnel}");

        hosts.customer.assert_ping("10.1.0.2", 3);
        let done = |l: &[String]| icmp(l).len() >= 6;
        customer_wire.wait_for(LIMIT, done);
        provider_wire.wait_for(LIMIT, done);
        core_wire.wait_for(LIMIT, done);
        let (customer, provider, core) = (customer_wire.stop(), provider_wire.stop(), core_wire.stop());
        let vlans = |lines: &[String]| -> BTreeSet<u16> {
            icmp(lines).iter().flat_map(|l| tcpdump_vlans(l)).collect()
        };
        assert_eq!(vlans(&customer), BTreeSet::from([200]), "{}", customer.join("\n"));
        assert_eq!(vlans(&provider), BTreeSet::from([100]), "{}", provider.join("\n"));
        // tcpdump prints the VXLAN header, then the inner frame (on the same line or the next).
        let vnis: Vec<&String> = core.iter().filter(|l| l.contains("VXLAN")).collect();
        assert!(vnis.len() >= 6 && icmp(&core).len() >= 6, "core:\n{}", core.join("\n"));
        for line in &vnis {
            assert!(line.contains("vni 17"), "a core frame without VNI 17: {line}");
        }
        for line in icmp(&core) {
            assert!(!line.contains("vlan "), "a tag crossed the core inside VXLAN: {line}");
        }

        // verify on each host proves its half; the other host counts what reached its customer.
        let probes_to_customer = |d: &Vxcd, port: &str| -> u64 {
            let inspect = d.ok(json!({"op": "inspect"}));
            inspect["ports"].as_array().into_iter().flatten()
                .filter(|p| p["port"] == json!(port))
                .flat_map(|p| p["ends"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["vxc"] == json!("v1"))
                .map(|e| e["probes_tx"].as_u64().unwrap_or(0))
                .sum()
        };
        let before = probes_to_customer(&d2, "prov");
        for (d, what) in [(&d1, "edge 1"), (&d2, "edge 2")] {
            let verified = d.ok(json!({"op": "verify", "id": "v1"}));
            assert_eq!(verified["pass"], json!(true), "verify on {what}: {verified}");
            let out = &verified["results"][0]["directions"];
            let towards_core = out.as_array().into_iter().flatten()
                .find(|d| !d["expected_vni"].is_null())
                .unwrap_or_else(|| panic!("no direction towards the core on {what}: {verified}"));
            assert_eq!(towards_core["core"][0]["vni"], json!(17), "{verified}");
        }
        wait_until(LIMIT, "edge 2's inspector to count edge 1's probe", || {
            probes_to_customer(&d2, "prov") > before
        });

        // Untagged A-End across hosts: customer 2's untagged frames reach the provider on 101.
        hosts.customer2.addr("eth0", "10.2.0.1/24");
        hosts.provider.add_vlan("eth0", 101, "10.2.0.2/24");
        d2.ok(key("k2", 101, None));
        d1.ok(key("k2", 101, Some(EDGE2)));
        d1.ok(vxc("v2", "k2", 18, 100, json!({"port": "cust2", "untagged": true})));
        d2.ok(vxc("v2", "k2", 18, 100, json!({"port": "cust2", "host": EDGE1, "untagged": true})));
        let customer2_wire = hosts.customer2.capture("eth0", "");
        let provider_wire = hosts.provider.capture("eth0", "");
        hosts.customer2.assert_ping("10.2.0.2", 2);
        customer2_wire.wait_for(LIMIT, |l| icmp(l).len() >= 4);
        provider_wire.wait_for(LIMIT, |l| icmp(l).len() >= 4);
        let (c2, p) = (customer2_wire.stop(), provider_wire.stop());
        assert_eq!(vlans(&c2), BTreeSet::new(), "customer 2's wire is untagged:\n{}", c2.join("\n"));
        assert_eq!(vlans(&p), BTreeSet::from([101]), "{}", p.join("\n"));
        d1.ok(json!({"op": "vxc.delete", "id": "v2"}));
        d2.ok(json!({"op": "vxc.delete", "id": "v2"}));

        // Edge 2's tunnel device made again by hand with VNI 99 and vxcd's marks, its pipe
        // pointed at it; repair off, so verify there sees what the kernel does. (The real
        // iproute2: busybox's ip and tc are first on the guest's PATH.)
        let mut d2 = d2;
        d2.configure(&format!(
            "[core]\naddress = \"{EDGE2}\"\ninterface = \"core0\"\n\n[reconcile]\nrepair = false"
        ));
        let _ = d2.terminate();
        d2.launch();
        let (ip, tc) = (lab::net::tool("ip"), lab::net::tool("tc"));
        hosts.edge2.sh(&format!(
            "{ip} link del vxc17 && \
             {ip} link add vxc17 type vxlan id 99 local 10.99.0.2 remote 10.99.0.1 dstport 4789 nolearning dev core0 && \
             {ip} link set dev vxc17 group 30819 && \
             {ip} link set dev vxc17 alias vxcd:v1:a && \
             {ip} link set dev vxc17 up && \
             {tc} qdisc add dev vxc17 ingress && \
             {tc} filter del dev prov0.100 ingress prio 30819 && \
             {tc} filter add dev prov0.100 ingress prio 30819 protocol all u32 match u32 0 0 \
                action mirred egress redirect dev vxc17"
        ));
        let verified = d2.ok(json!({"op": "verify", "id": "v1"}));
        assert_eq!(verified["pass"], json!(false), "{verified}");
        let text = verified.to_string();
        assert!(text.contains("with VNI 99 to 10.99.0.1 instead of VNI 17 to 10.99.0.1"), "{verified}");
        wait_until(LIMIT, "edge 2 to report the drift", || {
            let v = d2.ok(json!({"op": "vxc.get", "id": "v1"}))["vxc"].clone();
            v["state_reason"].as_str().is_some_and(|r| r.contains("VNI expected 17, observed 99"))
        });
    }

    /// (2) + (4): both directions shaped to the rate, a live rate change on both hosts without
    /// an ifindex change; SIGTERM of edge 1's vxcd and kill -9 of edge 2's: nothing lost, no
    /// ifindex changes, the ping works after the restarts; edge 1's tunnel deleted by hand comes
    /// back; a foreign VXLAN device on edge 1 is left alone.
    fn shaped_both_ways_changed_live_and_kept_through_restarts_and_repairs() {
        let hosts = Hosts::new();
        hosts.customer.add_vlan("eth0", 200, "10.3.0.1/24");
        hosts.provider.add_vlan("eth0", 100, "10.3.0.2/24");
        let (mut d1, mut d2) = v1(&hosts, 10);
        hosts.customer.assert_ping("10.3.0.2", 1);
        let context = || {
            format!(
                "tc -s qdisc in edge 1:\n{}\ntc -s qdisc in edge 2:\n{}",
                hosts.edge1.tc("-s qdisc show"),
                hosts.edge2.tc("-s qdisc show")
            )
        };
        let (customer, provider) = (&hosts.customer, &hosts.provider);
        assert_rate((customer, provider, "10.3.0.2"), 10.0, "customer to provider at 10 Mbit/s", &context);
        assert_rate((provider, customer, "10.3.0.1"), 10.0, "provider to customer at 10 Mbit/s", &context);

        let indexes = || {
            (
                hosts.edge1.ifindex("cust0.200"),
                hosts.edge1.ifindex("vxc17"),
                hosts.edge2.ifindex("vxc17"),
                hosts.edge2.ifindex("prov0.100"),
            )
        };
        let before = indexes();
        d1.ok(vxc("v1", "k1", 17, 5, json!({"port": "cust", "vlan": 200})));
        d2.ok(vxc("v1", "k1", 17, 5, json!({"port": "cust", "host": EDGE1, "vlan": 200})));
        assert_eq!(indexes(), before, "a rate change must keep every interface");
        for (edge, dev) in [(&hosts.edge1, "cust0.200"), (&hosts.edge2, "prov0.100")] {
            let qdisc = edge.tc(&format!("qdisc show dev {dev} root"));
            assert!(qdisc.contains("qdisc tbf 7863:") && qdisc.contains("rate 5Mbit"), "{dev}: {qdisc}");
        }
        assert_rate((customer, provider, "10.3.0.2"), 5.0, "customer to provider at 5 Mbit/s", &context);
        assert_rate((provider, customer, "10.3.0.1"), 5.0, "provider to customer at 5 Mbit/s", &context);

        let views = |d: &Vxcd| (d.ok(json!({"op": "vxc.list"})), d.ok(json!({"op": "key.list"})));
        let (seen1, seen2) = (views(&d1), views(&d2));
        let _ = d1.terminate();
        d1.launch();
        d2.kill9();
        d2.launch();
        assert_eq!(indexes(), before, "a restart remade an interface");
        let strip = |(vxcs, keys): (Value, Value)| {
            let mut vxcs = vxcs;
            for v in vxcs["vxcs"].as_array_mut().into_iter().flatten() {
                v.as_object_mut().map(|o| o.remove("state_reason"));
            }
            (vxcs, keys)
        };
        assert_eq!(strip(views(&d1)), strip(seen1), "edge 1 lost or changed something");
        assert_eq!(strip(views(&d2)), strip(seen2), "edge 2 lost or changed something");
        hosts.customer.assert_ping("10.3.0.2", 2);

        hosts.edge1.ip("link add vxfor type vxlan id 99 local 10.99.0.1 remote 10.99.0.2 dstport 4789 nolearning");
        hosts.edge1.ip("link del vxc17");
        wait_until(LIMIT, "edge 1 to make vxc17 again", || {
            hosts.edge1.link("vxc17").is_some_and(|l| l.alias.as_deref() == Some("vxcd:v1:b"))
                && hosts.edge1.tc("filter show dev cust0.200 ingress").contains("vxc17")
        });
        hosts.customer.assert_ping("10.3.0.2", 2);
        assert!(hosts.edge1.link("vxfor").is_some(), "the foreign VXLAN device was touched");
    }

    /// (3): the rules on each host, each its own error, nothing changed on either.
    fn each_host_enforces_its_own_rules_with_their_own_errors() {
        let hosts = Hosts::new();
        let (d1, d2) = v1(&hosts, 100);
        d2.ok(json!({"op": "key.put", "key": {"key": "k-multi", "port": "prov",
            "single_use": false, "max_speed_mbps": 1000}}));
        d1.ok(json!({"op": "key.put", "key": {"key": "k-multi", "port": "prov", "host": EDGE2,
            "single_use": false, "max_speed_mbps": 1000}}));
        // The links by ifindex and name (their operational state may change meanwhile).
        let links = |edge: &Netns| -> Vec<(u32, String)> {
            edge.links().into_iter().map(|l| (l.index, l.name)).collect()
        };
        let snapshot = |d: &Vxcd, edge: &Netns| {
            (d.ok(json!({"op": "vxc.list"})), d.ok(json!({"op": "key.list"})), links(edge))
        };
        let (before1, before2) = (snapshot(&d1, &hosts.edge1), snapshot(&d2, &hosts.edge2));
        let on1 = |vni: u32, rate: u32, a_end: Value| vxc("v2", "k-multi", vni, rate, a_end);
        for (d, request, code, says) in [
            // Edge 1: its port's VLANs, with the next available.
            (&d1, on1(18, 100, json!({"port": "cust", "vlan": 200})), "vlan_in_use",
                "VLAN 200 on port cust is in use by VXC v1; next available 201"),
            // Edge 2: its port's VLANs, for a key.
            (&d2, key("k3", 100, None), "vlan_in_use", "VLAN 100 on port prov is in use by VXC v1"),
            // The key's rules, on both hosts.
            (&d1, on1(18, 2000, json!({"port": "cust", "vlan": 201})), "rate_exceeds_key", "exceeds the 1000 Mbps maximum"),
            (&d2, on1(18, 2000, json!({"port": "cust", "host": EDGE1, "vlan": 201})), "rate_exceeds_key", "exceeds the 1000 Mbps maximum"),
            (&d1, vxc("v2", "k1", 18, 100, json!({"port": "cust", "vlan": 201})), "key_used", "already redeemed by VXC v1"),
            (&d2, vxc("v2", "k1", 18, 100, json!({"port": "cust", "host": EDGE1, "vlan": 201})), "key_used", "already redeemed by VXC v1"),
            // VNIs.
            (&d1, on1(17, 100, json!({"port": "cust", "vlan": 201})), "vni_in_use", "VNI 17 is in use by VXC v1"),
            (&d2, on1(17, 100, json!({"port": "cust", "host": EDGE1, "vlan": 201})), "vni_in_use", "VNI 17 is in use by VXC v1"),
            (&d2, json!({"op": "vxc.put", "vxc": {"id": "v2", "name": "n", "service_key": "k-multi",
                "rate_mbps": 1, "a_end": {"port": "prov", "vlan": 300}, "vni": 18}}), "bad_request",
                "both ends on this host"),
            // A remote A-End states its VLAN; both ends remote is nothing here.
            (&d2, on1(18, 100, json!({"port": "cust", "host": EDGE1})), "vlan_required", "state the vlan it assigned"),
            (&d1, on1(18, 100, json!({"port": "cust", "host": "10.99.0.3", "vlan": 201})), "bad_request",
                "nothing of it would be on this host"),
        ] {
            let error = d.refused(request.clone(), code);
            let message = error["message"].as_str().unwrap_or("");
            assert!(message.contains(says), "{request}: {message}");
        }
        assert_eq!(snapshot(&d1, &hosts.edge1), before1, "a refusal changed edge 1");
        assert_eq!(snapshot(&d2, &hosts.edge2), before2, "a refusal changed edge 2");
    }
}
