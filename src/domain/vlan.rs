//! VLAN ids and per-port VLAN allocation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Smallest VLAN a VXC end or key may use (1 is reserved: the default VLAN of most switches).
pub const VLAN_MIN: u16 = 2;
/// Largest VLAN a VXC end or key may use (4094 and 4095 are reserved).
pub const VLAN_MAX: u16 = 4093;

/// A VLAN id in `VLAN_MIN..=VLAN_MAX`; the only way to build one is [`Vlan::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Vlan(u16);

impl Vlan {
    /// Checks the range; `None` for anything outside 2..=4093.
    pub fn new(raw: i64) -> Option<Vlan> {
        u16::try_from(raw)
            .ok()
            .filter(|v| (VLAN_MIN..=VLAN_MAX).contains(v))
            .map(Vlan)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Vlan {
    type Error = String;
    fn try_from(raw: u16) -> Result<Self, String> {
        Vlan::new(raw.into())
            .ok_or_else(|| format!("VLAN {raw} is outside {VLAN_MIN}..={VLAN_MAX}"))
    }
}

impl From<Vlan> for u16 {
    fn from(v: Vlan) -> u16 {
        v.0
    }
}

impl fmt::Display for Vlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The VLANs taken on one port, as a 4096-bit set: allocation and "next available" cost at most 64
/// word scans whatever the number of VXCs, so filling all of 2..=4093 on a port stays linear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VlanSet {
    words: [u64; 64],
}

impl Default for VlanSet {
    fn default() -> Self {
        Self { words: [0; 64] }
    }
}

impl VlanSet {
    pub fn contains(&self, vlan: Vlan) -> bool {
        let v = usize::from(vlan.0);
        self.words[v / 64] & (1 << (v % 64)) != 0
    }

    pub fn insert(&mut self, vlan: Vlan) {
        let v = usize::from(vlan.0);
        self.words[v / 64] |= 1 << (v % 64);
    }

    pub fn remove(&mut self, vlan: Vlan) {
        let v = usize::from(vlan.0);
        self.words[v / 64] &= !(1 << (v % 64));
    }

    /// The smallest free VLAN at or above `from`, within 2..=4093.
    pub fn first_free_from(&self, from: u16) -> Option<Vlan> {
        let mut v = usize::from(from.max(VLAN_MIN));
        let max = usize::from(VLAN_MAX);
        while v <= max {
            let free = !self.words[v / 64] >> (v % 64);
            if free != 0 {
                let found = v + free.trailing_zeros() as usize;
                return (found <= max).then_some(Vlan(found as u16));
            }
            v = (v / 64 + 1) * 64;
        }
        None
    }

    /// The smallest free VLAN in 2..=4093: what an assignment takes.
    pub fn first_free(&self) -> Option<Vlan> {
        self.first_free_from(VLAN_MIN)
    }

    /// What to offer when `requested` is taken: the smallest free VLAN above it, else the smallest
    /// free one, else none.
    pub fn next_available(&self, requested: Vlan) -> Option<Vlan> {
        requested
            .0
            .checked_add(1)
            .and_then(|above| self.first_free_from(above))
            .or_else(|| self.first_free())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vlan(v: u16) -> Vlan {
        Vlan::new(v.into()).unwrap()
    }

    #[test]
    fn range_is_2_to_4093() {
        for bad in [-1, 0, 1, 4094, 4095, 4096, 70000] {
            assert_eq!(Vlan::new(bad), None, "{bad}");
        }
        assert_eq!(Vlan::new(2).map(Vlan::get), Some(2));
        assert_eq!(Vlan::new(4093).map(Vlan::get), Some(4093));
        assert!(serde_json::from_str::<Vlan>("4094").is_err());
        assert!(serde_json::from_str::<Vlan>("1").is_err());
    }

    #[test]
    fn first_free_is_the_smallest_free() {
        let mut set = VlanSet::default();
        assert_eq!(set.first_free(), Some(vlan(2)));
        set.insert(vlan(2));
        set.insert(vlan(3));
        set.insert(vlan(5));
        assert_eq!(set.first_free(), Some(vlan(4)));
        set.remove(vlan(3));
        assert_eq!(set.first_free(), Some(vlan(3)));
    }

    #[test]
    fn next_available_prefers_above_then_wraps_then_none() {
        let mut set = VlanSet::default();
        for v in 100..=130 {
            set.insert(vlan(v));
        }
        assert_eq!(set.next_available(vlan(100)), Some(vlan(131)));
        let mut top = VlanSet::default();
        for v in 4000..=4093 {
            top.insert(vlan(v));
        }
        assert_eq!(top.next_available(vlan(4093)), Some(vlan(2)));
        assert_eq!(top.next_available(vlan(4050)), Some(vlan(2)));
        let mut full = VlanSet::default();
        for v in VLAN_MIN..=VLAN_MAX {
            full.insert(vlan(v));
        }
        assert_eq!(full.first_free(), None);
        assert_eq!(full.next_available(vlan(200)), None);
    }

    #[test]
    fn word_boundaries() {
        let mut set = VlanSet::default();
        for v in 2..=127 {
            set.insert(vlan(v));
        }
        assert_eq!(set.first_free(), Some(vlan(128)));
        set.insert(vlan(128));
        assert_eq!(set.first_free_from(63), Some(vlan(129)));
        assert!(set.contains(vlan(64)) && set.contains(vlan(63)));
    }
}
