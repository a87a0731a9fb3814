//! Frames on the core: a VXLAN packet (RFC 7348) as it leaves the uplink, opened far enough to
//! tell where it goes, with which VNI, and what it carries. `verify` uses it to prove that a
//! probe entering a VXC's local end leaves the host encapsulated with the VXC's VNI towards its
//! peer. The headers are read with etherparse's header slices, which need only the header bytes
//! (a capture snapped short of the outer IP length still parses).

use std::net::IpAddr;

use etherparse::{IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice, UdpHeaderSlice};

/// VXLAN header: flags (I bit = a VNI is present), reserved, VNI (24 bits), reserved.
const VXLAN_HEADER: usize = 8;
const VXLAN_FLAG_VNI: u8 = 0x08;

/// One VXLAN packet seen on the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulated<'a> {
    pub destination: IpAddr,
    pub udp_port: u16,
    pub vni: u32,
    /// The inner Ethernet frame (cut at the snap length).
    pub inner: &'a [u8],
}

/// Opens `payload` (what follows the outer Ethernet header and its tags) of EtherType
/// `ether_type` as VXLAN over UDP to `udp_port`; `None` for anything else.
pub fn decapsulate(ether_type: u16, payload: &[u8], udp_port: u16) -> Option<Encapsulated<'_>> {
    let (destination, transport) = match ether_type {
        0x0800 => {
            let ip = Ipv4HeaderSlice::from_slice(payload).ok()?;
            if ip.protocol() != IpNumber::UDP || ip.is_fragmenting_payload() {
                return None;
            }
            (
                IpAddr::V4(ip.destination_addr()),
                payload.get(ip.slice().len()..)?,
            )
        }
        0x86dd => {
            let ip = Ipv6HeaderSlice::from_slice(payload).ok()?;
            // vxcd's tunnels send no extension headers.
            if ip.next_header() != IpNumber::UDP {
                return None;
            }
            (
                IpAddr::V6(ip.destination_addr()),
                payload.get(ip.slice().len()..)?,
            )
        }
        _ => return None,
    };
    let udp = UdpHeaderSlice::from_slice(transport).ok()?;
    if udp.destination_port() != udp_port {
        return None;
    }
    let vxlan = transport.get(udp.slice().len()..)?;
    let header = vxlan.get(..VXLAN_HEADER)?;
    if header[0] & VXLAN_FLAG_VNI == 0 {
        return None;
    }
    Some(Encapsulated {
        destination,
        udp_port,
        vni: u32::from_be_bytes([0, header[4], header[5], header[6]]),
        inner: &vxlan[VXLAN_HEADER..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut p = vec![VXLAN_FLAG_VNI, 0, 0, 0];
        p.extend_from_slice(&vni.to_be_bytes()[1..]);
        p.push(0);
        p.extend_from_slice(inner);
        p
    }

    /// (ether_type, bytes after the outer Ethernet header) of a UDP packet.
    fn outer(v6: bool, dport: u16, payload: &[u8]) -> (u16, Vec<u8>) {
        let mut frame = Vec::new();
        let eth = PacketBuilder::ethernet2([2; 6], [4; 6]);
        if v6 {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
                .udp(40000, dport)
                .write(&mut frame, payload)
                .unwrap();
        } else {
            eth.ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64)
                .udp(40000, dport)
                .write(&mut frame, payload)
                .unwrap();
        }
        let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
        (ether_type, frame[14..].to_vec())
    }

    #[test]
    fn opens_vxlan_over_ipv4_and_ipv6_even_when_snapped() {
        let inner = [0xab; 60];
        let (t, p) = outer(false, 4789, &vxlan_payload(17, &inner));
        let e = decapsulate(t, &p, 4789).expect("vxlan over IPv4");
        assert_eq!(e.destination, "10.99.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((e.vni, e.udp_port, e.inner), (17, 4789, &inner[..]));
        // Snapped inside the inner frame: the headers still parse.
        let snapped = &p[..20 + 8 + 8 + 10];
        assert_eq!(
            decapsulate(t, snapped, 4789).map(|e| e.inner.len()),
            Some(10)
        );
        let (t6, p6) = outer(true, 4789, &vxlan_payload(16_777_215, &inner));
        let e = decapsulate(t6, &p6, 4789).expect("vxlan over IPv6");
        assert_eq!(e.vni, 16_777_215);
        assert_eq!(e.destination, IpAddr::from([0xfe; 16]));
    }

    #[test]
    fn refuses_other_ports_protocols_and_headers_without_a_vni() {
        let (t, p) = outer(false, 4790, &vxlan_payload(17, &[0; 20]));
        assert_eq!(decapsulate(t, &p, 4789), None, "another UDP port");
        let mut no_vni = vxlan_payload(17, &[0; 20]);
        no_vni[0] = 0;
        let (t, p) = outer(false, 4789, &no_vni);
        assert_eq!(decapsulate(t, &p, 4789), None, "I flag clear");
        assert_eq!(decapsulate(0x88b5, &p, 4789), None, "not IP");
        let (t, p) = outer(false, 4789, &[VXLAN_FLAG_VNI, 0, 0]);
        assert_eq!(decapsulate(t, &p, 4789), None, "header cut short");
    }
}
