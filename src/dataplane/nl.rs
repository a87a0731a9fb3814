//! Netlink transport: one rtnetlink connection, acked requests and dumps that are
//! retried when the kernel flags them `NLM_F_DUMP_INTR`.

use futures::StreamExt;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::DataplaneError;

/// How many times an interrupted dump is restarted before giving up.
const DUMP_ATTEMPTS: usize = 8;

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

fn message(payload: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
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

/// Sends a dump request and collects the answers, restarting it while the kernel marks
/// it interrupted by a concurrent change (`NLM_F_DUMP_INTR`, which neither rtnetlink
/// nor netlink-proto checks).
pub async fn dump(
    handle: &Handle,
    payload: RouteNetlinkMessage,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, DataplaneError> {
    for _ in 0..DUMP_ATTEMPTS {
        let mut handle = handle.clone();
        let mut responses = handle
            .request(message(payload.clone(), NLM_F_DUMP))
            .map_err(|e| DataplaneError::Connection(format!("dumping {what}: {e}")))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        while let Some(msg) = responses.next().await {
            if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        return Err(DataplaneError::Kernel {
                            action: "dumping".into(),
                            object: what.to_string(),
                            errno: Errno(-code.get()),
                        });
                    }
                }
                _ => {}
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
