//! Probe frames and the ingress injector.
//!
//! A probe is an Ethernet frame with EtherType 0x88B5 (IEEE "local experimental") whose
//! payload starts with [`PROBE_MAGIC`], then the FNV-1a 64 hash of the VXC id, a nonce and the
//! direction. Source and destination MACs are locally administered unicast addresses, so no
//! host stack takes the frame for itself.
//!
//! # Why a tap and `mirred ingress`
//! A probe must enter an end the way a customer frame does: through the receive path of the
//! port interface (VLAN untagging, delivery to the 802.1Q subinterface, its ingress qdisc,
//! the pipe). An AF_PACKET send on the port or on the end interface is a *transmit* there
//! (`dev_queue_xmit`): the frame would leave on the wire, not enter the pipe.
//! `PACKET_QDISC_BYPASS` only skips the qdisc of that same transmit. No packet-socket option
//! turns a send into a receive.
//!
//! What does: a frame written into a tap device's file descriptor is *received* by the tap
//! (`netif_rx`), and a u32 filter in the tap's ingress qdisc with `mirred ingress redirect dev
//! <port>` hands it to the receive path of the port interface (`TCA_INGRESS_REDIR`). From
//! there on it takes exactly the path of a frame from the wire: the kernel moves its tag to
//! metadata, `vlan_do_receive` gives it to the subinterface of that VLAN (or, untagged, it
//! stays on the port), the end's ingress filter redirects it into the pipe, the other end's
//! TBF and tagging apply, and it leaves on the other port's wire, where the capture sees it
//! as outgoing. The tap exists only while its fd is open (no leftover device after a crash)
//! and carries IPv6 address generation off so it sends nothing by itself.
//!
//! Limits: the NIC's own receive (hardware VLAN filter, FCS, the cable) is not crossed; the
//! probe proves the kernel path from the port's receive onwards. A foreign ingress qdisc on
//! the port is not touched (the tap's filter lives on the tap).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcMirrorActionType};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// EtherType of probes (IEEE 802 local experimental EtherType 1).
pub const PROBE_ETHER_TYPE: u16 = 0x88b5;
/// First payload bytes of every probe.
pub const PROBE_MAGIC: [u8; 8] = *b"vxcdPRB1";
/// Source MAC of probes (locally administered).
pub const PROBE_SRC_MAC: [u8; 6] = [0x06, 0x76, 0x78, 0x63, 0x70, 0x01];
/// Destination MAC of probes (locally administered unicast: nobody's address).
pub const PROBE_DST_MAC: [u8; 6] = [0x06, 0x76, 0x78, 0x63, 0x70, 0x02];

/// What a probe carries after the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeMark {
    pub vxc_hash: u64,
    pub nonce: u64,
    /// 0: sent into the A-End, 1: into the B-End.
    pub entry: u8,
}

/// FNV-1a 64 of a VXC id.
pub fn vxc_hash(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Builds a 64-byte (60 + FCS) probe frame, tagged 0x8100 `vlan` when given.
pub fn build(vlan: Option<u16>, mark: ProbeMark) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&PROBE_DST_MAC);
    f.extend_from_slice(&PROBE_SRC_MAC);
    if let Some(vid) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&PROBE_ETHER_TYPE.to_be_bytes());
    f.extend_from_slice(&PROBE_MAGIC);
    f.extend_from_slice(&mark.vxc_hash.to_be_bytes());
    f.extend_from_slice(&mark.nonce.to_be_bytes());
    f.push(mark.entry);
    f.resize(f.len().max(60), 0);
    f
}

/// The probe mark in a payload after EtherType 0x88B5, if it is one of ours.
pub fn parse(ether_type: u16, payload: &[u8]) -> Option<ProbeMark> {
    if ether_type != PROBE_ETHER_TYPE || payload.len() < 25 || payload[..8] != PROBE_MAGIC {
        return None;
    }
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&payload[8..16]);
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&payload[16..24]);
    Some(ProbeMark {
        vxc_hash: u64::from_be_bytes(hash),
        nonce: u64::from_be_bytes(nonce),
        entry: payload[24],
    })
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;
const ETH_P_ALL: u16 = 0x0003;

/// A tap whose received frames go to the receive path of one port interface.
pub struct Injector {
    tap: OwnedFd,
    name: String,
    index: u32,
    target: String,
    rtnl: Socket,
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
        *dst = *src as libc::c_char;
    }
    req
}

impl Injector {
    /// Creates tap `vxprobe%d`, no IPv6, up, with an ingress qdisc and a match-all u32
    /// filter `mirred ingress redirect` to `target` (a port interface).
    pub fn new(target: &str) -> io::Result<Injector> {
        let target_index = super::ring::ifindex(target)?;
        // SAFETY: open(2) of a fixed path; the fd is owned right away.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("opening /dev/net/tun for the probe injector: {e}"),
            ));
        }
        // SAFETY: fresh fd nobody else owns.
        let tap = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq("vxprobe%d");
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
        if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("creating the probe tap (TUNSETIFF): {e}"),
            ));
        }
        let name: String = req
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect();
        let index = super::ring::ifindex(&name)?;
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening rtnetlink for the probe injector: {e}"),
            )
        })?;
        sock.bind_auto().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding rtnetlink for the probe injector: {e}"),
            )
        })?;
        // IPv6 address generation off before the link goes up, so the tap never gets a
        // link-local address and sends no ND/MLD by itself (over rtnetlink rather than
        // /proc/sys, which the unit's ProtectKernelTunables= makes read-only). No IPv6 on this
        // host (EAFNOSUPPORT) is fine: then nothing could be sent.
        let mut quiet = LinkMessage::default();
        quiet.header.index = index;
        quiet.attributes = vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )])];
        match request(&sock, RouteNetlinkMessage::SetLink(quiet), false) {
            Err(e) if e.raw_os_error() != Some(libc::EAFNOSUPPORT) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("switching IPv6 address generation off on {name}: {e}"),
                ))
            }
            _ => {}
        }
        // Up over rtnetlink, not the SIOCSIFFLAGS ioctl: that needs an AF_INET socket, which the
        // unit's RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_PACKET refuses.
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        request(&sock, RouteNetlinkMessage::SetLink(link), false)
            .map_err(|e| io::Error::new(e.kind(), format!("setting {name} up: {e}")))?;
        let mut qdisc = TcMessage::with_index(index as i32);
        qdisc.header.handle = TcHandle::from(INGRESS_HANDLE);
        qdisc.header.parent = TcHandle::from(TC_H_INGRESS);
        qdisc.attributes = vec![TcAttribute::Kind("ingress".into())];
        request(&sock, RouteNetlinkMessage::NewQueueDiscipline(qdisc), true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the ingress qdisc on {name}: {e}"),
            )
        })?;
        let mut filter = TcMessage::with_index(index as i32);
        filter.header.parent = TcHandle::from(INGRESS_HANDLE);
        filter.header.info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
        filter.attributes = crate::dataplane::match_all_redirect_attrs(
            target_index,
            TcMirrorActionType::IngressRedir,
        );
        request(&sock, RouteNetlinkMessage::NewTrafficFilter(filter), true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the mirred ingress redirect {name} -> {target}: {e}"),
            )
        })?;
        Ok(Injector {
            tap,
            name,
            index,
            target: target.to_string(),
            rtnl: sock,
        })
    }

    /// Hands `frame` to the receive path of the target port interface.
    pub fn inject(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid buffer of the length passed.
        let rc = unsafe { libc::write(self.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "injecting a probe through {} into {}: {e}",
                    self.name, self.target
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Injector {
    /// Closing the fd removes the tap too, but asynchronously (seen here: the device was
    /// still listed after the close); deleting it first makes it gone when drop returns.
    fn drop(&mut self) {
        let mut link = LinkMessage::default();
        link.header.index = self.index;
        if let Err(e) = request(&self.rtnl, RouteNetlinkMessage::DelLink(link), false) {
            log::debug!(
                "deleting probe tap {}: {e} (closing its fd removes it)",
                self.name
            );
        }
    }
}

/// Sends one request and waits for its ack; a kernel error becomes an io::Error with its errno.
fn request(sock: &Socket, msg: RouteNetlinkMessage, create: bool) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    if create {
        header.flags |= NLM_F_CREATE | NLM_F_EXCL;
    }
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let mut rx = Vec::with_capacity(8192);
    loop {
        rx.clear();
        sock.recv(&mut rx, 0)?;
        let mut offset = 0;
        while offset < rx.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..])
                .map_err(|e| io::Error::other(format!("decoding the rtnetlink answer: {e}")))?;
            let len = reply.header.length as usize;
            if let NetlinkPayload::Error(err) = reply.payload {
                return match err.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                };
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip_and_size() {
        let mark = ProbeMark {
            vxc_hash: vxc_hash("vxc-1"),
            nonce: 42,
            entry: 1,
        };
        let f = build(Some(200), mark);
        assert_eq!(f.len(), 60);
        let t = super::super::frame::parse(&f, None).expect("parse");
        assert_eq!(t.outer.map(|t| t.vid), Some(200));
        assert_eq!(parse(t.ether_type, t.payload), Some(mark));
        assert_eq!(parse(0x0800, t.payload), None);
        let mut other = t.payload.to_vec();
        other[0] ^= 1;
        assert_eq!(parse(PROBE_ETHER_TYPE, &other), None);
    }
}
