//! Host tier: the kernel events vxcd raises itself run no reconcile pass; drift made by hand in
//! the middle of a burst of vxcd's own changes still does, and is repaired.
//!
//! The objects that raise link events here are tunnel ends (this kernel has VXLAN, not 802.1Q):
//! each VXC joins an untagged port of its own (a veth in the edge namespace) to a VXLAN device
//! `vxc<vni>` towards a peer; each put makes a link, sets its group, alias, flags and IPv6 mode,
//! and sets the port up and promiscuous. Periodic passes are off (`interval_s` an hour), so every
//! pass counted is one that kernel events started.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{ok, tunnel_edge, Daemon};
use common::veth_local;
use serde_json::{json, Value};

const PORTS: u32 = 24;

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    // A hang limit, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(vxcd: &Daemon) -> Value {
    ok(vxcd.call(json!({"op": "status"})))
}

fn counter(vxcd: &Daemon, name: &str) -> u64 {
    status(vxcd)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no {name}"))
}

fn put(n: u32) -> Value {
    json!({"op": "vxc.put", "vxc": {"id": format!("t-{n}"), "name": "burst",
        "service_key": "far", "rate_mbps": 50, "vni": 1000 + n,
        "a_end": {"port": format!("c{n}"), "untagged": true}}})
}

/// Sends the puts of `range` back to back on one connection, then reads every answer.
fn burst(vxcd: &Daemon, range: std::ops::RangeInclusive<u32>) {
    let mut client = vxcd.client();
    let mut lines = String::new();
    for n in range.clone() {
        lines.push_str(&put(n).to_string());
        lines.push('\n');
    }
    client.send_raw(lines.as_bytes());
    for n in range {
        let answer = client.read_answer().expect("an answer per put");
        assert_eq!(answer["ok"], json!(true), "put t-{n}: {answer}");
    }
}

#[test]
fn a_burst_of_puts_runs_no_pass_of_its_own_and_drift_made_in_it_is_repaired() {
    let (edge, _peer, vxcd) = tunnel_edge("oe", PORTS);
    let passes = counter(&vxcd, "reconcile_passes");

    // 1. A burst with a tunnel deleted by hand in the middle of it: that, and only that, is
    //    drift. It is repaired by exactly one pass.
    burst(&vxcd, 1..=8);
    edge.ip(&["link", "del", "vxc1003"]);
    burst(&vxcd, 9..=16);
    wait_for("vxc1003 to be made again", || {
        edge.ip_ok(&["link", "show", "dev", "vxc1003"])
    });
    wait_for("the repair to be counted", || {
        counter(&vxcd, "drift_repairs") >= 1
    });
    let after_drift = counter(&vxcd, "reconcile_passes");
    assert_eq!(
        after_drift,
        passes + 1,
        "one pass for the tunnel deleted by hand, none for vxcd's own changes"
    );

    // 2. A burst of vxcd's own changes only: judged vxcd's own (counted), no pass. A tunnel
    //    deleted by hand afterwards is the marker: its pass is then the only one.
    let own = counter(&vxcd, "own_event_bursts");
    burst(&vxcd, 17..=PORTS);
    wait_for("the burst to be judged vxcd's own", || {
        counter(&vxcd, "own_event_bursts") > own
    });
    assert_eq!(counter(&vxcd, "reconcile_passes"), after_drift);
    // A foreign link coming and going is not vxcd's business either.
    veth_local(&edge, "scratch0", "scratch1");
    edge.ip(&["link", "del", "scratch0"]);
    let repairs = counter(&vxcd, "drift_repairs");
    edge.ip(&["link", "set", "vxc1020", "down"]);
    wait_for("vxc1020 to be up again", || {
        edge.ip(&["link", "show", "dev", "vxc1020"]).contains(",UP")
    });
    wait_for("the repair to be counted", || {
        counter(&vxcd, "drift_repairs") > repairs
    });
    assert_eq!(
        counter(&vxcd, "reconcile_passes"),
        after_drift + 1,
        "a pass for the tunnel set down by hand, none for the burst or the foreign link"
    );
    // Born up: up, promiscuous, marked, and without a link-local address.
    for n in [1, 9, 24] {
        let name = format!("vxc{}", 1000 + n);
        let shown = edge.ip(&["-d", "link", "show", "dev", &name]);
        assert!(
            shown.contains("PROMISC") && shown.contains(",UP"),
            "{shown}"
        );
        assert!(shown.contains(&format!("alias vxcd:t-{n}:")), "{shown}");
        assert_eq!(edge.ip(&["-6", "addr", "show", "dev", &name]).trim(), "");
    }
    let log = vxcd.log();
    assert!(
        log.contains("kernel change not of vxcd's making: VXC t-20"),
        "the pass names its cause: {log}"
    );
}
