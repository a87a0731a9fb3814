//! The lab's own acceptance: in the cloud kernel a VLAN crosses a veth tagged; on this machine's
//! kernel a VLAN cannot even be created (so the host tier is no VLAN coverage).

mod lab;

use lab::net::{veth, Netns};
use std::time::Duration;

fn icmp_lines(lines: &[String], kind: &str) -> usize {
    lines.iter().filter(|l| l.contains(kind)).count()
}

lab::lab_tests! {
    /// Two hosts, VLAN 300 on each end of a veth, a ping across; tcpdump on the far parent
    /// interface sees the echo requests and replies as 802.1Q frames tagged 300.
    fn vlan_300_ping_is_tagged_on_the_wire() {
        let near = Netns::new("near");
        let far = Netns::new("far");
        veth(&near, "eth0", &far, "eth0");
        near.add_vlan("eth0", 300, "10.30.0.1/24");
        far.add_vlan("eth0", 300, "10.30.0.2/24");

        let capture = far.capture("eth0", "icmp or vlan");
        near.assert_ping("10.30.0.2", 3);
        let done = |l: &[String]| icmp_lines(l, "ICMP echo request") >= 3 && icmp_lines(l, "ICMP echo reply") >= 3;
        capture.wait_for(Duration::from_secs(20), done);
        let lines = capture.stop();

        let icmp: Vec<&String> = lines.iter().filter(|l| l.contains("ICMP echo")).collect();
        assert!(
            icmp.len() >= 6,
            "expected 3 echo requests and 3 replies on far eth0, tcpdump printed:\n{}",
            lines.join("\n")
        );
        for line in &icmp {
            assert!(
                line.contains("ethertype 802.1Q (0x8100)") && line.contains("vlan 300,"),
                "ICMP frame on far eth0 not tagged with VLAN 300: {line}\nall lines:\n{}",
                lines.join("\n")
            );
        }
    }

    /// The guest kernel has what vxcd programs: dummy links, TBF and HTB qdiscs, an ingress
    /// qdisc with u32 + mirred and matchall + vlan actions, ifb.
    fn guest_kernel_has_the_tc_pieces_vxcd_uses() {
        let ns = Netns::new("tc");
        ns.ip("link add d0 up type dummy");
        ns.ip("link add d1 up type dummy");
        ns.ip("link add ifb0 type ifb");
        ns.tc("qdisc add dev d0 root tbf rate 10mbit burst 20kb latency 50ms");
        ns.tc("qdisc add dev d1 root handle 1: htb default 10");
        ns.tc("class add dev d1 parent 1: classid 1:10 htb rate 5mbit");
        ns.tc("qdisc add dev d0 ingress");
        ns.tc("filter add dev d0 parent ffff: prio 1 protocol all u32 match u32 0 0 action mirred egress redirect dev d1");
        ns.tc("filter add dev d0 parent ffff: prio 2 protocol all matchall action vlan push id 42 action gact pass");
        let filters = ns.tc("filter show dev d0 ingress");
        assert!(filters.contains("mirred (Egress Redirect to device d1)"), "u32+mirred filter missing:\n{filters}");
        assert!(filters.contains("vlan  push id 42") || filters.contains("vlan push id 42"), "matchall+vlan filter missing:\n{filters}");
        let qdiscs = ns.tc("qdisc show");
        assert!(qdiscs.contains("qdisc tbf") && qdiscs.contains("qdisc htb"), "TBF or HTB missing:\n{qdiscs}");
    }
}

/// This machine's kernel (the host tier) has no 802.1Q: creating a VLAN link must fail. If it
/// ever succeeds, the host tier may start covering VLANs and this lab's premise needs a look.
#[test]
fn host_kernel_refuses_vlan_links() {
    let ns = Netns::new("novlan");
    ns.ip("link add v0 type veth peer name v1");
    let attempt = ns.try_ip("link add link v0 name v0.300 type vlan id 300");
    assert!(
        attempt.is_err(),
        "this kernel created a VLAN subinterface; the host tier now has 802.1Q: {attempt:?}"
    );
}

/// The topology helpers also serve the host tier (without VLANs): two hosts, a ping across,
/// tcpdump -e in the far one sees untagged IPv4 frames.
#[test]
fn host_helpers_ping_and_capture_across_veth() {
    let near = Netns::new("hnear");
    let far = Netns::new("hfar");
    veth(&near, "eth0", &far, "eth0");
    near.addr("eth0", "10.31.0.1/24");
    far.addr("eth0", "10.31.0.2/24");
    let capture = far.capture("eth0", "icmp");
    near.assert_ping("10.31.0.2", 2);
    capture.wait_for(Duration::from_secs(20), |l| {
        icmp_lines(l, "ICMP echo reply") >= 2
    });
    let lines = capture.stop();
    assert!(
        icmp_lines(&lines, "ICMP echo request") >= 2
            && lines.iter().all(|l| l.contains("ethertype IPv4 (0x0800)")),
        "expected 2 untagged echo requests on far eth0, tcpdump printed:\n{}",
        lines.join("\n")
    );
}
