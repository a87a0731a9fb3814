//! Tags of one captured frame: the tag the kernel passed as metadata (if any) followed by the
//! tags still inline in the data, parsed with etherparse's zero-copy slices (no allocation).

use etherparse::{Ethernet2Slice, SingleVlanSlice};

use super::ring::MetaTag;

/// One VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    /// 0x8100 (802.1Q), 0x88a8 (802.1ad S-tag) or 0x9100.
    pub tpid: u16,
    pub vid: u16,
    pub pcp: u8,
}

impl Tag {
    fn from_tci(tpid: u16, tci: u16) -> Tag {
        Tag {
            tpid,
            vid: tci & 0x0fff,
            pcp: (tci >> 13) as u8,
        }
    }
}

/// What the classifier needs from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTags<'a> {
    pub outer: Option<Tag>,
    pub inner: Option<Tag>,
    /// EtherType after all tags.
    pub ether_type: u16,
    /// Bytes after the last tag (cut at the snap length).
    pub payload: &'a [u8],
}

const fn is_vlan_tpid(ether_type: u16) -> bool {
    matches!(ether_type, 0x8100 | 0x88a8 | 0x9100)
}

/// Parses `data` (an Ethernet frame, possibly snapped) with the metadata tag the kernel
/// removed from it. `None` when the frame is shorter than an Ethernet header.
pub fn parse(data: &[u8], meta: Option<MetaTag>) -> Option<FrameTags<'_>> {
    let eth = Ethernet2Slice::from_slice_without_fcs(data).ok()?;
    let mut ether_type = eth.ether_type().0;
    let mut payload = eth.payload_slice();
    // The metadata tag was the outermost one on the wire.
    // etherparse handles up to three stacked tags; past two only the EtherType matters.
    let mut tags: [Option<Tag>; 2] = [meta.map(|m| Tag::from_tci(m.tpid, m.tci)), None];
    let first_free = usize::from(tags[0].is_some());
    for count in first_free..first_free + 3 {
        if !is_vlan_tpid(ether_type) {
            break;
        }
        let Ok(vlan) = SingleVlanSlice::from_slice(payload) else {
            break;
        };
        if let Some(slot) = tags.get_mut(count) {
            *slot = Some(Tag {
                tpid: ether_type,
                vid: vlan.vlan_identifier().value(),
                pcp: vlan.priority_code_point().value(),
            });
        }
        ether_type = vlan.ether_type().0;
        payload = vlan.payload_slice();
    }
    Some(FrameTags {
        outer: tags[0],
        inner: tags[1],
        ether_type,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame(builder: etherparse::PacketBuilderStep<etherparse::VlanHeader>) -> Vec<u8> {
        let b = builder.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3]).expect("write");
        out
    }

    #[test]
    fn inline_single_and_double_tags() {
        let single = udp_frame(
            PacketBuilder::ethernet2([2; 6], [4; 6])
                .single_vlan(etherparse::VlanId::try_new(200).expect("vid")),
        );
        let t = parse(&single, None).expect("parse");
        assert_eq!(
            t.outer,
            Some(Tag {
                tpid: 0x8100,
                vid: 200,
                pcp: 0
            })
        );
        assert_eq!(t.inner, None);
        assert_eq!(t.ether_type, 0x0800);

        let double = udp_frame(PacketBuilder::ethernet2([2; 6], [4; 6]).double_vlan(
            etherparse::VlanId::try_new(300).expect("vid"),
            etherparse::VlanId::try_new(20).expect("vid"),
        ));
        let t = parse(&double, None).expect("parse");
        assert_eq!(
            t.outer,
            Some(Tag {
                tpid: 0x88a8,
                vid: 300,
                pcp: 0
            })
        );
        assert_eq!(
            t.inner,
            Some(Tag {
                tpid: 0x8100,
                vid: 20,
                pcp: 0
            })
        );
        assert_eq!(t.ether_type, 0x0800);
    }

    #[test]
    fn metadata_tag_is_the_outer_one() {
        // What a receiver sees of a QinQ frame: S-tag in metadata, C-tag still inline.
        let mut frame = vec![4u8; 6];
        frame.extend_from_slice(&[2; 6]);
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 20, 0x08, 0x00]);
        frame.extend_from_slice(&[0u8; 46]);
        let t = parse(
            &frame,
            Some(MetaTag {
                tpid: 0x88a8,
                tci: (5 << 13) | 300,
            }),
        )
        .expect("parse");
        assert_eq!(
            t.outer,
            Some(Tag {
                tpid: 0x88a8,
                vid: 300,
                pcp: 5
            })
        );
        assert_eq!(
            t.inner,
            Some(Tag {
                tpid: 0x8100,
                vid: 20,
                pcp: 0
            })
        );
        assert_eq!(t.ether_type, 0x0800);
    }

    #[test]
    fn untagged_and_runt() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(&[9; 46]);
        let t = parse(&frame, None).expect("parse");
        assert_eq!((t.outer, t.inner, t.ether_type), (None, None, 0x88b5));
        assert_eq!(t.payload.len(), 46);
        assert!(parse(&frame[..10], None).is_none());
        // A tag cut by the snap length: outer stays unknown-inline, no panic.
        assert!(parse(&frame[..14], None).is_some());
    }
}
