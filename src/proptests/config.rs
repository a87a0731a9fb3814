//! `config::Config::parse`.

use proptest::prelude::*;

use crate::config::Config;

const VALID: &str = include_str!("../../config/vxcd.toml");

proptest! {
    /// Any text: a config or an error that names the file, never a panic.
    #[test]
    fn any_text_gives_a_config_or_a_named_error(text in "\\PC{0,300}") {
        if let Err(e) = Config::parse("x.toml", &text) {
            prop_assert!(e.to_string().starts_with("x.toml"), "{e}");
        }
    }

    /// The documented default config, cut anywhere or with one byte changed: never a panic.
    #[test]
    fn cut_and_mutated_default_configs_never_panic(cut in 0..VALID.len(), at in 0..VALID.len(), byte in 32u8..127) {
        let _ = Config::parse("x.toml", VALID.get(..cut).unwrap_or(""));
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[at] = byte;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Err(e) = Config::parse("x.toml", text) {
                prop_assert!(e.to_string().starts_with("x.toml"), "{e}");
            }
        }
    }
}
