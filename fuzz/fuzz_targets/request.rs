//! A request line from the control socket: any bytes give a request or a typed failure.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err((_, failure)) = vxcd::protocol::parse_request(data) {
        assert!(!failure.code.is_empty());
    }
});
