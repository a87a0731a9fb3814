//! VXLAN network identifiers: which tunnel carries a VXC between two edge hosts (RFC 7348).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest VNI: the field is 24 bits.
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A VNI in `1..=VNI_MAX` (0 is not a network anyone chose); the only way to build one is
/// [`Vni::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    /// Checks the range; `None` for anything outside 1..=16777215.
    pub fn new(raw: i64) -> Option<Vni> {
        u32::try_from(raw)
            .ok()
            .filter(|v| (1..=VNI_MAX).contains(v))
            .map(Vni)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = String;
    fn try_from(raw: u32) -> Result<Self, String> {
        Vni::new(raw.into()).ok_or_else(|| format!("VNI {raw} is outside 1..={VNI_MAX}"))
    }
}

impl From<Vni> for u32 {
    fn from(v: Vni) -> u32 {
        v.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_1_to_2_pow_24_minus_1() {
        assert_eq!(Vni::new(0), None);
        assert_eq!(Vni::new(-1), None);
        assert_eq!(Vni::new(1).map(Vni::get), Some(1));
        assert_eq!(Vni::new(16_777_215).map(Vni::get), Some(VNI_MAX));
        assert_eq!(Vni::new(16_777_216), None);
        assert_eq!(Vni::new(i64::MAX), None);
        assert!(serde_json::from_str::<Vni>("16777216").is_err());
        assert_eq!(serde_json::from_str::<Vni>("17").ok(), Vni::new(17));
    }
}
