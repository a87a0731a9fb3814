//! What each inspected port should carry: built from the dataplane's VXCs.

use crate::dataplane::{Side, VxcSpec};

/// One VXC end as the inspector names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndRef {
    pub vxc: String,
    pub side: Side,
}

/// What one port should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortExpect {
    pub port: String,
    /// The port's kernel interface (the parent of its VLAN subinterfaces).
    pub interface: String,
    /// The untagged VXC end that takes the whole port, if any.
    pub untagged: Option<EndRef>,
    /// VLAN -> VXC end, for tagged ends.
    pub vlans: Vec<(u16, EndRef)>,
}

/// What every inspected port should carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    pub ports: Vec<PortExpect>,
}

impl Expectation {
    /// From the dataplane's VXCs; `ports` lists every (port name, interface) to inspect,
    /// so ports without VXCs are inspected too (all their traffic is a violation).
    pub fn from_vxcs(ports: &[(String, String)], vxcs: &[VxcSpec]) -> Expectation {
        let mut out: Vec<PortExpect> = ports
            .iter()
            .map(|(port, interface)| PortExpect {
                port: port.clone(),
                interface: interface.clone(),
                untagged: None,
                vlans: Vec::new(),
            })
            .collect();
        for vxc in vxcs {
            for side in [Side::A, Side::B] {
                let end = vxc.end(side);
                // A tunnel device is no customer port: nothing to inspect there.
                if end.tunnel.is_some() {
                    continue;
                }
                let end_ref = EndRef {
                    vxc: vxc.id.clone(),
                    side,
                };
                let index = match out.iter().position(|p| p.interface == end.interface) {
                    Some(i) => i,
                    None => {
                        out.push(PortExpect {
                            port: end.port.clone(),
                            interface: end.interface.clone(),
                            untagged: None,
                            vlans: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                match end.vlan {
                    None => out[index].untagged = Some(end_ref),
                    Some(vlan) => out[index].vlans.push((vlan, end_ref)),
                }
            }
        }
        Expectation { ports: out }
    }
}
