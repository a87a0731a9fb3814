//! `inspector::frame::parse` against frames etherparse builds.

use etherparse::{PacketBuilder, VlanId};
use proptest::prelude::*;

use crate::inspector::frame::{parse, Tag};
use crate::inspector::ring::MetaTag;

fn frame(tags: &[u16]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2; 6], [4; 6]);
    let payload = [7u8; 20];
    let mut out = Vec::new();
    match tags {
        [] => eth
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, &payload),
        [one] => eth
            .single_vlan(VlanId::try_new(*one).expect("vid"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, &payload),
        [outer, inner, ..] => eth
            .double_vlan(
                VlanId::try_new(*outer).expect("vid"),
                VlanId::try_new(*inner).expect("vid"),
            )
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, &payload),
    }
    .expect("building a frame");
    out
}

proptest! {
    /// Tags built in line come back as they were built (0x8100 single, 0x88a8 + 0x8100 double).
    #[test]
    fn built_tags_parse_back(tags in proptest::collection::vec(1u16..4095, 0..=2)) {
        let data = frame(&tags);
        let t = parse(&data, None).ok_or_else(|| TestCaseError::fail("not parsed"))?;
        let want = match tags.as_slice() {
            [] => (None, None),
            [one] => (Some(Tag { tpid: 0x8100, vid: *one, pcp: 0 }), None),
            [o, i, ..] => (Some(Tag { tpid: 0x88a8, vid: *o, pcp: 0 }), Some(Tag { tpid: 0x8100, vid: *i, pcp: 0 })),
        };
        prop_assert_eq!((t.outer, t.inner, t.ether_type), (want.0, want.1, 0x0800));
    }

    /// The kernel's metadata tag is the outer one and pushes the inline tag inside.
    #[test]
    fn metadata_tag_goes_outside(meta_vid in 1u16..4095, pcp in 0u8..8, inline in proptest::option::of(1u16..4095)) {
        let data = frame(inline.as_slice());
        let meta = MetaTag { tpid: 0x8100, tci: (u16::from(pcp) << 13) | meta_vid };
        let t = parse(&data, Some(meta)).ok_or_else(|| TestCaseError::fail("not parsed"))?;
        prop_assert_eq!(t.outer, Some(Tag { tpid: 0x8100, vid: meta_vid, pcp }));
        prop_assert_eq!(t.inner.map(|t| t.vid), inline);
    }

    /// Any bytes, any truncation: no panic, and the payload lies inside the frame.
    #[test]
    fn random_and_cut_frames_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        meta in proptest::option::of((any::<u16>(), any::<u16>())),
    ) {
        let meta = meta.map(|(tpid, tci)| MetaTag { tpid, tci });
        for cut in 0..=data.len() {
            if let Some(t) = parse(&data[..cut], meta) {
                prop_assert!(t.payload.len() <= cut);
            }
        }
    }
}
