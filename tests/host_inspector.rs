//! Host tests of the inspector on this kernel, on veth pairs in namespaces the tests create.
//! This kernel has no 802.1Q subinterfaces, but tagged frames still cross veth (whose VLAN TX
//! offload turns the tag into metadata), so tag capture and classification are tested here;
//! verification is tested through a real vxcd pipe between untagged ends.

mod common;

use std::time::{Duration, Instant};

use common::{require_root, veth, veth_local, Netns};
use etherparse::{PacketBuilder, VlanId};
use vxcd::dataplane::{Dataplane, DataplaneConfig, EndSpec, Side, VxcSpec};
use vxcd::inspector::ring::{Direction, MetaTag, Ring, RingConfig, Sender};
use vxcd::inspector::{
    frame, probe, verify, EndRef, Expectation, InspectConfig, InspectView, Inspector, PortExpect,
    Tag, VerifyConfig, VerifyEnd, VerifySpec, ViolationKind,
};

/// A namespace with IPv6 off (no ND/MLD frames to pollute exact counts) and veth x0 <-> x1.
fn pair() -> Netns {
    require_root();
    let ns = Netns::new("vxin");
    assert!(
        ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            && ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]),
        "cannot disable IPv6 in {} (sysctl missing?)",
        ns.name
    );
    veth_local(&ns, "x0", "x1");
    ns
}

const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn vid(v: u16) -> VlanId {
    VlanId::try_new(v).expect("vlan id")
}

fn udp(step: etherparse::PacketBuilderStep<etherparse::IpHeaders>) -> Vec<u8> {
    let b = step.udp(1000, 2000);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 18]).expect("building frame");
    out
}

fn single(v: u16) -> Vec<u8> {
    udp(PacketBuilder::ethernet2(SRC, DST).single_vlan(vid(v)).ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        64,
    ))
}

fn qinq(outer: u16, inner: u16) -> Vec<u8> {
    udp(PacketBuilder::ethernet2(SRC, DST)
        .double_vlan(vid(outer), vid(inner))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64))
}

fn untagged() -> Vec<u8> {
    udp(PacketBuilder::ethernet2(SRC, DST).ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64))
}

/// What a ring saw of one test frame.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    direction: Direction,
    meta: Option<MetaTag>,
    outer: Option<Tag>,
    inner: Option<Tag>,
}

/// Reads `ring` until `want` UDP test frames arrived or 5 s passed.
fn collect(ring: &mut Ring, want: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while seen.len() < want && Instant::now() < deadline {
        ring.next_block(50, |raw| {
            if raw.data.len() < 12 || raw.data[6..12] != SRC {
                return;
            }
            let t = frame::parse(raw.data, raw.meta_tag).expect("parse");
            seen.push(Seen {
                direction: raw.direction,
                meta: raw.meta_tag,
                outer: t.outer,
                inner: t.inner,
            });
        })
        .expect("ring");
    }
    seen
}

fn q(v: u16) -> Option<Tag> {
    Some(Tag {
        tpid: 0x8100,
        vid: v,
        pcp: 0,
    })
}

/// Acceptance 4: 0x8100, 0x88a8+0x8100 and untagged frames sent on x0 are reported with
/// their tags on x1 (received; veth delivers the outer tag as metadata) and on x0 (sent).
#[test]
fn tags_of_single_qinq_and_untagged_frames_reach_the_capture() {
    let ns = pair();
    let (rx_seen, tx_seen) = ns.run(|| {
        let cfg = RingConfig {
            block_timeout_ms: 2,
            ..RingConfig::default()
        };
        let mut rx = Ring::open("x1", cfg).expect("ring on x1");
        let mut tx = Ring::open("x0", cfg).expect("ring on x0");
        let sender = Sender::open("x0").expect("sender");
        for f in [single(200), qinq(300, 20), untagged()] {
            sender.send(&f).expect("send");
        }
        (collect(&mut rx, 3), collect(&mut tx, 3))
    });
    let s_tag = Some(Tag {
        tpid: 0x88a8,
        vid: 300,
        pcp: 0,
    });
    let outer_inner: Vec<_> = rx_seen
        .iter()
        .map(|s| (s.direction, s.outer, s.inner))
        .collect();
    assert_eq!(
        outer_inner,
        vec![
            (Direction::Rx, q(200), None),
            (Direction::Rx, s_tag, q(20)),
            (Direction::Rx, None, None),
        ],
        "receiver side of x0->x1: {rx_seen:?}"
    );
    // The point of the ring header: the outer tag was not in the data any more.
    assert_eq!(
        rx_seen[0].meta,
        Some(MetaTag {
            tpid: 0x8100,
            tci: 200
        }),
        "the receiver got the 0x8100 tag from the ring header: {rx_seen:?}"
    );
    assert_eq!(
        rx_seen[1].meta,
        Some(MetaTag {
            tpid: 0x88a8,
            tci: 300
        }),
        "the receiver got the 0x88a8 tag from the ring header: {rx_seen:?}"
    );
    let outer_inner: Vec<_> = tx_seen
        .iter()
        .map(|s| (s.direction, s.outer, s.inner))
        .collect();
    assert_eq!(
        outer_inner,
        vec![
            (Direction::Tx, q(200), None),
            (Direction::Tx, s_tag, q(20)),
            (Direction::Tx, None, None),
        ],
        "sender side on x0: {tx_seen:?}"
    );
}

fn end(vxc: &str, side: Side) -> EndRef {
    EndRef {
        vxc: vxc.into(),
        side,
    }
}

/// Polls the snapshot until `done` holds or 5 s pass; returns the last snapshot.
fn wait_view(inspector: &Inspector, done: impl Fn(&InspectView) -> bool) -> InspectView {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = inspector.snapshot();
        if done(&view) || Instant::now() >= deadline {
            return view;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port<'a>(view: &'a InspectView, name: &str) -> &'a vxcd::inspector::PortView {
    view.ports
        .iter()
        .find(|p| p.port == name)
        .unwrap_or_else(|| panic!("no port {name} in {view:#?}"))
}

fn violation(
    view: &InspectView,
    port_name: &str,
    kind: ViolationKind,
    vlan: Option<u16>,
    direction: Direction,
) -> u64 {
    port(view, port_name)
        .violations
        .iter()
        .filter(|v| v.kind == kind && v.vlan == vlan && v.direction == direction)
        .map(|v| v.count)
        .sum()
}

fn end_counts(view: &InspectView, port_name: &str, vxc: &str) -> (u64, u64, u64, u64) {
    let e = port(view, port_name)
        .ends
        .iter()
        .find(|e| e.vxc == vxc)
        .unwrap_or_else(|| panic!("no end of {vxc} on {port_name}: {view:#?}"));
    (e.rx_frames, e.rx_bytes, e.tx_frames, e.tx_bytes)
}

/// x1 is a tagged port (VLAN 200 -> vxc-1 A, 201 -> vxc-2 B); x0 is an untagged port
/// (vxc-3 A). Frames sent x0 -> x1 are counted per end and direction on both sides; the
/// wrong ones are violations with kind, VLAN, direction and count; probes are not customer
/// traffic; `update` moves an unknown VLAN to a new end and keeps the other counters.
#[test]
fn frames_are_counted_per_end_and_violations_per_port_and_direction() {
    let ns = pair();
    let expectation = Expectation {
        ports: vec![
            PortExpect {
                port: "tagged".into(),
                interface: "x1".into(),
                untagged: None,
                vlans: vec![(200, end("vxc-1", Side::A)), (201, end("vxc-2", Side::B))],
            },
            PortExpect {
                port: "plain".into(),
                interface: "x0".into(),
                untagged: Some(end("vxc-3", Side::A)),
                vlans: vec![],
            },
        ],
    };
    let exp = expectation.clone();
    let inspector = ns.run(move || Inspector::start(InspectConfig::default(), exp).expect("start"));
    let len200 = single(200).len() as u64; // on the wire: with its tag
    let len_untagged = untagged().len() as u64;
    ns.run(move || {
        let s = Sender::open("x0").expect("sender");
        for _ in 0..3 {
            s.send(&single(200)).expect("send");
        }
        for _ in 0..2 {
            s.send(&single(201)).expect("send");
        }
        s.send(&single(999)).expect("send");
        s.send(&untagged()).expect("send");
        s.send(&untagged()).expect("send");
        let mark = probe::ProbeMark {
            vxc_hash: probe::vxc_hash("vxc-1"),
            nonce: 1,
            entry: 0,
        };
        s.send(&probe::build(Some(200), mark)).expect("send probe");
    });
    let view = wait_view(&inspector, |v| {
        port(v, "tagged").probes_rx == 1
            && violation(
                v,
                "tagged",
                ViolationKind::UntaggedOnTaggedPort,
                None,
                Direction::Rx,
            ) == 2
            && port(v, "plain").probes_tx == 1
    });
    let json = serde_json::to_string_pretty(&view).expect("view serializes");
    assert_eq!(
        end_counts(&view, "tagged", "vxc-1"),
        (3, 3 * len200, 0, 0),
        "{json}"
    );
    assert_eq!(
        end_counts(&view, "tagged", "vxc-2"),
        (2, 2 * len200, 0, 0),
        "{json}"
    );
    assert_eq!(
        violation(
            &view,
            "tagged",
            ViolationKind::UnknownVlan,
            Some(999),
            Direction::Rx
        ),
        1,
        "{json}"
    );
    assert_eq!(
        violation(
            &view,
            "tagged",
            ViolationKind::UntaggedOnTaggedPort,
            None,
            Direction::Rx
        ),
        2,
        "{json}"
    );
    assert_eq!(port(&view, "tagged").violations.len(), 2, "{json}");
    assert_eq!(port(&view, "tagged").probes_rx, 1, "{json}");
    // The sending side: an untagged port that sent tagged frames (egress violations).
    assert_eq!(
        end_counts(&view, "plain", "vxc-3"),
        (0, 0, 2, 2 * len_untagged),
        "{json}"
    );
    for (vlan, n) in [(200, 3), (201, 2), (999, 1)] {
        assert_eq!(
            violation(
                &view,
                "plain",
                ViolationKind::TaggedOnUntaggedPort,
                Some(vlan),
                Direction::Tx
            ),
            n,
            "VLAN {vlan} sent on the untagged port: {json}"
        );
    }
    assert_eq!(port(&view, "plain").probes_tx, 1, "{json}");
    assert!(
        port(&view, "tagged")
            .violations
            .iter()
            .all(|v| !v.last_seen.is_empty()),
        "{json}"
    );

    // VLAN 999 becomes vxc-9's: counted there from now on; vxc-1 keeps its counts.
    let mut next = expectation;
    next.ports[0].vlans.push((999, end("vxc-9", Side::B)));
    let inspector = ns.run(move || {
        inspector.update(next);
        inspector
    });
    ns.run(|| {
        let s = Sender::open("x0").expect("sender");
        s.send(&single(999)).expect("send");
        s.send(&single(200)).expect("send");
    });
    let view = wait_view(&inspector, |v| end_counts(v, "tagged", "vxc-1").0 == 4);
    let json = serde_json::to_string_pretty(&view).expect("json");
    assert_eq!(end_counts(&view, "tagged", "vxc-1").0, 4, "{json}");
    assert_eq!(end_counts(&view, "tagged", "vxc-9").0, 1, "{json}");
    assert_eq!(
        violation(
            &view,
            "tagged",
            ViolationKind::UnknownVlan,
            Some(999),
            Direction::Rx
        ),
        1,
        "the old violation stays, the new frame is vxc-9's: {json}"
    );
    inspector.stop();
}

/// QinQ frames on a tagged port are an unexpected-TPID violation that names the S-tag VLAN
/// and the inner VLAN.
#[test]
fn qinq_frame_on_a_dot1q_port_reports_outer_and_inner_vlan() {
    let ns = pair();
    let exp = Expectation {
        ports: vec![PortExpect {
            port: "tagged".into(),
            interface: "x1".into(),
            untagged: None,
            vlans: vec![(300, end("vxc-1", Side::A))],
        }],
    };
    let inspector = ns.run(move || Inspector::start(InspectConfig::default(), exp).expect("start"));
    ns.run(|| {
        Sender::open("x0")
            .expect("sender")
            .send(&qinq(300, 20))
            .expect("send")
    });
    let view = wait_view(&inspector, |v| !port(v, "tagged").violations.is_empty());
    let v = &port(&view, "tagged").violations;
    assert_eq!(v.len(), 1, "{view:#?}");
    assert_eq!(
        (
            v[0].kind,
            v[0].vlan,
            v[0].tpid,
            v[0].inner_vlan,
            v[0].direction,
            v[0].count
        ),
        (
            ViolationKind::UnexpectedTpid,
            Some(300),
            Some(0x88a8),
            Some(20),
            Direction::Rx,
            1
        ),
        "{view:#?}"
    );
    assert_eq!(end_counts(&view, "tagged", "vxc-1"), (0, 0, 0, 0));
}

/// A port whose interface does not exist is reported, not fatal.
#[test]
fn missing_interface_is_reported_in_the_view() {
    let ns = pair();
    let exp = Expectation {
        ports: vec![PortExpect {
            port: "ghost".into(),
            interface: "nope0".into(),
            untagged: None,
            vlans: vec![],
        }],
    };
    let view = ns.run(move || {
        Inspector::start(InspectConfig::default(), exp)
            .expect("start")
            .snapshot()
    });
    let p = port(&view, "ghost");
    assert!(!p.capturing);
    let error = p.error.clone().unwrap_or_default();
    assert!(
        error.contains("nope0"),
        "error names the interface: {error}"
    );
}

// --- verification through a real vxcd pipe -------------------------------------------------

/// edge namespace with ports e1, e2, e3 (veth peers in a far namespace, IPv6 off).
struct Edge {
    edge: Netns,
    _far: Netns,
}

fn edge() -> Edge {
    require_root();
    let edge = Netns::new("vxin-edge");
    let far = Netns::new("vxin-far");
    for ns in [&edge, &far] {
        assert!(
            ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]),
            "cannot disable IPv6 in {}",
            ns.name
        );
    }
    veth(&far, "c1", &edge, "e1");
    veth(&far, "c2", &edge, "e2");
    veth(&far, "c3", &edge, "e3");
    Edge { edge, _far: far }
}

fn pipe(edge: &Netns, a: &str, b: &str) {
    let spec = common::untagged_vxc("vxc-v", 100, a, b);
    edge.block_on(move || async move {
        Dataplane::connect(DataplaneConfig::default())
            .await
            .expect("connect")
            .apply(&spec)
            .await
            .expect("apply")
    });
}

fn vend(interface: &str, vlan: Option<u16>) -> VerifyEnd {
    VerifyEnd {
        port: format!("port-{interface}"),
        interface: interface.into(),
        vlan,
        tunnel: None,
    }
}

fn run_verify(edge: &Netns, spec: VerifySpec) -> vxcd::inspector::VerifyResult {
    edge.run(move || verify(&spec, VerifyConfig::default()).expect("verify runs"))
}

#[test]
fn verify_passes_through_a_real_untagged_pipe_in_both_directions() {
    let t = edge();
    pipe(&t.edge, "e1", "e2");
    let result = run_verify(
        &t.edge,
        VerifySpec {
            vxc: "vxc-v".into(),
            a: vend("e1", None),
            b: vend("e2", None),
            other_ports: vec![("port-e3".into(), "e3".into())],
        },
    );
    let json = serde_json::to_string_pretty(&result).expect("json");
    eprintln!("{json}"); // figures (elapsed_us) for whoever runs it with --nocapture
    assert!(result.pass, "{json}");
    assert_eq!(result.directions.len(), 2, "{json}");
    for d in &result.directions {
        assert!(d.seen && d.entered, "{json}");
        assert_eq!(d.observed_tag, None, "{json}");
        assert_eq!(d.left_on.len(), 1, "{json}");
    }
    assert_eq!(result.directions[0].left_on[0].interface, "e2", "{json}");
    assert_eq!(result.directions[1].left_on[0].interface, "e1", "{json}");
    let links = t.edge.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("vxprobe"),
        "the probe taps must be gone after verify: {links}"
    );
}

/// The pipe is untagged but the spec says the B-End is VLAN 300: both directions fail and
/// name what was observed.
#[test]
fn verify_fails_naming_the_observed_tag() {
    let t = edge();
    pipe(&t.edge, "e1", "e2");
    let result = run_verify(
        &t.edge,
        VerifySpec {
            vxc: "vxc-v".into(),
            a: vend("e1", None),
            b: vend("e2", Some(300)),
            other_ports: vec![],
        },
    );
    let json = serde_json::to_string_pretty(&result).expect("json");
    assert!(!result.pass, "{json}");
    let ab = &result.directions[0];
    assert!(!ab.pass && ab.seen, "{json}");
    assert_eq!(
        (ab.expected_vlan, ab.observed_tag),
        (Some(300), None),
        "{json}"
    );
    assert!(
        ab.detail
            .contains("left port port-e2 untagged instead of VLAN 300"),
        "{json}"
    );
    let ba = &result.directions[1];
    assert!(!ba.pass && ba.seen, "{json}");
    assert_eq!(
        (ba.expected_vlan, ba.observed_tag),
        (None, q(300)),
        "{json}"
    );
    assert!(
        ba.detail
            .contains("VLAN 300 (TPID 0x8100) instead of untagged"),
        "{json}"
    );
}

/// The pipe joins e1 to e3 while the VXC says e1 to e2: the probe into A never leaves B and
/// is reported leaving on e3.
#[test]
fn verify_reports_a_probe_leaving_on_the_wrong_port() {
    let t = edge();
    pipe(&t.edge, "e1", "e3");
    let result = run_verify(
        &t.edge,
        VerifySpec {
            vxc: "vxc-v".into(),
            a: vend("e1", None),
            b: vend("e2", None),
            other_ports: vec![("port-e3".into(), "e3".into())],
        },
    );
    let json = serde_json::to_string_pretty(&result).expect("json");
    let ab = &result.directions[0];
    assert!(!result.pass && !ab.pass && !ab.seen && ab.entered, "{json}");
    assert!(ab.left_on.iter().any(|s| s.interface == "e3"), "{json}");
    assert!(ab.detail.contains("left instead on port-e3"), "{json}");
}

/// Probes sent by verify are counted as probes by a running inspector, not as the VXC's.
#[test]
fn verify_probes_are_not_customer_traffic() {
    let t = edge();
    pipe(&t.edge, "e1", "e2");
    let ports = vec![
        ("port-e1".to_string(), "e1".to_string()),
        ("port-e2".to_string(), "e2".to_string()),
    ];
    let spec = VxcSpec {
        id: "vxc-v".into(),
        rate_mbps: 100,
        a: EndSpec {
            port: "port-e1".into(),
            interface: "e1".into(),
            vlan: None,
            tunnel: None,
        },
        b: EndSpec {
            port: "port-e2".into(),
            interface: "e2".into(),
            vlan: None,
            tunnel: None,
        },
        shutdown: false,
    };
    let exp = Expectation::from_vxcs(&ports, std::slice::from_ref(&spec));
    let inspector = t
        .edge
        .run(move || Inspector::start(InspectConfig::default(), exp).expect("start"));
    let result = run_verify(&t.edge, VerifySpec::from_vxc(&spec, &ports));
    assert!(result.pass, "{result:#?}");
    let view = wait_view(&inspector, |v| {
        port(v, "port-e2").probes_tx >= 1 && port(v, "port-e1").probes_tx >= 1
    });
    let json = serde_json::to_string_pretty(&view).expect("json");
    for p in ["port-e1", "port-e2"] {
        assert!(
            port(&view, p).probes_tx >= 1 && port(&view, p).probes_rx >= 1,
            "{json}"
        );
        assert_eq!(end_counts(&view, p, "vxc-v"), (0, 0, 0, 0), "{json}");
        assert!(port(&view, p).violations.is_empty(), "{json}");
    }
}

/// Why the inspector does not capture with pnet: pnet_datalink 0.35 reads with plain `recv`
/// and no auxdata, so a frame received with an 802.1Q tag arrives without it (the kernel moved
/// the tag to metadata). If this ever fails, pnet learnt to keep tags.
#[test]
fn pnet_datalink_loses_the_received_tag() {
    use pnet::datalink::{self, Channel};
    let ns = pair();
    let ether_types = ns.run(|| {
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == "x1")
            .expect("pnet lists x1");
        let cfg = datalink::Config {
            read_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let Ok(Channel::Ethernet(_tx, mut rx)) = datalink::channel(&iface, cfg) else {
            panic!("pnet channel on x1");
        };
        Sender::open("x0")
            .expect("sender")
            .send(&single(200))
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.is_empty() && Instant::now() < deadline {
            if let Ok(f) = rx.next() {
                if f.len() >= 14 && f[6..12] == SRC {
                    seen.push(u16::from_be_bytes([f[12], f[13]]));
                }
            }
        }
        seen
    });
    assert_eq!(
        ether_types,
        vec![0x0800],
        "expected pnet to see the frame sent with tag 200 as plain IPv4 (tag lost); EtherTypes seen: {ether_types:04x?}"
    );
}
