//! Whole-table dumps on a netlink socket of their own, read one datagram at a time.
//!
//! Why not the rtnetlink connection the requests use: its task parses every message the socket
//! holds before the asker sees the first (it reads until the socket would block, and a dump
//! refills it on each read), so a whole dump sat parsed in its queue at once. A parsed link
//! message is many times what vxcd keeps of it (its IPv4 and IPv6 settings alone are two arrays
//! of numbers): at 2,000 links that queue was a 26 MiB peak, and the allocator kept the memory.
//! Here each datagram (up to 32 KiB of messages) is parsed one message at a time and handed to
//! the caller's `keep`, which keeps only what it needs, before the next is read.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use super::nl::{self, Errno};
use super::DataplaneError;

/// How many times an interrupted dump is restarted before giving up.
const DUMP_ATTEMPTS: usize = 8;

/// A netlink socket for dumps only (the kernel runs one dump per socket at a time: its owner
/// keeps it behind a lock).
pub(super) struct DumpSocket {
    socket: TokioSocket,
    seq: u32,
}

impl std::fmt::Debug for DumpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpSocket")
            .field("seq", &self.seq)
            .finish()
    }
}

impl DumpSocket {
    /// Opens it in the calling thread's network namespace.
    pub(super) fn open() -> Result<Self, DataplaneError> {
        let fail =
            |e: std::io::Error| DataplaneError::Connection(format!("opening the dump socket: {e}"));
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(fail)?;
        socket.socket_mut().bind_auto().map_err(fail)?;
        socket
            .socket_mut()
            .connect(&SocketAddr::new(0, 0))
            .map_err(fail)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends a dump request and keeps what `keep` makes of each answer, restarting the dump
    /// while the kernel marks it interrupted by a concurrent change (`NLM_F_DUMP_INTR`).
    pub(super) async fn dump<T>(
        &mut self,
        payload: RouteNetlinkMessage,
        what: &str,
        mut keep: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, DataplaneError> {
        let broken = |e: String| DataplaneError::Connection(format!("dumping {what}: {e}"));
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let mut request = nl::message(payload.clone(), NLM_F_DUMP);
            request.header.sequence_number = self.seq;
            request.finalize();
            let mut bytes = vec![0; request.buffer_len()];
            request.serialize(&mut bytes);
            self.socket
                .send(&bytes)
                .await
                .map_err(|e| broken(e.to_string()))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'datagrams: loop {
                let (datagram, _) = self
                    .socket
                    .recv_from_full()
                    .await
                    .map_err(|e| broken(e.to_string()))?;
                for message in datagram_messages(&datagram) {
                    let message = message.map_err(|e| broken(format!("unreadable answer: {e}")))?;
                    // An answer to an earlier, abandoned dump on this socket.
                    if message.header.sequence_number != self.seq {
                        continue;
                    }
                    if message.header.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match message.payload {
                        NetlinkPayload::InnerMessage(inner) => out.extend(keep(inner)),
                        NetlinkPayload::Done(_) => break 'datagrams,
                        NetlinkPayload::Error(err) => match err.code {
                            Some(code) => {
                                return Err(DataplaneError::Kernel {
                                    action: "dumping".into(),
                                    object: what.to_string(),
                                    errno: Errno(-code.get()),
                                })
                            }
                            None => break 'datagrams,
                        },
                        NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                        _ => {}
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
            log::debug!("dump of {what} interrupted by a concurrent change; restarting");
        }
        Err(DataplaneError::DumpInterrupted {
            what: what.to_string(),
            attempts: DUMP_ATTEMPTS,
        })
    }
}

/// The netlink messages of one datagram, in order, each parsed only when reached: `Err` for one
/// that cannot be read (after a framing error, nothing more: the next one cannot be found).
pub(super) fn datagram_messages(
    datagram: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<RouteNetlinkMessage>, String>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = datagram.get(at..).filter(|rest| !rest.is_empty())?;
        // Checked: 16 <= length <= what the datagram holds.
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(buffer) => buffer.length() as usize,
            Err(e) => {
                at = datagram.len();
                return Some(Err(e.to_string()));
            }
        };
        at += (len + 3) & !3;
        Some(NetlinkMessage::deserialize(&rest[..len]).map_err(|e| e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn bytes(name: &str) -> Vec<u8> {
        let mut link = LinkMessage::default();
        // A name of 3 bytes leaves the message's length off a multiple of 4: padding follows.
        link.attributes = vec![LinkAttribute::IfName(name.into())];
        let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn name(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<String> {
        match &msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            }
            _ => None,
        }
    }

    #[test]
    fn a_datagram_yields_each_message_in_order_then_stops_at_a_broken_frame() {
        let mut datagram = [bytes("ab1"), bytes("cd22")].concat();
        // A frame whose length field says more than the datagram holds.
        datagram.extend_from_slice(&[200, 0, 0, 0, 16, 0, 0, 0]);
        let out: Vec<_> = datagram_messages(&datagram).collect();
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0].as_ref().ok().and_then(name).as_deref(), Some("ab1"));
        assert_eq!(out[1].as_ref().ok().and_then(name).as_deref(), Some("cd22"));
        assert!(out[2].is_err());
        assert_eq!(datagram_messages(&[]).count(), 0);
    }
}
