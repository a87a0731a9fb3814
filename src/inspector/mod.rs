//! The inspector: passive capture and classification of every frame on each port interface,
//! and active verification of a VXC with probe frames.
//!
//! # Passive inspection
//! [`Inspector::start`] opens one AF_PACKET socket with a TPACKET_V3 ring per port interface
//! (the parent interface, never a VLAN subinterface: there frames are untagged in both
//! directions; never `any`: no tag there) and runs one capture thread per port. The kernel
//! removes the outer tag of received frames, and of sent frames on parents with VLAN TX
//! offload, and passes it in the ring header; [`frame::parse`] puts it back in front of the
//! tags still inline (etherparse slices), so a QinQ frame yields its 0x88a8 outer tag and
//! its 0x8100 inner tag. Direction comes from `sll_pkttype` (`PACKET_OUTGOING` = sent by this
//! host = [`Direction::Tx`]; everything else = received from the wire = [`Direction::Rx`]).
//!
//! Each frame is classified against the port's [`PortExpect`]:
//! - untagged, and the port has an untagged VXC: that end's counters;
//! - 0x8100 tag whose VLAN a VXC end uses on this port: that end's counters;
//! - otherwise a violation, counted per (VLAN or untagged, direction) with kind, count, last
//!   seen, last TPID and inner VLAN: [`ViolationKind::UnknownVlan`],
//!   [`ViolationKind::UntaggedOnTaggedPort`], [`ViolationKind::TaggedOnUntaggedPort`] (an
//!   untagged end forwards the whole port, so these frames do cross the pipe; they are
//!   reported, not counted as the end's traffic), [`ViolationKind::UnexpectedTpid`] (an outer
//!   tag other than 0x8100: the 802.1Q subinterfaces never receive it);
//! - probes (EtherType 0x88B5 with [`probe::PROBE_MAGIC`]) are counted apart, never as
//!   customer traffic.
//!
//! The first frame of an egress (Tx) violation is logged as an error: vxcd itself sent a
//! wrong tag. Bytes are the frame's length on the wire without FCS, tag included.
//! Counters are cumulative since the port's capture started: [`Inspector::update`] keeps the
//! counters of ends that stay (same VXC, side and VLAN) and every violation cell.
//!
//! Integration: `start`/`update` open sockets in the calling thread's network namespace;
//! `snapshot` is cheap and lock-free for the capture threads; [`verify`] blocks for up to
//! [`VerifyConfig::timeout`] per direction (run it on a blocking thread). The config knobs are
//! [`InspectConfig`] (inspection off = do not start an `Inspector`).
//!
//! Hot path: the ring hands frames over a block at a time (no copy, no syscall per frame);
//! a one-instruction BPF filter returns the snap length so the kernel copies only the
//! headers; parsing is etherparse's zero-copy slices; counters are relaxed atomics in memory
//! allocated when the port is set up (a violation cell for every VLAN and direction, so no
//! allocation per frame); the classification table is an `Arc` that the capture thread
//! re-reads only when a generation counter (one atomic load per block) says
//! [`Inspector::update`] published a new one. No lock is taken per frame or per block.
//!
//! # Active verification
//! [`verify`] sends a probe into each end of a VXC through the receive path of the end's
//! port (see [`probe`] for why a tap with a `mirred ingress` redirect, and its limits) and
//! captures on every port interface it is given: the direction passes when the probe leaves
//! the other end's port exactly once with the expected encapsulation (0x8100 + that end's
//! VLAN and nothing inside it, or untagged) and leaves no other port. A VXC with an end on a
//! peer is proved in its local half: a probe into the local end must leave the tunnel device
//! and then the uplink encapsulated with the VXC's VNI towards the peer ([`vxlan`]); a probe
//! into the tunnel device's receive path must leave the local port with the local end's tag.
//! The peer's inspector counts the probes it hands to its customer per end (`probes_tx`).

pub mod frame;
pub mod probe;
pub mod ring;
pub mod vxlan;

mod capture;
mod classify;
mod expect;
mod verify;
mod view;

use serde::{Deserialize, Serialize};

pub use capture::Inspector;
#[cfg(test)]
use classify::*;
pub use expect::{EndRef, Expectation, PortExpect};
pub use frame::Tag;
pub use ring::{Direction, RingConfig};
pub use verify::{
    verify, CoreSighting, DirectionResult, Sighting, VerifyConfig, VerifyEnd, VerifyResult,
    VerifySpec, VerifyTunnel,
};
pub use view::{EndView, InspectView, PortView, ViolationKind, ViolationView};

/// Errors of the inspector, each naming the object.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspector: snap length {0} is below 64 bytes (the headers would be cut)")]
    SnapLen(u32),
    #[error("inspector: port {port} ({interface}): {cause}")]
    Port {
        port: String,
        interface: String,
        cause: String,
    },
    #[error("verify {vxc}: {cause}")]
    Verify { vxc: String, cause: String },
}

/// Settings the integrator exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectConfig {
    /// Bytes captured per frame (headers only; counters use the full length).
    pub snap_len: u32,
    /// Only these ports (by port name); empty = every port in the expectation.
    pub ports: Vec<String>,
    /// Ring size per port in bytes (whole blocks of 1 MiB, at least 2): the kernel memory
    /// each port costs, and the slack while the capture thread is not scheduled (a
    /// minimum-size frame takes about 150 bytes of ring: 4 MiB hold roughly 25 000).
    pub ring_bytes: u32,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            snap_len: 128,
            ports: Vec::new(),
            ring_bytes: 4 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::dataplane::{Side, VxcSpec};
    use ring::{MetaTag, RawFrame};

    fn table_for(port: &PortExpect) -> PortTable {
        build_table(port, &[]).0
    }

    fn raw(data: &[u8], meta: Option<MetaTag>, direction: Direction) -> RawFrame<'_> {
        RawFrame {
            direction,
            meta_tag: meta,
            wire_len: data.len() as u32,
            ts_ns: 1,
            data,
        }
    }

    fn eth(inline_tags: &[(u16, u16)], ether_type: u16) -> Vec<u8> {
        let mut f = vec![2u8; 12];
        for (tpid, vid) in inline_tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ether_type.to_be_bytes());
        f.resize(60, 0);
        f
    }

    fn end_ref(vxc: &str) -> EndRef {
        EndRef {
            vxc: vxc.into(),
            side: Side::A,
        }
    }

    #[test]
    fn inspector_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Inspector>();
    }

    #[test]
    fn frames_the_host_sends_are_the_hosts_not_vxcds_egress() {
        let violations = |c: &PortCounters| -> u64 {
            c.violations
                .iter()
                .map(|v| v.count.load(Ordering::Relaxed))
                .sum()
        };
        // A port with no VXC end: whatever leaves it is the host's (MLD, ND, ...).
        let empty = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![],
        };
        let counters = PortCounters::new("i");
        let mld = eth(&[], 0x86dd);
        classify(
            &table_for(&empty),
            &counters,
            &raw(&mld, None, Direction::Tx),
            1,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 0);
        // Received, the same frame is the customer's and a violation.
        classify(
            &table_for(&empty),
            &counters,
            &raw(&mld, None, Direction::Rx),
            2,
        );
        assert_eq!(violations(&counters), 1);

        // A port with an end: a frame from the port's own MAC is the host's; one with another
        // source (the pipe forwards the customers' frames) and a wrong tag is vxcd's egress.
        let tagged = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![(200, end_ref("v1"))],
        };
        let mut counters = PortCounters::new("i");
        counters.own_mac = Some([2; 6]);
        let from_host = eth(&[], 0x86dd); // eth() puts 02:02:02:02:02:02 as the source
        classify(
            &table_for(&tagged),
            &counters,
            &raw(&from_host, None, Direction::Tx),
            3,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 0);
        let mut from_pipe = eth(&[], 0x0800);
        from_pipe[6..12].copy_from_slice(&[0x0a; 6]);
        classify(
            &table_for(&tagged),
            &counters,
            &raw(&from_pipe, None, Direction::Tx),
            4,
        );
        assert_eq!(counters.host_frames.load(Ordering::Relaxed), 1);
        assert_eq!(violations(&counters), 1);
    }

    #[test]
    fn classify_counts_ends_with_tag_bytes_and_files_violations() {
        let tagged = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: None,
            vlans: vec![(200, end_ref("v1"))],
        };
        let table = table_for(&tagged);
        let counters = PortCounters::new("i");
        // Tag 200 as metadata (received): 60 bytes of data + the 4 tag bytes on the wire.
        let data = eth(&[], 0x0800);
        let meta = Some(MetaTag {
            tpid: 0x8100,
            tci: 200,
        });
        classify(&table, &counters, &raw(&data, meta, Direction::Rx), 1);
        // Tag 200 inline (sent without offload): 60 bytes with the tag.
        let inline = eth(&[(0x8100, 200)], 0x0800);
        classify(&table, &counters, &raw(&inline, None, Direction::Tx), 2);
        let end = &table.ends[0];
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(end.rx_bytes.load(Ordering::Relaxed), 64);
        assert_eq!(end.tx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(end.tx_bytes.load(Ordering::Relaxed), 60);

        // S-tag 200 with C-tag 7: not the 802.1Q subinterface's frame.
        let qinq = eth(&[(0x8100, 7)], 0x0800);
        let s_meta = Some(MetaTag {
            tpid: 0x88a8,
            tci: 200,
        });
        classify(&table, &counters, &raw(&qinq, s_meta, Direction::Rx), 3);
        let cell = &counters.violations[200];
        assert_eq!(cell.count.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)),
            Some(ViolationKind::UnexpectedTpid)
        );
        assert_eq!(cell.inner.load(Ordering::Relaxed), 0x1_0000 | 7);
        assert_eq!(cell.last_seen_ns.load(Ordering::Relaxed), 3);

        // Untagged on this tagged port, sent: the Tx half of the cells.
        classify(&table, &counters, &raw(&data, None, Direction::Tx), 4);
        let cell = &counters.violations[SLOTS + UNTAGGED_SLOT];
        assert_eq!(cell.count.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(cell.kind.load(Ordering::Relaxed)),
            Some(ViolationKind::UntaggedOnTaggedPort)
        );

        // A probe tagged 200 counts as a probe only.
        let mark = probe::ProbeMark {
            vxc_hash: 1,
            nonce: 2,
            entry: 0,
        };
        let p = probe::build(Some(200), mark);
        classify(&table, &counters, &raw(&p, None, Direction::Rx), 5);
        assert_eq!(counters.probes[0].load(Ordering::Relaxed), 1);
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);

        // Runts are counted apart.
        classify(&table, &counters, &raw(&data[..8], None, Direction::Rx), 6);
        assert_eq!(counters.unparsed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn untagged_port_takes_untagged_frames_and_flags_tagged_ones() {
        let plain = PortExpect {
            port: "p".into(),
            interface: "i".into(),
            untagged: Some(end_ref("v1")),
            vlans: vec![],
        };
        let table = table_for(&plain);
        let counters = PortCounters::new("i");
        let data = eth(&[], 0x0800);
        classify(&table, &counters, &raw(&data, None, Direction::Rx), 1);
        let meta = Some(MetaTag {
            tpid: 0x8100,
            tci: 5,
        });
        classify(&table, &counters, &raw(&data, meta, Direction::Rx), 2);
        let end = table.untagged.as_ref().expect("untagged end");
        assert_eq!(end.rx_frames.load(Ordering::Relaxed), 1);
        assert_eq!(
            ViolationKind::from_code(counters.violations[5].kind.load(Ordering::Relaxed)),
            Some(ViolationKind::TaggedOnUntaggedPort)
        );
    }

    #[test]
    fn expectation_from_vxcs_maps_ends_to_ports() {
        let vxc = VxcSpec {
            id: "v".into(),
            rate_mbps: 10,
            a: crate::dataplane::EndSpec {
                port: "p1".into(),
                interface: "eth1".into(),
                vlan: Some(200),
                tunnel: None,
            },
            b: crate::dataplane::EndSpec {
                port: "p2".into(),
                interface: "eth2".into(),
                vlan: None,
                tunnel: None,
            },
            shutdown: false,
        };
        let exp = Expectation::from_vxcs(&[("p3".into(), "eth3".into())], &[vxc]);
        assert_eq!(exp.ports.len(), 3);
        let p1 = exp.ports.iter().find(|p| p.port == "p1").expect("p1");
        assert_eq!(
            p1.vlans,
            vec![(
                200,
                EndRef {
                    vxc: "v".into(),
                    side: Side::A
                }
            )]
        );
        let p2 = exp.ports.iter().find(|p| p.port == "p2").expect("p2");
        assert_eq!(
            p2.untagged,
            Some(EndRef {
                vxc: "v".into(),
                side: Side::B
            })
        );
        let p3 = exp.ports.iter().find(|p| p.port == "p3").expect("p3");
        assert!(p3.untagged.is_none() && p3.vlans.is_empty());
    }
}
