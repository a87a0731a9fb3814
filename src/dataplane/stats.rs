//! The kernel's counters of a VXC end: the end interface's (`IFLA_STATS64`) and its shaper's
//! (the root TBF's `TCA_STATS2`), each read with one request, no dump.
//!
//! A rate change replaces the TBF's parameters in place (same handle), so the shaper's totals
//! run on across it; they start again only when the TBF itself is made again (a repair, or the
//! end interface recreated).

use netlink_packet_core::NLM_F_ECHO;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use super::conn::kernel_err;
use super::nl::{self, Errno, ReqError};
use super::{Dataplane, DataplaneError, TBF_HANDLE_MAJOR};

use libc::{EINVAL, ENODEV, ENOENT};

/// Counters of an end interface, as the kernel keeps them (`rx`: frames the end received, from
/// the wire or the pipe; `tx`: frames it sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// Counters of an end's shaper (its root TBF): what it sent, what it dropped over the rate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShaperCounters {
    pub sent_bytes: u64,
    pub sent_packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub backlog_bytes: u64,
    pub backlog_packets: u64,
}

/// One end's counters; `None` where the object is not in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndCounters {
    pub interface: Option<InterfaceCounters>,
    pub shaper: Option<ShaperCounters>,
}

impl Dataplane {
    /// The counters of the end interface `name` and of vxcd's TBF on it.
    pub async fn end_counters(&self, name: &str) -> Result<EndCounters, DataplaneError> {
        let err = |what: &str, e: ReqError| kernel_err("reading", &format!("{what} of {name}"), e);
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::IfName(name.to_string())];
        let link = match nl::get(&self.handle, RouteNetlinkMessage::GetLink(msg), 0).await {
            Ok(msgs) => msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            }),
            Err(ReqError::Kernel(Errno(e))) if e == ENODEV => None,
            Err(e) => return Err(err("counters", e)),
        };
        let Some(link) = link else {
            return Ok(EndCounters::default());
        };
        let interface = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(InterfaceCounters {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_dropped: s.rx_dropped,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_dropped: s.tx_dropped,
            }),
            _ => None,
        });
        let mut req = TcMessage::default();
        req.header.index = link.header.index as i32;
        req.header.parent = TcHandle::ROOT;
        let qdisc = match nl::get(
            &self.handle,
            RouteNetlinkMessage::GetQueueDiscipline(req),
            NLM_F_ECHO,
        )
        .await
        {
            Ok(msgs) => msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => Some(q),
                _ => None,
            }),
            Err(ReqError::Kernel(Errno(e))) if e == ENOENT || e == EINVAL || e == ENODEV => None,
            Err(e) => return Err(err("shaper counters", e)),
        };
        let shaper = qdisc
            .filter(|q| q.header.handle.major == TBF_HANDLE_MAJOR)
            .map(|q| shaper_counters(&q.attributes));
        Ok(EndCounters { interface, shaper })
    }
}

fn shaper_counters(attributes: &[TcAttribute]) -> ShaperCounters {
    let mut c = ShaperCounters::default();
    for a in attributes {
        match a {
            TcAttribute::Stats2(stats) => {
                for s in stats {
                    match s {
                        TcStats2::Basic(b) => {
                            c.sent_bytes = b.bytes;
                            c.sent_packets = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            c.drops = u64::from(q.drops);
                            c.overlimits = u64::from(q.overlimits);
                            c.backlog_bytes = u64::from(q.backlog);
                            c.backlog_packets = u64::from(q.qlen);
                        }
                        _ => {}
                    }
                }
                return c;
            }
            TcAttribute::Stats(s) => {
                // Older kernels: the compat block (32-bit packet and drop counts).
                c.sent_bytes = s.bytes;
                c.sent_packets = u64::from(s.packets);
                c.drops = u64::from(s.drops);
                c.overlimits = u64::from(s.overlimits);
                c.backlog_bytes = u64::from(s.backlog);
                c.backlog_packets = u64::from(s.qlen);
            }
            _ => {}
        }
    }
    c
}
