//! vxcd.toml: any text gives a config or an error naming the file, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = vxcd::config::Config::parse("fuzz.toml", text) {
        assert!(e.to_string().contains("fuzz.toml"));
    }
});
