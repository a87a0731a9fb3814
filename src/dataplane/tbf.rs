//! TBF shaper parameters: the burst policy and the kernel's option encoding.
//!
//! netlink-packet-route 0.34 has no typed TBF options, so the attributes are built and
//! parsed here against the kernel's `struct tc_tbf_qopt` (include/uapi/linux/pkt_sched.h).

use netlink_packet_core::{DefaultNla, NlasIterator};

/// `TCA_TBF_PARMS`: struct tc_tbf_qopt.
pub const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: u64 bytes/s, sent when the rate does not fit the u32 in the ratespec.
pub const TCA_TBF_RATE64: u16 = 4;
/// `TCA_TBF_BURST`: u32 bytes; overrides the `buffer` (ticks) of the ratespec struct.
pub const TCA_TBF_BURST: u16 = 6;
/// `sizeof(struct tc_tbf_qopt)`: two 12-byte `tc_ratespec` + limit + buffer + mtu.
pub const TC_TBF_QOPT_LEN: usize = 36;
/// `TC_LINKLAYER_ETHERNET`: with it the kernel needs no rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// Kernel packet scheduler tick: `PSCHED_SHIFT` = 6, so one tick is 64 ns.
pub const PSCHED_TICK_NS: u64 = 64;
/// Ethernet header + 802.1Q tag + FCS: the wire size of a frame beyond its MTU.
const FRAME_OVERHEAD: u32 = 14 + 4 + 4;

/// How vxcd sizes a TBF's bucket and queue for a rate.
///
/// `burst = max(rate × min_burst_us, min_burst_frames × (mtu + 22))` bytes, and
/// `limit = rate × latency_us + burst` (as iproute2 computes it from `latency`).
/// Measured on veth: a bucket below rate × 1 ms passes far less than the rate (2 KB at
/// 1 Gbit/s passed 27 %); at low rates the frame floor dominates so a full-size frame
/// (and GSO segments of it) always fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstPolicy {
    /// Bucket time at the configured rate, in microseconds.
    pub min_burst_us: u32,
    /// Bucket floor in full-size frames of the end interface's MTU.
    pub min_burst_frames: u32,
    /// Queue length expressed as time at the configured rate, in microseconds.
    pub latency_us: u32,
}

impl Default for BurstPolicy {
    fn default() -> Self {
        Self {
            min_burst_us: 2_000,
            min_burst_frames: 8,
            latency_us: 20_000,
        }
    }
}

/// The shaper parameters vxcd sets and reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    /// Rate in bytes per second.
    pub rate_bytes_per_s: u64,
    /// Bucket size in bytes.
    pub burst_bytes: u32,
    /// Queue limit in bytes.
    pub limit_bytes: u32,
}

/// Bytes per second for a rate in Mbit/s.
pub fn rate_bytes_per_s(rate_mbps: u32) -> u64 {
    u64::from(rate_mbps) * 1_000_000 / 8
}

impl BurstPolicy {
    /// Shaper parameters for `rate_mbps` on an interface with `mtu`.
    pub fn params(&self, rate_mbps: u32, mtu: u32) -> TbfParams {
        let rate = rate_bytes_per_s(rate_mbps);
        let by_time = rate * u64::from(self.min_burst_us) / 1_000_000;
        let by_frames = u64::from(self.min_burst_frames) * u64::from(mtu + FRAME_OVERHEAD);
        let burst = by_time.max(by_frames).min(u64::from(u32::MAX));
        let queue = rate * u64::from(self.latency_us) / 1_000_000;
        let limit = (queue + burst).min(u64::from(u32::MAX));
        TbfParams {
            rate_bytes_per_s: rate,
            burst_bytes: burst as u32,
            limit_bytes: limit as u32,
        }
    }
}

/// Encodes `struct tc_ratespec` (12 bytes, native endian) for an Ethernet link layer.
fn ratespec(rate_bytes_per_s: u64) -> [u8; 12] {
    let mut spec = [0u8; 12];
    // cell_log (u8) = 0, linklayer (u8), overhead (u16), cell_align (i16), mpu (u16), rate (u32)
    spec[1] = TC_LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(rate_bytes_per_s).unwrap_or(u32::MAX);
    spec[8..12].copy_from_slice(&rate32.to_ne_bytes());
    spec
}

/// `struct tc_tbf_qopt` for `params`. The `buffer` field (ticks) is left 0 because
/// `TCA_TBF_BURST` gives the bucket in bytes and the kernel derives the ticks from it.
pub fn encode_qopt(params: &TbfParams) -> [u8; TC_TBF_QOPT_LEN] {
    let mut qopt = [0u8; TC_TBF_QOPT_LEN];
    qopt[0..12].copy_from_slice(&ratespec(params.rate_bytes_per_s));
    // bytes 12..24: peakrate, unused (all zero means no peak rate).
    qopt[24..28].copy_from_slice(&params.limit_bytes.to_ne_bytes());
    // 28..32 buffer (ticks) = 0, 32..36 mtu (peak bucket) = 0.
    qopt
}

/// The `TCA_OPTIONS` nested attributes of a TBF qdisc for `params`.
pub fn encode_options(params: &TbfParams) -> Vec<DefaultNla> {
    let mut nlas = vec![
        DefaultNla::new(TCA_TBF_PARMS, encode_qopt(params).to_vec()),
        DefaultNla::new(TCA_TBF_BURST, params.burst_bytes.to_ne_bytes().to_vec()),
    ];
    if params.rate_bytes_per_s >= 1u64 << 32 {
        nlas.push(DefaultNla::new(
            TCA_TBF_RATE64,
            params.rate_bytes_per_s.to_ne_bytes().to_vec(),
        ));
    }
    nlas
}

/// Parses the content of a TBF's `TCA_OPTIONS` as the kernel dumps it: the ratespec rate
/// (or `TCA_TBF_RATE64`), the limit, and the bucket converted back from ticks to bytes.
pub fn decode_options(options: &[u8]) -> Option<TbfParams> {
    let mut qopt: Option<Vec<u8>> = None;
    let mut rate64: Option<u64> = None;
    for nla in NlasIterator::new(options) {
        let nla = nla.ok()?;
        match nla.kind() {
            TCA_TBF_PARMS => qopt = Some(nla.value().to_vec()),
            TCA_TBF_RATE64 => {
                let bytes: [u8; 8] = nla.value().get(..8)?.try_into().ok()?;
                rate64 = Some(u64::from_ne_bytes(bytes));
            }
            _ => {}
        }
    }
    let qopt = qopt?;
    if qopt.len() < TC_TBF_QOPT_LEN {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(qopt.get(at..at + 4)?.try_into().ok()?))
    };
    let rate = rate64.unwrap_or(u64::from(u32_at(8)?));
    let limit = u32_at(24)?;
    let buffer_ticks = u32_at(28)?;
    Some(TbfParams {
        rate_bytes_per_s: rate,
        burst_bytes: burst_from_ticks(buffer_ticks, rate),
        limit_bytes: limit,
    })
}

/// Bytes a bucket of `ticks` scheduler ticks holds at `rate` bytes/s.
pub fn burst_from_ticks(ticks: u32, rate_bytes_per_s: u64) -> u32 {
    let ns = u128::from(ticks) * u128::from(PSCHED_TICK_NS);
    let bytes = ns * u128::from(rate_bytes_per_s) / 1_000_000_000;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Whether a read-back bucket matches the requested one: the kernel stores it in 64 ns
/// ticks, so it can differ by up to one tick's worth of bytes plus rounding.
pub fn burst_matches(expected: u32, observed: u32, rate_bytes_per_s: u64) -> bool {
    let tick_bytes = rate_bytes_per_s * PSCHED_TICK_NS / 1_000_000_000;
    let tolerance = 2 * tick_bytes + 16 + u64::from(expected) / 1000;
    u64::from(expected.abs_diff(observed)) <= tolerance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_covers_one_ms_and_frames_from_10m_to_10g() {
        let policy = BurstPolicy::default();
        for rate_mbps in [10u32, 50, 100, 500, 1_000, 2_500, 5_000, 10_000] {
            let p = policy.params(rate_mbps, 1500);
            let one_ms = rate_bytes_per_s(rate_mbps) / 1000;
            assert!(
                u64::from(p.burst_bytes) >= one_ms,
                "{rate_mbps} Mbps: burst {} < rate x 1 ms {one_ms}",
                p.burst_bytes
            );
            assert!(
                p.burst_bytes >= 4 * 1522,
                "{rate_mbps} Mbps: burst {} < 4 frames",
                p.burst_bytes
            );
            assert!(
                p.limit_bytes > p.burst_bytes,
                "{rate_mbps} Mbps: limit must exceed burst"
            );
            assert_eq!(
                u64::from(p.limit_bytes),
                rate_bytes_per_s(rate_mbps) * 20 / 1000 + u64::from(p.burst_bytes)
            );
        }
        // Frame floor dominates at 10 Mbps, time dominates at 10 Gbps.
        assert_eq!(policy.params(10, 1500).burst_bytes, 8 * 1522);
        assert_eq!(policy.params(10_000, 1500).burst_bytes, 2_500_000);
        // Jumbo frames raise the floor.
        assert_eq!(policy.params(10, 9000).burst_bytes, 8 * 9022);
    }

    #[test]
    fn qopt_layout_matches_kernel_struct() {
        let p = TbfParams {
            rate_bytes_per_s: 12_500_000,
            burst_bytes: 25_000,
            limit_bytes: 275_000,
        };
        let q = encode_qopt(&p);
        assert_eq!(q.len(), 36);
        assert_eq!(q[0], 0, "rate.cell_log");
        assert_eq!(q[1], 1, "rate.linklayer = TC_LINKLAYER_ETHERNET");
        assert_eq!(&q[2..8], &[0; 6], "overhead, cell_align, mpu");
        assert_eq!(
            u32::from_ne_bytes(q[8..12].try_into().unwrap()),
            12_500_000,
            "rate.rate"
        );
        assert_eq!(&q[12..24], &[0; 12], "peakrate unset");
        assert_eq!(
            u32::from_ne_bytes(q[24..28].try_into().unwrap()),
            275_000,
            "limit"
        );
        assert_eq!(
            &q[28..36],
            &[0; 8],
            "buffer (ticks) and mtu unset: TCA_TBF_BURST carries the bucket"
        );
        let nlas = encode_options(&p);
        assert_eq!(nlas.len(), 2, "no RATE64 below 2^32 bytes/s");
        let big = TbfParams {
            rate_bytes_per_s: 5_000_000_000,
            ..p
        };
        let nlas = encode_options(&big);
        assert_eq!(nlas.len(), 3);
        assert_eq!(
            u32::from_ne_bytes(encode_qopt(&big)[8..12].try_into().unwrap()),
            u32::MAX
        );
    }

    #[test]
    fn decode_reads_ticks_back_as_bytes() {
        use netlink_packet_core::Emitable;
        // What the kernel dumps for rate 12.5 MB/s with a 25000-byte bucket: 2 ms = 31250 ticks.
        let mut qopt = encode_qopt(&TbfParams {
            rate_bytes_per_s: 12_500_000,
            burst_bytes: 0,
            limit_bytes: 275_000,
        });
        qopt[28..32].copy_from_slice(&31_250u32.to_ne_bytes());
        let nlas = vec![DefaultNla::new(TCA_TBF_PARMS, qopt.to_vec())];
        let mut buf = vec![0u8; nlas.as_slice().buffer_len()];
        nlas.as_slice().emit(&mut buf);
        let p = decode_options(&buf).unwrap();
        assert_eq!(p.rate_bytes_per_s, 12_500_000);
        assert_eq!(p.limit_bytes, 275_000);
        assert_eq!(p.burst_bytes, 25_000);
        assert!(burst_matches(25_000, p.burst_bytes, p.rate_bytes_per_s));
        assert!(!burst_matches(25_000, 20_000, p.rate_bytes_per_s));
    }
}
