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
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_DUMP, NLM_F_DUMP_INTR,
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
        let mut unreadable = None;
        let out = self
            .dump_frames(payload, what, |frame| match frame.parse() {
                Ok(NetlinkPayload::InnerMessage(inner)) => keep(inner),
                Ok(_) => None,
                Err(e) => {
                    unreadable.get_or_insert(e);
                    None
                }
            })
            .await?;
        match unreadable {
            Some(e) => Err(DataplaneError::Connection(format!(
                "dumping {what}: unreadable answer: {e}"
            ))),
            None => Ok(out),
        }
    }

    /// [`DumpSocket::dump`] with each answer left as bytes for `keep`, which reads only what it
    /// needs of it (a link's counters and IPv4 and IPv6 settings are most of its message).
    pub(super) async fn dump_frames<T>(
        &mut self,
        payload: RouteNetlinkMessage,
        what: &str,
        mut keep: impl FnMut(&Frame<'_>) -> Option<T>,
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
                for frame in datagram_frames(&datagram) {
                    let frame = frame.map_err(|e| broken(format!("unreadable answer: {e}")))?;
                    // An answer to an earlier, abandoned dump on this socket.
                    if frame.sequence != self.seq {
                        continue;
                    }
                    if frame.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match frame.kind {
                        NLMSG_DONE => break 'datagrams,
                        NLMSG_ERROR => match frame.parse() {
                            Ok(NetlinkPayload::Error(err)) => match err.code {
                                Some(code) => {
                                    return Err(DataplaneError::Kernel {
                                        action: "dumping".into(),
                                        object: what.to_string(),
                                        errno: Errno(-code.get()),
                                    })
                                }
                                None => break 'datagrams,
                            },
                            _ => return Err(broken("unreadable error answer".into())),
                        },
                        NLMSG_NOOP | NLMSG_OVERRUN => {}
                        _ => out.extend(keep(&frame)),
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

/// One netlink message of a datagram: its header read, the rest left as bytes until someone
/// needs it parsed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame<'a> {
    /// `nlmsg_type`: `RTM_NEWLINK`, `NLMSG_DONE`, ...
    pub kind: u16,
    pub flags: u16,
    pub sequence: u32,
    /// The netlink port id of the socket whose request caused it (0: the kernel's own).
    pub port: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

impl Frame<'_> {
    /// The message after its 16-byte header (`RTM_*` messages: their `ifinfomsg`, `tcmsg`, ...).
    pub fn payload(&self) -> &[u8] {
        self.bytes.get(16..).unwrap_or_default()
    }

    /// The whole message parsed.
    pub fn parse(&self) -> Result<NetlinkPayload<RouteNetlinkMessage>, String> {
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(self.bytes)
            .map(|m| m.payload)
            .map_err(|e| e.to_string())
    }
}

/// The netlink messages of one datagram, in order, only their headers read: `Err` for a frame
/// that cannot be read (after a framing error, nothing more: the next one cannot be found).
pub(super) fn datagram_frames(
    datagram: &[u8],
) -> impl Iterator<Item = Result<Frame<'_>, String>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = datagram.get(at..).filter(|rest| !rest.is_empty())?;
        // Checked: 16 <= length <= what the datagram holds.
        let frame = match NetlinkBuffer::new_checked(rest) {
            Ok(buffer) => Frame {
                kind: buffer.message_type(),
                flags: buffer.flags(),
                sequence: buffer.sequence_number(),
                port: buffer.port_number(),
                bytes: &rest[..buffer.length() as usize],
            },
            Err(e) => {
                at = datagram.len();
                return Some(Err(e.to_string()));
            }
        };
        at += (frame.bytes.len() + 3) & !3;
        Some(Ok(frame))
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

    fn name(payload: &NetlinkPayload<RouteNetlinkMessage>) -> Option<String> {
        match payload {
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
        let out: Vec<_> = datagram_frames(&datagram).collect();
        assert_eq!(out.len(), 3, "{out:?}");
        let parsed = |i: usize| out[i].as_ref().ok().and_then(|f| f.parse().ok());
        assert_eq!(parsed(0).as_ref().and_then(name).as_deref(), Some("ab1"));
        assert_eq!(parsed(1).as_ref().and_then(name).as_deref(), Some("cd22"));
        assert_eq!(
            out[0].as_ref().map(|f| f.kind).ok(),
            Some(16),
            "RTM_NEWLINK"
        );
        assert!(out[2].is_err());
        assert_eq!(datagram_frames(&[]).count(), 0);
    }
}
