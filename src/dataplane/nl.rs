//! Netlink transport: acked requests and single reads on one rtnetlink connection (dumps have
//! a socket of their own: `dump.rs`).

use futures::StreamExt;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

/// A kernel error: the positive errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = nix::errno::Errno::from_raw(self.0);
        write!(f, "{} ({e:?})", e.desc())
    }
}

/// Failure of one request: the kernel refused it, or the connection is gone.
#[derive(Debug, Clone)]
pub enum ReqError {
    Kernel(Errno),
    Connection(String),
}

pub(super) fn message(
    payload: RouteNetlinkMessage,
    flags: u16,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    msg
}

/// Sends a request that expects an ack; `flags` adds NLM_F_CREATE/EXCL/REPLACE.
pub async fn ack(
    handle: &Handle,
    payload: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), ReqError> {
    let mut handle = handle.clone();
    let mut responses = handle
        .request(message(payload, flags | NLM_F_ACK))
        .map_err(|e| ReqError::Connection(e.to_string()))?;
    while let Some(msg) = responses.next().await {
        if let NetlinkPayload::Error(err) = msg.payload {
            if let Some(code) = err.code {
                return Err(ReqError::Kernel(Errno(-code.get())));
            }
        }
    }
    Ok(())
}

/// Sends a non-dump request that reads one object (`RTM_GET*` without `NLM_F_DUMP`) and
/// returns the objects the kernel answered with, up to its ack; `flags` adds e.g.
/// `NLM_F_ECHO`. The ack is requested so that a request answered by no object (a qdisc GET on
/// a built-in qdisc) still ends.
pub async fn get(
    handle: &Handle,
    payload: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, ReqError> {
    let mut handle = handle.clone();
    let mut responses = handle
        .request(message(payload, flags | NLM_F_ACK))
        .map_err(|e| ReqError::Connection(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(msg) = responses.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(err) => {
                if let Some(code) = err.code {
                    return Err(ReqError::Kernel(Errno(-code.get())));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
