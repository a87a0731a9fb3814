//! Host tier: pipelined `vxc.delete`s land in one group, whose links go by the kernel's bulk path
//! (moved into vxcd's doomed group, then one `RTM_DELLINK` by group), each delete still answered
//! and journaled as if alone; a foreign link that sits in the doomed group makes vxcd delete its
//! own links one by one and leave that link alone.
//!
//! The links here are tunnel ends (this kernel has VXLAN, not 802.1Q): each VXC joins an
//! untagged port of its own (a veth in the edge namespace) to a VXLAN device `vxc<vni>`
//! ([`common::daemon::tunnel_edge`]).

mod common;

use common::daemon::{ok, tunnel_edge, Daemon};
use common::{veth_local, Netns};
use serde_json::{json, Value};

const PORTS: u32 = 12;

fn put(n: u32) -> Value {
    json!({"op": "vxc.put", "vxc": {"id": format!("t-{n}"), "name": "bulk",
        "service_key": "far", "rate_mbps": 50, "vni": 1000 + n,
        "a_end": {"port": format!("c{n}"), "untagged": true}}})
}

/// Sends these requests back to back on one connection, then reads every answer, in order.
fn pipelined(vxcd: &Daemon, requests: &[Value]) -> Vec<Value> {
    let mut client = vxcd.client();
    let mut lines = String::new();
    for r in requests {
        lines.push_str(&r.to_string());
        lines.push('\n');
    }
    client.send_raw(lines.as_bytes());
    requests
        .iter()
        .map(|_| client.read_answer().expect("an answer per request"))
        .collect()
}

fn tunnels(edge: &Netns) -> Vec<String> {
    edge.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("vxc"))
        .collect()
}

/// A tunnel edge with `PORTS` ports and a tunnel VXC on every port.
fn edge_with_vxcs(prefix: &str) -> (Netns, Netns, Daemon) {
    let (edge, peer, vxcd) = tunnel_edge(prefix, PORTS);
    let puts: Vec<Value> = (1..=PORTS).map(put).collect();
    for (n, answer) in (1..=PORTS).zip(pipelined(&vxcd, &puts)) {
        assert_eq!(answer["ok"], json!(true), "put t-{n}: {answer}");
    }
    assert_eq!(tunnels(&edge).len(), PORTS as usize, "{:?}", tunnels(&edge));
    (edge, peer, vxcd)
}

fn deletes(ids: impl Iterator<Item = String>) -> Vec<Value> {
    ids.map(|id| json!({"op": "vxc.delete", "id": id}))
        .collect()
}

#[test]
fn pipelined_deletes_take_the_bulk_path_and_each_is_answered_as_if_alone() {
    let (edge, _peer, mut vxcd) = edge_with_vxcs("bd");
    // Ten deletes and, in the middle, one of an id that does not exist and one of an id
    // deleted earlier in the same run: refused as they would be alone.
    let mut requests = deletes((1..=5).map(|n| format!("t-{n}")));
    requests.push(json!({"op": "vxc.delete", "id": "t-99"}));
    requests.push(json!({"op": "vxc.delete", "id": "t-3"}));
    requests.extend(deletes((6..=10).map(|n| format!("t-{n}"))));
    let answers = pipelined(&vxcd, &requests);
    for (i, answer) in answers.iter().enumerate() {
        match i {
            5 | 6 => assert_eq!(answer["ok"], json!(false), "op {i}: {answer}"),
            _ => assert_eq!(answer["ok"], json!(true), "op {i}: {answer}"),
        }
    }
    assert_eq!(answers[5]["error"]["code"], answers[6]["error"]["code"]);
    let log = vxcd.log();
    assert!(
        log.contains("deleted 10 links at once"),
        "the run went by the bulk path: {log}"
    );
    // Only the two VXCs left are in the kernel: their tunnels, their ports' qdiscs.
    let mut left = tunnels(&edge);
    left.sort();
    assert_eq!(left, vec!["vxc1011".to_string(), "vxc1012".to_string()]);
    for n in 1..=10 {
        let qdiscs = edge.tc(&["qdisc", "show", "dev", &format!("cust{n}")]);
        assert!(
            !qdiscs.contains("tbf") && !qdiscs.contains("ingress"),
            "cust{n}: {qdiscs}"
        );
    }
    assert!(edge.tc(&["qdisc", "show", "dev", "cust11"]).contains("tbf"));
    // Each delete is on disk: a restart (after kill -9: no clean shutdown to lean on) finds two
    // VXCs, and removes nothing.
    vxcd.kill9();
    vxcd.restart();
    let list = ok(vxcd.call(json!({"op": "vxc.list"})));
    let ids: Vec<&str> = list["vxcs"]
        .as_array()
        .expect("vxcs")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["t-11", "t-12"], "{list}");
    assert_eq!(tunnels(&edge).len(), 2);
}

#[test]
fn a_foreign_link_in_the_doomed_group_is_left_and_the_run_goes_one_by_one() {
    let (edge, _peer, vxcd) = edge_with_vxcs("bf");
    // Someone else's link, parked in the group vxcd deletes by: vxcd must not take it along.
    let doomed = vxcd::dataplane::doomed_group(vxcd::dataplane::DEFAULT_OWNER_GROUP);
    veth_local(&edge, "other0", "other1");
    edge.ip(&["link", "set", "other0", "group", &doomed.to_string()]);
    let answers = pipelined(&vxcd, &deletes((1..=PORTS).map(|n| format!("t-{n}"))));
    for (n, answer) in (1..=PORTS).zip(&answers) {
        assert_eq!(answer["ok"], json!(true), "delete t-{n}: {answer}");
    }
    assert!(tunnels(&edge).is_empty(), "{:?}", tunnels(&edge));
    assert!(
        edge.ip_ok(&["link", "show", "dev", "other0"]),
        "the foreign link in the doomed group was deleted"
    );
    let log = vxcd.log();
    assert!(
        log.contains("holds links vxcd is not deleting: deleting its links one by one"),
        "{log}"
    );
    assert!(!log.contains("links at once"), "{log}");
}
