//! Active verification: a probe into each end of a VXC, captured as it leaves every port (and
//! the core uplink, towards a peer).

use crate::dataplane::VxcSpec;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::frame::{self, Tag};
use super::ring::{self, Direction, RingConfig};
use super::{probe, vxlan, InspectError};

/// One end of the VXC to verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyEnd {
    pub port: String,
    /// The port's interface (parent); for an end on a peer, the tunnel device.
    pub interface: String,
    /// `None`: untagged.
    pub vlan: Option<u16>,
    /// The tunnel to the peer holding this end.
    #[serde(default)]
    pub tunnel: Option<VerifyTunnel>,
}

/// Where a probe into the local end must go on the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyTunnel {
    pub vni: u32,
    pub remote: std::net::IpAddr,
    pub udp_port: u16,
    /// The uplink to capture on; `None`: the tunnel device is as far as verify can see.
    pub uplink: Option<String>,
}

/// A VXC to verify and the other port interfaces the probes must not leave on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySpec {
    pub vxc: String,
    pub a: VerifyEnd,
    pub b: VerifyEnd,
    /// (port, interface) of every other port.
    pub other_ports: Vec<(String, String)>,
}

impl VerifySpec {
    pub fn from_vxc(vxc: &VxcSpec, all_ports: &[(String, String)]) -> VerifySpec {
        let end = |e: &crate::dataplane::EndSpec| VerifyEnd {
            port: e.port.clone(),
            interface: e.interface.clone(),
            vlan: e.vlan,
            tunnel: e.tunnel.as_ref().map(|t| VerifyTunnel {
                vni: t.vni,
                remote: t.remote,
                udp_port: t.udp_port,
                uplink: t.uplink.clone(),
            }),
        };
        VerifySpec {
            vxc: vxc.id.clone(),
            a: end(&vxc.a),
            b: end(&vxc.b),
            other_ports: all_ports
                .iter()
                .filter(|(_, i)| *i != vxc.a.interface && *i != vxc.b.interface)
                .cloned()
                .collect(),
        }
    }
}

/// Verification settings.
#[derive(Debug, Clone, Copy)]
pub struct VerifyConfig {
    /// How long to wait for a probe to leave the far port.
    pub timeout: Duration,
    /// After the probe left, how long to keep watching the other ports for copies. A copy on
    /// another port leaves in the same softirq pass; the grace covers ring hand-over.
    pub leak_grace: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            leak_grace: Duration::from_millis(50),
        }
    }
}

/// How a probe was seen leaving a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub port: String,
    pub interface: String,
    pub direction: Direction,
    /// Outer tag; `None`: untagged.
    pub tag: Option<Tag>,
    pub inner: Option<Tag>,
}

/// How a probe was seen leaving the uplink, encapsulated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSighting {
    pub interface: String,
    pub vni: u32,
    /// The outer destination: the peer it went to.
    pub remote: std::net::IpAddr,
    pub udp_port: u16,
}

/// Result of one direction (probe into `from`, expected out of `to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionResult {
    /// "a->b" or "b->a".
    pub direction: String,
    pub pass: bool,
    /// VLAN the probe must carry when leaving `to`; `None` = untagged.
    pub expected_vlan: Option<u16>,
    /// Tag it carried when leaving `to` (first sighting); `None` also when not seen.
    pub observed_tag: Option<Tag>,
    pub observed_inner: Option<Tag>,
    /// Whether it left `to` at all.
    pub seen: bool,
    /// Every sighting as it left a port (Tx), including wrong ones.
    pub left_on: Vec<Sighting>,
    /// Towards a peer: the VNI the probe must carry on the core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_vni: Option<u32>,
    /// Towards a peer: every encapsulated copy seen leaving the uplink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core: Vec<CoreSighting>,
    /// Whether the capture saw the probe enter the source port's receive path.
    pub entered: bool,
    pub elapsed_us: u64,
    /// Human-readable verdict.
    pub detail: String,
}

/// Result of verifying a VXC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    pub vxc: String,
    pub pass: bool,
    pub directions: Vec<DirectionResult>,
}

pub(super) static NONCE: AtomicU64 = AtomicU64::new(0);

pub(super) fn tag_text(tag: Option<Tag>) -> String {
    tag.map_or("untagged".to_string(), |t| {
        format!("VLAN {} (TPID {:#06x})", t.vid, t.tpid)
    })
}

/// Verifies both directions of a VXC with probes (blocking: run it on a blocking thread).
/// Opens captures on the two end ports and every other port, and one tap injector per end.
pub fn verify(spec: &VerifySpec, cfg: VerifyConfig) -> Result<VerifyResult, InspectError> {
    let verr = |cause: String| InspectError::Verify {
        vxc: spec.vxc.clone(),
        cause,
    };
    let mut ports: Vec<(String, String)> = vec![
        (spec.a.port.clone(), spec.a.interface.clone()),
        (spec.b.port.clone(), spec.b.interface.clone()),
    ];
    for p in &spec.other_ports {
        if !ports.iter().any(|(_, i)| *i == p.1) {
            ports.push(p.clone());
        }
    }
    let ring_cfg = RingConfig {
        // Room for the outer headers of a probe leaving the core (14 + 40 + 8 + 8) and the
        // probe inside.
        snap_len: 256,
        block_size: 1 << 16,
        block_count: 4,
        block_timeout_ms: 1,
    };
    let mut rings = Vec::new();
    for (port, interface) in &ports {
        let ring = ring::Ring::open(interface, ring_cfg)
            .map_err(|e| verr(format!("capturing on port {port}: {e}")))?;
        rings.push((port.clone(), interface.clone(), ring));
    }
    let tunnel = [&spec.a, &spec.b]
        .into_iter()
        .find_map(|e| e.tunnel.clone());
    let mut core_ring = match tunnel.as_ref().and_then(|t| t.uplink.clone()) {
        Some(uplink) => {
            let ring = ring::Ring::open(&uplink, ring_cfg)
                .map_err(|e| verr(format!("capturing on the core uplink {uplink}: {e}")))?;
            Some((uplink, ring))
        }
        None => None,
    };
    let hash = probe::vxc_hash(&spec.vxc);
    let mut directions = Vec::new();
    for (entry, from, to) in [(0u8, &spec.a, &spec.b), (1u8, &spec.b, &spec.a)] {
        let injector = probe::Injector::new(&from.interface)
            .map_err(|e| verr(format!("probe injector into port {}: {e}", from.port)))?;
        let mark = probe::ProbeMark {
            vxc_hash: hash,
            nonce: (u64::from(std::process::id()) << 32) | NONCE.fetch_add(1, Ordering::Relaxed),
            entry,
        };
        let frame = probe::build(from.vlan, mark);
        let started = Instant::now();
        injector.inject(&frame).map_err(|e| verr(e.to_string()))?;
        let mut left_on: Vec<Sighting> = Vec::new();
        let mut core: Vec<CoreSighting> = Vec::new();
        // Towards a peer with a known uplink, the probe has arrived once it leaves the core.
        let to_core = to.tunnel.as_ref().filter(|t| t.uplink.is_some());
        let mut entered = false;
        let mut arrived_at: Option<Instant> = None;
        let mut elapsed = Duration::ZERO;
        loop {
            let now = Instant::now();
            match arrived_at {
                Some(t) if now >= t + cfg.leak_grace => break,
                None if now >= started + cfg.timeout => break,
                _ => {}
            }
            for (port, interface, ring) in &mut rings {
                ring.next_block(1, |raw| {
                    let Some(tags) = frame::parse(raw.data, raw.meta_tag) else {
                        return;
                    };
                    if probe::parse(tags.ether_type, tags.payload) != Some(mark) {
                        return;
                    }
                    if raw.direction == Direction::Rx {
                        if *interface == from.interface {
                            entered = true;
                        }
                        return;
                    }
                    if *interface == to.interface && arrived_at.is_none() && to_core.is_none() {
                        arrived_at = Some(Instant::now());
                        elapsed = started.elapsed();
                    }
                    left_on.push(Sighting {
                        port: port.clone(),
                        interface: interface.clone(),
                        direction: raw.direction,
                        tag: tags.outer,
                        inner: tags.inner,
                    });
                })
                .map_err(|e| verr(e.to_string()))?;
            }
            if let (Some((uplink, ring)), Some(t)) = (&mut core_ring, &tunnel) {
                ring.next_block(1, |raw| {
                    if raw.direction != Direction::Tx {
                        return;
                    }
                    let Some(outer) = frame::parse(raw.data, raw.meta_tag) else {
                        return;
                    };
                    let Some(e) = vxlan::decapsulate(outer.ether_type, outer.payload, t.udp_port)
                    else {
                        return;
                    };
                    let Some(inner) = frame::parse(e.inner, None) else {
                        return;
                    };
                    if probe::parse(inner.ether_type, inner.payload) != Some(mark) {
                        return;
                    }
                    if to_core.is_some() && arrived_at.is_none() {
                        arrived_at = Some(Instant::now());
                        elapsed = started.elapsed();
                    }
                    core.push(CoreSighting {
                        interface: uplink.clone(),
                        vni: e.vni,
                        remote: e.destination,
                        udp_port: e.udp_port,
                    });
                })
                .map_err(|e| verr(e.to_string()))?;
            }
        }
        if arrived_at.is_none() {
            elapsed = started.elapsed();
        }
        // Towards a peer: exactly one copy on the core, with the VXC's VNI, to the peer. Into
        // this host: none (a probe from the tunnel that went back out would loop to the peer).
        let core_problem = match to_core {
            Some(t) => match core.as_slice() {
                [] => Some(format!(
                    "never left the core uplink {} encapsulated (expected VNI {} to {})",
                    t.uplink.as_deref().unwrap_or("?"),
                    t.vni,
                    t.remote
                )),
                [c] if c.vni != t.vni || c.remote != t.remote => Some(format!(
                    "left the core uplink {} with VNI {} to {} instead of VNI {} to {}",
                    c.interface, c.vni, c.remote, t.vni, t.remote
                )),
                [_] => None,
                more => Some(format!("left the core uplink {} times", more.len())),
            },
            None => core.first().map(|c| {
                format!(
                    "also left the core uplink {} with VNI {} to {}",
                    c.interface, c.vni, c.remote
                )
            }),
        };
        let at_target: Vec<&Sighting> = left_on
            .iter()
            .filter(|s| s.interface == to.interface)
            .collect();
        let elsewhere: Vec<&Sighting> = left_on
            .iter()
            .filter(|s| s.interface != to.interface)
            .collect();
        let first = at_target.first();
        let expected_ok = |s: &Sighting| match to.vlan {
            None => s.tag.is_none(),
            Some(v) => s.tag.is_some_and(|t| t.tpid == 0x8100 && t.vid == v) && s.inner.is_none(),
        };
        let pass = at_target.len() == 1
            && at_target.iter().all(|s| expected_ok(s))
            && elsewhere.is_empty()
            && core_problem.is_none();
        let name = if entry == 0 { "a->b" } else { "b->a" };
        let expected_text = to
            .vlan
            .map_or("untagged".to_string(), |v| format!("VLAN {v}"));
        let from_text = match &from.tunnel {
            Some(t) => format!(
                "tunnel {} (VNI {} from {})",
                from.interface, t.vni, t.remote
            ),
            None => format!("port {}", from.port),
        };
        let detail = if pass {
            match (&to.tunnel, core.first()) {
                (Some(_), Some(c)) => format!(
                    "probe into {from_text} left tunnel {} and the core uplink {} with VNI {} to {} as expected",
                    to.interface, c.interface, c.vni, c.remote
                ),
                (Some(t), None) => format!(
                    "probe into {from_text} left tunnel {} (VNI {} to {}) as expected",
                    to.interface, t.vni, t.remote
                ),
                (None, _) => format!(
                    "probe into {from_text} left port {} {expected_text} as expected",
                    to.port
                ),
            }
        } else if at_target.is_empty() {
            let to_text = match &to.tunnel {
                Some(t) => format!("tunnel {} (VNI {} to {})", to.interface, t.vni, t.remote),
                None => format!("port {} (expected {expected_text})", to.port),
            };
            format!(
                "probe into {from_text} never left {to_text} within {:?}; entered: {}{}{}",
                cfg.timeout,
                if entered { "yes" } else { "not seen" },
                if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; left instead on {}",
                        elsewhere
                            .iter()
                            .map(|s| format!("{} {}", s.port, tag_text(s.tag)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                core_problem
                    .as_ref()
                    .map_or(String::new(), |p| format!("; {p}"))
            )
        } else {
            let mut problems = Vec::new();
            if let Some(s) = at_target.iter().find(|s| !expected_ok(s)) {
                problems.push(format!(
                    "left port {} {}{} instead of {expected_text}",
                    to.port,
                    tag_text(s.tag),
                    s.inner
                        .map_or(String::new(), |i| format!(" with inner VLAN {}", i.vid))
                ));
            }
            if at_target.len() > 1 {
                problems.push(format!("left port {} {} times", to.port, at_target.len()));
            }
            for s in &elsewhere {
                problems.push(format!(
                    "also left port {} ({}) {}",
                    s.port,
                    s.interface,
                    tag_text(s.tag)
                ));
            }
            problems.extend(core_problem.clone());
            format!("probe into {from_text}: {}", problems.join("; "))
        };
        if !pass {
            log::error!("verify {}: {name}: {detail}", spec.vxc);
        }
        directions.push(DirectionResult {
            direction: name.to_string(),
            pass,
            expected_vlan: to.vlan,
            observed_tag: first.and_then(|s| s.tag),
            observed_inner: first.and_then(|s| s.inner),
            seen: first.is_some(),
            left_on,
            expected_vni: to.tunnel.as_ref().map(|t| t.vni),
            core,
            entered,
            elapsed_us: elapsed.as_micros() as u64,
            detail,
        });
    }
    Ok(VerifyResult {
        vxc: spec.vxc.clone(),
        pass: directions.iter().all(|d| d.pass),
        directions,
    })
}
