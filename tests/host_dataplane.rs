//! Host tests of the netlink dataplane on this kernel, in namespaces the tests create.
//! This kernel has no 802.1Q, so the pipe is tested with untagged ends; the VLAN path is
//! tested for its clear error and its rollback.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{require_root, untagged_vxc as untagged, veth, Netns};
use vxcd::dataplane::{
    end_interface_name, BurstPolicy, Dataplane, DataplaneConfig, Discrepancy, EventChange,
    KernelObject, ObjectChange, Orphan, VxcOutcome, VxcSpec, VxcStatus,
};

/// Heavy tests (traffic, 1000 links) run one at a time so their figures mean something.
static HEAVY: Mutex<()> = Mutex::new(());

const CUST_IP: &str = "10.77.0.1";
const PROV_IP: &str = "10.77.0.2";

/// customer ns (c0) --veth-- (e1) edge ns (e2) --veth-- (p0) provider ns, same /24.
struct Topo {
    cust: Netns,
    edge: Netns,
    prov: Netns,
}

fn topo() -> Topo {
    require_root();
    let t = Topo {
        cust: Netns::new("vxdp-cust"),
        edge: Netns::new("vxdp-edge"),
        prov: Netns::new("vxdp-prov"),
    };
    veth(&t.cust, "c0", &t.edge, "e1");
    veth(&t.prov, "p0", &t.edge, "e2");
    t.cust
        .ip(&["addr", "add", &format!("{CUST_IP}/24"), "dev", "c0"]);
    t.prov
        .ip(&["addr", "add", &format!("{PROV_IP}/24"), "dev", "p0"]);
    t
}

async fn dp() -> Dataplane {
    Dataplane::connect(DataplaneConfig::default())
        .await
        .expect("connect")
}

#[test]
fn pipe_joins_two_untagged_ends_and_remove_takes_it_down() {
    let t = topo();
    assert!(
        !t.cust.reaches(&t.prov, PROV_IP),
        "customer reaches provider before any pipe exists: the test topology leaks"
    );
    let spec = untagged("vxc-pipe", 100, "e1", "e2");
    let s = spec.clone();
    let (first, second) = t.edge.block_on(move || async move {
        let dp = dp().await;
        let first = dp.apply(&s).await.expect("apply");
        let second = dp.apply(&s).await.expect("second apply");
        (first, second)
    });
    assert!(!first.is_noop(), "first apply must create objects");
    for obj in [
        "TBF 7863: on e1",
        "TBF 7863: on e2",
        "ingress qdisc on e1",
        "pipe filter on e2",
    ] {
        assert!(
            first
                .changes
                .iter()
                .any(|c| c.object == obj && c.change == ObjectChange::Created),
            "{obj} not reported created: {:?}",
            first.changes
        );
    }
    assert!(
        second.is_noop(),
        "second apply of the same spec must send nothing: {:?}",
        second.changes
    );
    assert!(
        t.cust.reaches(&t.prov, PROV_IP),
        "customer cannot reach provider through the pipe"
    );

    let s = spec.clone();
    t.edge
        .block_on(move || async move { dp().await.remove(&s).await.expect("remove") });
    assert!(
        !t.cust.reaches(&t.prov, PROV_IP),
        "provider still reachable after remove"
    );
    for dev in ["e1", "e2"] {
        let q = t.edge.tc(&["qdisc", "show", "dev", dev]);
        assert!(
            !q.contains("tbf") && !q.contains("ingress"),
            "qdiscs left on {dev} after remove: {q}"
        );
    }
}

/// Issue 11, shutdown: the pipe filters go (no frame crosses), the ends and their shapers
/// stay; a plan of the shut VXC is clean, one of the VXC carrying frames reports the missing
/// pipes; enabling brings the pipe back.
#[test]
fn shutdown_takes_the_pipe_away_keeps_the_shapers_and_enable_restores_it() {
    let t = topo();
    let up = untagged("vxc-shut", 100, "e1", "e2");
    let shut = VxcSpec {
        shutdown: true,
        ..up.clone()
    };
    let (u, s) = (up.clone(), shut.clone());
    let (report, shut_status, up_status) = t.edge.block_on(move || async move {
        let dp = dp().await;
        dp.apply(&u).await.expect("apply");
        let report = dp.apply(&s).await.expect("shut down");
        let observed = dp.observe().await.expect("observe");
        let shut_plan = Dataplane::plan(std::slice::from_ref(&s), &observed);
        let up_plan = Dataplane::plan(std::slice::from_ref(&u), &observed);
        (
            report,
            shut_plan.status("vxc-shut").cloned(),
            up_plan.status("vxc-shut").cloned(),
        )
    });
    for obj in ["pipe filter on e1", "pipe filter on e2"] {
        assert!(
            report
                .changes
                .iter()
                .any(|c| c.object == obj && c.change == ObjectChange::Deleted),
            "{obj} not reported deleted: {:?}",
            report.changes
        );
    }
    assert_eq!(report.changes.len(), 2, "{:?}", report.changes);
    assert_eq!(shut_status, Some(VxcStatus::Ok));
    assert!(
        matches!(&up_status, Some(VxcStatus::Drift(d)) if d.iter().any(|d| matches!(d, Discrepancy::Missing { object } if object == "pipe filter on e1"))),
        "{up_status:?}"
    );
    assert!(
        !t.cust.reaches(&t.prov, PROV_IP),
        "a frame crossed a shut-down VXC"
    );
    for dev in ["e1", "e2"] {
        let q = t.edge.tc(&["qdisc", "show", "dev", dev]);
        assert!(q.contains("tbf") && q.contains("ingress"), "{dev}: {q}");
        let f = t.edge.tc(&["filter", "show", "dev", dev, "ingress"]);
        assert!(f.trim().is_empty(), "{dev} still has a filter: {f}");
    }
    let u = up.clone();
    let back = t
        .edge
        .block_on(move || async move { dp().await.apply(&u).await.expect("enable") });
    assert_eq!(back.changes.len(), 2, "{:?}", back.changes);
    assert!(
        t.cust.reaches(&t.prov, PROV_IP),
        "enabling did not bring the pipe back"
    );
}

/// Issue 11, statistics: the end interfaces' and shapers' counters move with the traffic the
/// pipe carries, and the shaper's totals run on across a rate change (replaced in place).
#[test]
fn end_counters_move_with_the_traffic_and_survive_a_rate_change() {
    let t = topo();
    let spec = untagged("vxc-stats", 100, "e1", "e2");
    let s = spec.clone();
    let before = t.edge.block_on(move || async move {
        let dp = dp().await;
        dp.apply(&s).await.expect("apply");
        (
            dp.end_counters("e1").await.expect("counters e1"),
            dp.end_counters("e2").await.expect("counters e2"),
        )
    });
    assert!(t.cust.reaches(&t.prov, PROV_IP), "no pipe");
    let pinged = t
        .cust
        .exec_ok(&["ping", "-c", "5", "-i", "0.2", "-W", "2", PROV_IP]);
    let s = VxcSpec {
        rate_mbps: 50,
        ..spec.clone()
    };
    let (after, changed, gone) = t.edge.block_on(move || async move {
        let dp = dp().await;
        let after = (
            dp.end_counters("e1").await.expect("counters e1"),
            dp.end_counters("e2").await.expect("counters e2"),
        );
        dp.apply(&s).await.expect("rate change");
        let changed = dp
            .end_counters("e2")
            .await
            .expect("counters after the change");
        let gone = dp.end_counters("nope0").await.expect("counters of no link");
        (after, changed, gone)
    });
    assert!(pinged, "pings lost on an unloaded pipe");
    let (a0, b0) = before;
    let (a1, b1) = after;
    let (ia0, ia1) = (
        a0.interface.expect("e1 counters"),
        a1.interface.expect("e1 counters"),
    );
    let (sb0, sb1) = (
        b0.shaper.expect("e2 shaper"),
        b1.shaper.clone().expect("e2 shaper"),
    );
    // The customer's frames enter e1 (rx) and leave e2 through its shaper (sent).
    assert!(ia1.rx_packets >= ia0.rx_packets + 5, "{ia0:?} -> {ia1:?}");
    assert!(
        sb1.sent_packets >= sb0.sent_packets + 5,
        "{sb0:?} -> {sb1:?}"
    );
    assert!(sb1.sent_bytes > sb0.sent_bytes);
    assert_eq!(sb1.drops, 0, "{sb1:?}");
    let sb2 = changed.shaper.expect("e2 shaper after the rate change");
    assert!(
        sb2.sent_packets >= sb1.sent_packets,
        "the shaper's totals reset: {sb1:?} -> {sb2:?}"
    );
    assert_eq!(gone, vxcd::dataplane::EndCounters::default());
}

#[test]
fn shapers_read_back_and_rate_change_is_in_place() {
    let t = topo();
    let spec = untagged("vxc-rate", 100, "e1", "e2");
    let s = spec.clone();
    let observed = t.edge.block_on(move || async move {
        let dp = dp().await;
        dp.apply(&s).await.expect("apply");
        dp.observe().await.expect("observe")
    });
    let want = BurstPolicy::default().params(100, 1500);
    for dev in ["e1", "e2"] {
        let link = observed.link_by_name(dev).expect("link");
        let root = observed.root_qdiscs.get(&link.index).expect("root qdisc");
        assert_eq!(root.kind, "tbf");
        assert_eq!(root.handle, 0x7863_0000);
        let got = root.tbf.expect("tbf options decoded");
        assert_eq!(got.rate_bytes_per_s, 12_500_000, "{dev} rate");
        assert_eq!(got.limit_bytes, want.limit_bytes, "{dev} limit");
        assert!(
            vxcd::dataplane::tbf::burst_matches(
                want.burst_bytes,
                got.burst_bytes,
                got.rate_bytes_per_s
            ),
            "{dev} burst: want {} got {}",
            want.burst_bytes,
            got.burst_bytes
        );
        let q = t.edge.tc(&["qdisc", "show", "dev", dev]);
        assert!(
            q.contains("qdisc tbf 7863: root") && q.contains("rate 100Mbit"),
            "tc sees on {dev}: {q}"
        );
    }
    // Traffic through the pipe so the TBF counters are non-zero: a recreated qdisc would reset them.
    assert!(t.cust.reaches(&t.prov, PROV_IP));
    let index_before = t.edge.ifindex("e2");
    let sent_before = sent_bytes(&t.edge.tc(&["-s", "qdisc", "show", "dev", "e2", "root"]));
    assert!(sent_before > 0, "no bytes through the TBF on e2");

    let mut faster = spec.clone();
    faster.rate_mbps = 250;
    let report = t
        .edge
        .block_on(move || async move { dp().await.apply(&faster).await.expect("apply 250") });
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.object == "TBF 7863: on e2" && matches!(c.change, ObjectChange::Changed(_))),
        "rate change not reported as an in-place change: {:?}",
        report.changes
    );
    assert!(
        !report
            .changes
            .iter()
            .any(|c| c.change == ObjectChange::Created),
        "rate change created objects: {:?}",
        report.changes
    );
    assert_eq!(t.edge.ifindex("e2"), index_before, "ifindex changed");
    let link = t.edge.ip(&["link", "show", "dev", "e2"]);
    assert!(
        link.contains(",UP") && link.contains("PROMISC"),
        "e2 no longer up/promisc: {link}"
    );
    let q = t.edge.tc(&["-s", "qdisc", "show", "dev", "e2", "root"]);
    assert!(q.contains("rate 250Mbit"), "rate not changed: {q}");
    assert!(
        sent_bytes(&q) >= sent_before,
        "TBF counters reset: the qdisc was recreated, not changed ({q})"
    );
    assert!(
        t.cust.reaches(&t.prov, PROV_IP),
        "pipe broken by the rate change"
    );
}

fn sent_bytes(tc_stats: &str) -> u64 {
    tc_stats
        .split_whitespace()
        .skip_while(|w| *w != "Sent")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Sent counter in {tc_stats}"))
}

#[test]
fn vlan_end_fails_with_8021q_error_and_leaves_nothing() {
    let t = topo();
    let mut spec = untagged("vxc-vlan", 100, "e1", "e2");
    spec.b.vlan = Some(200);
    let s = spec.clone();
    let err = t
        .edge
        .block_on(move || async move { dp().await.apply(&s).await.expect_err("no 802.1Q here") });
    let msg = err.to_string();
    assert!(
        err.lacks_8021q(),
        "error does not say 802.1Q is missing: {msg}"
    );
    assert!(
        msg.contains("creating e2.200 (VLAN 200 on e2)"),
        "error does not name the object: {msg}"
    );
    assert!(
        msg.contains("EOPNOTSUPP") && msg.contains("no 802.1Q support"),
        "error lacks the kernel cause: {msg}"
    );
    // End A (untagged e1) was done first; the rollback must have removed it all.
    let q = t.edge.tc(&["qdisc", "show", "dev", "e1"]);
    assert!(
        !q.contains("tbf") && !q.contains("ingress"),
        "rollback left qdiscs on e1: {q}"
    );
    let link = t.edge.ip(&["link", "show", "dev", "e1"]);
    assert!(
        !link.contains("PROMISC"),
        "rollback left e1 promiscuous: {link}"
    );
    assert!(
        !t.edge.ip_ok(&["link", "show", "dev", "e2.200"]),
        "e2.200 exists after failure"
    );
}

#[test]
fn plan_reports_drift_converge_repairs_and_removes_only_owned_orphans() {
    let t = topo();
    let spec = untagged("vxc-drift", 100, "e1", "e2");
    let s = spec.clone();
    t.edge
        .block_on(move || async move { dp().await.apply(&s).await.expect("apply") });

    // Drift: a hand-deleted TBF.
    t.edge.tc(&["qdisc", "del", "dev", "e1", "root"]);
    // Orphans: our TBF handle on an interface no VXC uses, and an owner-marked link.
    t.edge
        .ip(&["link", "add", "x1", "type", "veth", "peer", "name", "x2"]);
    t.edge.tc(&[
        "qdisc", "add", "dev", "x1", "root", "handle", "7863:", "tbf", "rate", "10mbit", "burst",
        "32k", "latency", "10ms",
    ]);
    t.edge.ip(&[
        "link", "add", "o1", "group", "30819", "type", "veth", "peer", "name", "o2",
    ]);
    t.edge.ip(&["link", "set", "o1", "alias", "vxcd:gone:a"]);
    // Foreign: a marked-looking link outside the group, a link in the group without alias,
    // and foreign qdiscs/filters.
    t.edge
        .ip(&["link", "add", "f1", "type", "veth", "peer", "name", "f2"]);
    t.edge
        .ip(&["link", "set", "f1", "alias", "vxcd:not-ours:a"]);
    t.edge.ip(&[
        "link", "add", "g1", "group", "30819", "type", "veth", "peer", "name", "g2",
    ]);
    t.edge.tc(&[
        "qdisc", "add", "dev", "f1", "root", "handle", "1:", "tbf", "rate", "10mbit", "burst",
        "32k", "latency", "10ms",
    ]);
    t.edge.tc(&["qdisc", "add", "dev", "f1", "ingress"]);
    t.edge.tc(&[
        "filter", "add", "dev", "f1", "parent", "ffff:", "prio", "10", "protocol", "all", "u32",
        "match", "u32", "0", "0", "classid", "1:1",
    ]);

    let s = spec.clone();
    let (plan, report, plan_after, second) = t.edge.block_on(move || async move {
        let dp = dp().await;
        let obs = dp.observe().await.expect("observe");
        let plan = Dataplane::plan(std::slice::from_ref(&s), &obs);
        let report = dp
            .converge(std::slice::from_ref(&s))
            .await
            .expect("converge");
        let obs = dp.observe().await.expect("observe after");
        let plan_after = Dataplane::plan(std::slice::from_ref(&s), &obs);
        let second = dp
            .converge(std::slice::from_ref(&s))
            .await
            .expect("second converge");
        (plan, report, plan_after, second)
    });
    match plan.status("vxc-drift") {
        Some(VxcStatus::Drift(d)) => assert!(
            d.contains(&Discrepancy::Missing {
                object: "TBF 7863: on e1".into()
            }),
            "missing TBF not reported: {d:?}"
        ),
        other => panic!("expected drift, got {other:?}"),
    }
    let orphan_names: Vec<String> = plan.orphans.iter().map(|o| o.to_string()).collect();
    assert!(
        plan.orphans
            .iter()
            .any(|o| matches!(o, Orphan::Link { name, .. } if name == "o1")),
        "{orphan_names:?}"
    );
    assert!(
        plan.orphans
            .iter()
            .any(|o| matches!(o, Orphan::Tbf { name, .. } if name == "x1")),
        "{orphan_names:?}"
    );
    assert_eq!(
        plan.orphans.len(),
        2,
        "only vxcd-owned objects are orphans: {orphan_names:?}"
    );

    match report.outcome("vxc-drift") {
        Some(VxcOutcome::Repaired(r)) => assert!(
            r.changes
                .iter()
                .any(|c| c.object == "TBF 7863: on e1" && c.change == ObjectChange::Created),
            "{r:?}"
        ),
        other => panic!("expected repaired, got {other:?}"),
    }
    assert_eq!(
        report.orphans_removed.len(),
        2,
        "{:?}",
        report.orphans_removed
    );
    assert!(
        report.orphan_failures.is_empty(),
        "{:?}",
        report.orphan_failures
    );
    assert_eq!(plan_after.status("vxc-drift"), Some(&VxcStatus::Ok));
    assert!(plan_after.orphans.is_empty(), "{:?}", plan_after.orphans);
    assert!(matches!(second.outcome("vxc-drift"), Some(VxcOutcome::Ok)));
    assert!(second.orphans_removed.is_empty());

    assert!(
        !t.edge.ip_ok(&["link", "show", "dev", "o1"]),
        "orphan link o1 not removed"
    );
    assert!(
        !t.edge.tc(&["qdisc", "show", "dev", "x1"]).contains("tbf"),
        "orphan TBF on x1 not removed"
    );
    let f1 = t.edge.tc(&["qdisc", "show", "dev", "f1"]);
    assert!(
        f1.contains("qdisc tbf 1: root") && f1.contains("ingress"),
        "foreign qdiscs on f1 touched: {f1}"
    );
    let filters = t.edge.tc(&["filter", "show", "dev", "f1", "ingress"]);
    assert!(
        filters.contains("pref 10"),
        "foreign filter on f1 touched: {filters}"
    );
    assert!(
        t.edge.ip_ok(&["link", "show", "dev", "f1"])
            && t.edge.ip_ok(&["link", "show", "dev", "g1"]),
        "foreign links deleted"
    );
    assert!(
        t.cust.reaches(&t.prov, PROV_IP),
        "pipe broken after converge"
    );
}

#[test]
fn foreign_root_qdisc_blocks_apply_without_touching_it() {
    let t = topo();
    t.edge.tc(&[
        "qdisc", "add", "dev", "e2", "root", "handle", "1:", "tbf", "rate", "10mbit", "burst",
        "32k", "latency", "10ms",
    ]);
    let spec = untagged("vxc-foreign", 100, "e1", "e2");
    let err = t.edge.block_on(move || async move {
        dp().await
            .apply(&spec)
            .await
            .expect_err("foreign root qdisc")
    });
    assert!(err.to_string().contains("root qdisc tbf 1: on e2"), "{err}");
    assert!(t
        .edge
        .tc(&["qdisc", "show", "dev", "e2"])
        .contains("qdisc tbf 1: root"));
    let q = t.edge.tc(&["qdisc", "show", "dev", "e1"]);
    assert!(
        !q.contains("tbf") && !q.contains("ingress"),
        "rollback left qdiscs on e1: {q}"
    );
}

#[test]
fn missing_port_is_pending() {
    let t = topo();
    let spec = untagged("vxc-pending", 100, "e1", "nosuch0");
    let s = spec.clone();
    let (err, report) = t.edge.block_on(move || async move {
        let dp = dp().await;
        let err = dp.apply(&s).await.expect_err("port missing");
        let report = dp
            .converge(std::slice::from_ref(&s))
            .await
            .expect("converge");
        (err, report)
    });
    assert!(err.is_port_missing(), "{err}");
    assert!(err.to_string().contains("nosuch0"), "{err}");
    assert!(
        matches!(report.outcome("vxc-pending"), Some(VxcOutcome::Pending(m)) if m[0].1 == "nosuch0")
    );
    assert!(
        !t.edge.tc(&["qdisc", "show", "dev", "e1"]).contains("tbf"),
        "pending VXC got objects"
    );
}

#[test]
fn events_report_link_and_qdisc_changes() {
    require_root();
    let ns = Netns::new("vxdp-ev");
    let name = ns.name.clone();
    let events = ns.block_on(move || async move {
        let dp = dp().await;
        let mut rx = dp.events().await.expect("events");
        let path = name.clone();
        // Make changes from another process while we listen.
        tokio::task::spawn_blocking(move || {
            common::run(
                "ip",
                &[
                    "-n", &path, "link", "add", "ev1", "type", "veth", "peer", "name", "ev2",
                ],
            );
            common::run(
                "tc",
                &[
                    "-n", &path, "qdisc", "add", "dev", "ev1", "root", "handle", "7863:", "tbf",
                    "rate", "10mbit", "burst", "32k", "latency", "10ms",
                ],
            );
            common::run("ip", &["-n", &path, "link", "del", "ev1"]);
        });
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !seen.iter().any(|e: &vxcd::dataplane::KernelEvent| {
            e.change == EventChange::Removed && e.object == KernelObject::Link
        }) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => seen.push(e),
                _ => break,
            }
        }
        seen
    });
    assert!(
        events.iter().any(|e| e.object == KernelObject::Link
            && e.change == EventChange::Added
            && e.name.as_deref() == Some("ev1")),
        "no link-added event for ev1: {events:?}"
    );
    assert!(
        events.iter().any(|e| e.object == KernelObject::Qdisc),
        "no qdisc event: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.object == KernelObject::Link && e.change == EventChange::Removed),
        "no link-removed event: {events:?}"
    );
}

#[test]
fn end_names_fit_ifnamsiz() {
    assert_eq!(end_interface_name("eth1", Some(200)), "eth1.200");
    assert_eq!(end_interface_name("eth1", None), "eth1");
    let long = end_interface_name("enp129s0f1np1", Some(4093));
    assert!(
        long.len() <= 15 && long.starts_with("vx") && long.ends_with(".4093"),
        "{long}"
    );
    assert_eq!(
        long,
        end_interface_name("enp129s0f1np1", Some(4093)),
        "deterministic"
    );
    assert_ne!(long, end_interface_name("enp129s0f0np0", Some(4093)));
}

/// Pushes TCP for `secs` from the customer to the provider through the pipe; Mbit/s.
fn tcp_throughput(t: &Topo, secs: u64) -> f64 {
    let listener = t
        .prov
        .run(move || TcpListener::bind((PROV_IP, 5201)).expect("bind"));
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let start = Instant::now();
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        (total, start.elapsed())
    });
    t.cust.run(move || {
        let mut conn = TcpStream::connect((PROV_IP, 5201)).expect("connect");
        let buf = vec![0x5au8; 1 << 16];
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            conn.write_all(&buf).expect("write");
        }
    });
    let (bytes, elapsed) = receiver.join().expect("receiver");
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

#[test]
fn measure_tbf_throughput_on_veth() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let mut results = Vec::new();
    // 40 Gbit/s is far above what veth does on this machine: the unshaped ceiling.
    for rate in [10u32, 100, 1000, 5000, 40_000] {
        let spec = untagged("vxc-tput", rate, "e1", "e2");
        t.edge
            .block_on(move || async move { dp().await.apply(&spec).await.expect("apply") });
        let wire_before = sent_bytes(&t.edge.tc(&["-s", "qdisc", "show", "dev", "e2", "root"]));
        let started = Instant::now();
        let goodput = tcp_throughput(&t, 3);
        let elapsed = started.elapsed().as_secs_f64();
        let wire_after = sent_bytes(&t.edge.tc(&["-s", "qdisc", "show", "dev", "e2", "root"]));
        // Frames (Ethernet header included) the TBF let out, averaged over the whole run.
        let wire = (wire_after - wire_before) as f64 * 8.0 / elapsed / 1e6;
        println!(
            "TBF {rate} Mbit/s: TCP goodput {goodput:.1} Mbit/s ({:.1} %), frames out of the TBF {wire:.1} Mbit/s ({:.1} %)",
            goodput / f64::from(rate) * 100.0,
            wire / f64::from(rate) * 100.0
        );
        results.push((rate, goodput));
    }
    assert!(
        results.iter().all(|(_, g)| *g > 0.0),
        "no traffic passed: {results:?}"
    );
}

#[test]
fn measure_converge_500_vxcs_over_1000_veth_pairs() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let ns = Netns::new("vxdp-mass");
    let batch: String = (0..1000)
        .map(|i| format!("link add pa{i} type veth peer name pb{i}\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("{}-batch", ns.name));
    std::fs::write(&path, batch).expect("batch file");
    let started = Instant::now();
    ns.ip(&["-batch", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    println!("1000 veth pairs with ip -batch: {:?}", started.elapsed());
    let specs: Vec<VxcSpec> = (0..500)
        .map(|i| {
            untagged(
                &format!("vxc-{i}"),
                100 + i,
                &format!("pa{}", 2 * i),
                &format!("pa{}", 2 * i + 1),
            )
        })
        .collect();
    let (t_first, first, t_second, second, t_remove) = ns.block_on(move || async move {
        let dp = dp().await;
        let t0 = Instant::now();
        let first = dp.converge(&specs).await.expect("converge");
        let t_first = t0.elapsed();
        let t0 = Instant::now();
        let obs = dp.observe().await.expect("observe");
        println!(
            "observe of {} links, {} ingress qdiscs: {:?}",
            obs.links.len(),
            obs.ingress.len(),
            t0.elapsed()
        );
        let t0 = Instant::now();
        let second = dp.converge(&specs).await.expect("converge again");
        let t_second = t0.elapsed();
        let t0 = Instant::now();
        let none: Vec<VxcSpec> = Vec::new();
        let removed = dp.converge(&none).await.expect("converge to nothing");
        assert_eq!(
            removed.orphans_removed.len(),
            1000 * 2,
            "every TBF and filter becomes an orphan"
        );
        (t_first, first, t_second, second, t0.elapsed())
    });
    let repaired = first
        .vxcs
        .iter()
        .filter(|(_, o)| matches!(o, VxcOutcome::Repaired(_)))
        .count();
    let failed: Vec<String> = first
        .vxcs
        .iter()
        .filter_map(|(id, o)| match o {
            VxcOutcome::Failed(e) => Some(format!("{id}: {e}")),
            _ => None,
        })
        .take(5)
        .collect();
    assert_eq!(repaired, 500, "first converge: {failed:?}");
    assert!(
        second.vxcs.iter().all(|(_, o)| matches!(o, VxcOutcome::Ok)),
        "second converge was not a no-op"
    );
    println!("converge 500 untagged VXCs (1000 ends): first {t_first:?}, again (no-op) {t_second:?}, to nothing (2000 orphans) {t_remove:?}");
}

#[test]
fn converge_continues_past_a_failing_vxc() {
    let t = topo();
    // A second pair of ports in the edge for a VXC that cannot be built here (VLAN end).
    t.edge
        .ip(&["link", "add", "e3", "type", "veth", "peer", "name", "e4"]);
    let good = untagged("vxc-good", 100, "e1", "e2");
    let mut bad = untagged("vxc-bad", 100, "e3", "e4");
    bad.b.vlan = Some(300);
    let report = t.edge.block_on(move || async move {
        dp().await.converge(&[bad, good]).await.expect("converge")
    });
    match report.outcome("vxc-bad") {
        Some(VxcOutcome::Failed(e)) => assert!(e.lacks_8021q(), "{e}"),
        other => panic!("vxc-bad: expected failure, got {other:?}"),
    }
    assert!(
        matches!(report.outcome("vxc-good"), Some(VxcOutcome::Repaired(_))),
        "{:?}",
        report.outcome("vxc-good")
    );
    assert!(t.cust.reaches(&t.prov, PROV_IP), "good VXC not working");
    let q = t.edge.tc(&["qdisc", "show", "dev", "e3"]);
    assert!(
        !q.contains("tbf") && !q.contains("ingress"),
        "failed VXC left qdiscs on e3: {q}"
    );
}

#[test]
fn foreign_link_with_the_end_name_is_refused_and_kept() {
    let t = topo();
    // Not a VLAN, not marked: someone else's link that happens to have the end's name.
    t.edge.ip(&[
        "link", "add", "e2.200", "type", "veth", "peer", "name", "zz",
    ]);
    let mut spec = untagged("vxc-name", 100, "e1", "e2");
    spec.b.vlan = Some(200);
    let s = spec.clone();
    let err = t.edge.block_on(move || async move {
        let dp = dp().await;
        let err = dp.apply(&s).await.expect_err("foreign link in the way");
        dp.remove(&s).await.expect("remove");
        err
    });
    let msg = err.to_string();
    assert!(
        msg.contains("link e2.200") && msg.contains("not owned by vxcd"),
        "{msg}"
    );
    assert!(
        t.edge.ip_ok(&["link", "show", "dev", "e2.200"]),
        "foreign link deleted"
    );
    let q = t.edge.tc(&["qdisc", "show", "dev", "e1"]);
    assert!(
        !q.contains("tbf") && !q.contains("ingress"),
        "rollback left qdiscs on e1: {q}"
    );
}

#[test]
fn rate64_shaper_reads_back() {
    let t = topo();
    // 40 Gbit/s = 5e9 bytes/s: beyond the u32 rate of tc_ratespec, so TCA_TBF_RATE64 is used.
    let spec = untagged("vxc-r64", 40_000, "e1", "e2");
    let obs = t.edge.block_on(move || async move {
        let dp = dp().await;
        dp.apply(&spec).await.expect("apply 40 Gbit/s");
        dp.observe().await.expect("observe")
    });
    let index = obs.link_by_name("e1").expect("e1").index;
    let tbf = obs
        .root_qdiscs
        .get(&index)
        .and_then(|q| q.tbf)
        .expect("tbf on e1");
    assert_eq!(tbf.rate_bytes_per_s, 5_000_000_000);
    assert!(t
        .edge
        .tc(&["qdisc", "show", "dev", "e1"])
        .contains("rate 40Gbit"));
}

/// `count` veth pairs `{prefix}a{i}` / `{prefix}b{i}` made with one `ip -batch`.
fn veth_pairs(ns: &Netns, prefix: &str, count: usize) {
    let batch: String = (0..count)
        .map(|i| format!("link add {prefix}a{i} type veth peer name {prefix}b{i}\n"))
        .collect();
    let path = std::env::temp_dir().join(format!("{}-{prefix}-batch", ns.name));
    std::fs::write(&path, batch).expect("batch file");
    ns.ip(&["-batch", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
}

/// Number of VXCs the apply-scaling measurement creates (`VXCD_SCALE_VXCS`, default 1000).
fn scale_vxcs() -> usize {
    std::env::var("VXCD_SCALE_VXCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn measure_apply_one_by_one_stays_flat_as_vxcs_grow() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    const BATCH: usize = 100;
    let vxcs = scale_vxcs().max(BATCH);
    let ns = Netns::new("vxdp-scale");
    // Without this, setting 2 ports up per apply costs the kernel IPv6 link-local routes
    // (one fe80::/64 per interface in one fib6 node), which grows with the links up: a cost
    // of this test's fresh ports, not of vxcd (real ports are up before VXCs use them).
    assert!(
        ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]),
        "cannot turn IPv6 off in the test namespace"
    );
    // 2 veth pairs per VXC: every VXC joins two pair ends, so the host holds 4 links per VXC.
    let started = Instant::now();
    veth_pairs(&ns, "s", 2 * vxcs);
    println!(
        "{} veth pairs with ip -batch: {:?}",
        2 * vxcs,
        started.elapsed()
    );
    let specs: Vec<VxcSpec> = (0..vxcs)
        .map(|i| {
            untagged(
                &format!("vxc-{i}"),
                100,
                &format!("sa{}", 2 * i),
                &format!("sa{}", 2 * i + 1),
            )
        })
        .collect();
    let (batch_means, statuses) = ns.block_on(move || async move {
        let dp = dp().await;
        let mut batch_means = Vec::new();
        for (b, batch) in specs.chunks(BATCH).enumerate() {
            let t0 = Instant::now();
            for spec in batch {
                let report = dp
                    .apply(spec)
                    .await
                    .unwrap_or_else(|e| panic!("apply {}: {e}", spec.id));
                assert!(!report.is_noop(), "apply {} created nothing", spec.id);
            }
            let mean = t0.elapsed() / batch.len() as u32;
            // Printed as it goes: with a quadratic apply the last batches take long.
            println!(
                "apply VXCs {}..{}: mean {mean:?} per apply",
                b * BATCH + 1,
                b * BATCH + batch.len()
            );
            batch_means.push(mean);
        }
        // Re-applying is read-only (nothing to change): the reads alone, for the first and
        // the last VXCs made.
        let n = specs.len();
        for (what, batch) in [("first", &specs[..BATCH]), ("last", &specs[n - BATCH..])] {
            let t0 = Instant::now();
            for spec in batch {
                let report = dp.apply(spec).await.expect("re-apply");
                assert!(report.is_noop(), "re-apply changed {}: {report:?}", spec.id);
            }
            println!(
                "re-apply (no-op) of the {what} {BATCH} VXCs: mean {:?} per apply",
                t0.elapsed() / BATCH as u32
            );
        }
        let obs = dp.observe().await.expect("observe");
        let plan = Dataplane::plan(&specs, &obs);
        let statuses: Vec<(String, VxcStatus)> =
            plan.vxcs.into_iter().map(|v| (v.id, v.status)).collect();
        (batch_means, statuses)
    });
    let not_ok: Vec<&(String, VxcStatus)> = statuses
        .iter()
        .filter(|(_, s)| *s != VxcStatus::Ok)
        .take(5)
        .collect();
    assert!(not_ok.is_empty(), "VXCs not right after apply: {not_ok:?}");
    assert_eq!(statuses.len(), vxcs);
    if let (Some(first), Some(last)) = (batch_means.first(), batch_means.last()) {
        println!(
            "apply with {} links on the host: first batch {first:?}, last batch {last:?} per apply (last/first {:.2})",
            4 * vxcs,
            last.as_secs_f64() / first.as_secs_f64()
        );
    }
}

#[test]
fn observe_vxc_reads_only_the_objects_of_its_vxc() {
    require_root();
    let ns = Netns::new("vxdp-scope");
    // The VXC's ports are va0 and va1; everything else is unrelated: 100 veth pairs, some with
    // qdiscs and filters, and a vxcd-owned orphan link.
    veth_pairs(&ns, "v", 2);
    veth_pairs(&ns, "u", 100);
    for i in 0..10 {
        let dev = format!("ua{i}");
        ns.tc(&[
            "qdisc", "add", "dev", &dev, "root", "handle", "7863:", "tbf", "rate", "10mbit",
            "burst", "32k", "latency", "10ms",
        ]);
        ns.tc(&["qdisc", "add", "dev", &dev, "ingress"]);
        ns.tc(&[
            "filter", "add", "dev", &dev, "parent", "ffff:", "prio", "10", "protocol", "all",
            "u32", "match", "u32", "0", "0", "classid", "1:1",
        ]);
    }
    ns.ip(&[
        "link", "add", "o1", "group", "30819", "type", "veth", "peer", "name", "o2",
    ]);
    ns.ip(&["link", "set", "o1", "alias", "vxcd:gone:a"]);
    let spec = untagged("vxc-scope", 100, "va0", "va1");
    let tagged = tagged_spec(&spec);
    let s = spec.clone();
    let t = tagged.clone();
    let (full, scoped, scoped_tagged) = ns.block_on(move || async move {
        let dp = dp().await;
        dp.apply(&s).await.expect("apply");
        let full = dp.observe().await.expect("observe");
        let scoped = dp.observe_vxc(&s).await.expect("observe_vxc");
        let scoped_tagged = dp.observe_vxc(&t).await.expect("observe_vxc tagged");
        (full, scoped, scoped_tagged)
    });
    let ends = [ns.ifindex("va0"), ns.ifindex("va1")];
    assert!(full.is_complete() && !scoped.is_complete());
    assert!(full.links.len() > 200, "{} links", full.links.len());
    let mut names: Vec<&str> = scoped.links.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["va0", "va1"], "observe_vxc read other links");
    let mut roots: Vec<u32> = scoped.root_qdiscs.keys().copied().collect();
    roots.sort_unstable();
    assert_eq!(roots, ends, "root qdiscs read: {:?}", scoped.root_qdiscs);
    assert!(scoped
        .root_qdiscs
        .values()
        .all(|q| q.kind == "tbf" && q.is_ours() && q.tbf.is_some()));
    let mut ingress: Vec<u32> = scoped.ingress.iter().copied().collect();
    ingress.sort_unstable();
    assert_eq!(ingress, ends, "ingress qdiscs read");
    let mut filters: Vec<u32> = scoped.filters.keys().copied().collect();
    filters.sort_unstable();
    assert_eq!(filters, ends, "filters read");
    for (i, index) in ends.iter().enumerate() {
        let pipe = scoped.filters[index].ours.as_ref().expect("pipe filter");
        assert_eq!(pipe.redirect_to, Some(ends[1 - i]));
        assert_eq!(scoped.filters[index], full.filters[index], "filters differ");
        assert_eq!(scoped.root_qdiscs[index], full.root_qdiscs[index]);
    }
    // The partial snapshot judges its VXC as the full one does, and shows no orphans.
    let plan = Dataplane::plan(std::slice::from_ref(&spec), &scoped);
    assert_eq!(plan.status("vxc-scope"), Some(&VxcStatus::Ok));
    assert!(plan.orphans.is_empty(), "{:?}", plan.orphans);
    let full_plan = Dataplane::plan(std::slice::from_ref(&spec), &full);
    assert_eq!(full_plan.status("vxc-scope"), Some(&VxcStatus::Ok));
    assert!(
        full_plan
            .orphans
            .iter()
            .any(|o| matches!(o, Orphan::Link { name, .. } if name == "o1")),
        "{:?}",
        full_plan.orphans
    );
    // A tagged end: its parent is read, its (absent) subinterface asked for by name.
    let mut names: Vec<&str> = scoped_tagged
        .links
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["va0", "va1"]);
    let plan = Dataplane::plan(std::slice::from_ref(&tagged), &scoped_tagged);
    match plan.status("vxc-scope") {
        Some(VxcStatus::Drift(d)) => assert!(
            d.contains(&Discrepancy::Missing {
                object: "link va1.200 (VLAN 200 on va1)".into()
            }),
            "{d:?}"
        ),
        other => panic!("expected drift, got {other:?}"),
    }
}

fn tagged_spec(spec: &VxcSpec) -> VxcSpec {
    let mut tagged = spec.clone();
    tagged.b.vlan = Some(200);
    tagged
}
