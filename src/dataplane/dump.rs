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
                let mut at = 0;
                while at < datagram.len() {
                    let rest = &datagram[at..];
                    let len = NetlinkBuffer::new_checked(rest)
                        .map_err(|e| broken(format!("unreadable answer: {e}")))?
                        .length() as usize;
                    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                        .map_err(|e| broken(format!("unreadable answer: {e}")))?;
                    at += (len + 3) & !3;
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
