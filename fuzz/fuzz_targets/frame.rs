//! A captured frame, with or without the tag the kernel passed as metadata: any bytes parse to
//! tags or to `None`, never a panic, and a parsed payload lies inside the frame.
#![no_main]

use vxcd::inspector::frame::parse;
use vxcd::inspector::ring::MetaTag;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (meta, frame) = if selector & 1 == 1 && rest.len() >= 4 {
        let tpid = u16::from_be_bytes([rest[0], rest[1]]);
        let tci = u16::from_be_bytes([rest[2], rest[3]]);
        (Some(MetaTag { tpid, tci }), &rest[4..])
    } else {
        (None, rest)
    };
    if let Some(tags) = parse(frame, meta) {
        assert!(tags.payload.len() <= frame.len());
    }
});
