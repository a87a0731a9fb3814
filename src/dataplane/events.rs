//! Kernel link and tc change notifications, which trigger convergence.

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::tc::TcMessage;
use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;

use super::{DataplaneError, ObservedLink};

use super::conn::*;

pub(super) const RTMGRP_LINK: u32 = 0x1;

pub(super) const RTMGRP_TC: u32 = 0x8;

/// Which kind of kernel object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelObject {
    Link,
    Qdisc,
    Filter,
    /// The kernel dropped events (`ENOBUFS` on the event socket): anything may have changed.
    EventsLost,
}

/// A link or tc change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub object: KernelObject,
    pub change: EventChange,
    pub ifindex: u32,
    /// The link name (link events only).
    pub name: Option<String>,
    /// The whole link as the notification shows it (link events only): what tells vxcd's own
    /// link changes from drift (`dataplane/drift.rs`).
    pub link: Option<Box<ObservedLink>>,
    /// vxcd's own change, not drift (see `dataplane/own.rs`).
    pub caused_by_vxcd: bool,
}

/// Kind of change in a [`KernelEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventChange {
    Added,
    Removed,
    Changed,
}

pub(super) fn to_event(msg: RouteNetlinkMessage) -> Option<KernelEvent> {
    let link_event = |l: &LinkMessage, change: EventChange| KernelEvent {
        object: KernelObject::Link,
        change,
        ifindex: l.header.index,
        name: l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }),
        link: super::msg::parse_link(l.clone()).map(Box::new),
        caused_by_vxcd: false,
    };
    let tc_event = |t: &TcMessage, object: KernelObject, change: EventChange| KernelEvent {
        object,
        change,
        ifindex: t.header.index as u32,
        name: None,
        link: None,
        caused_by_vxcd: false,
    };
    Some(match &msg {
        // A link's registration is announced with every flag marked changed.
        RouteNetlinkMessage::NewLink(l) if l.header.change_mask.bits() == u32::MAX => {
            link_event(l, EventChange::Added)
        }
        RouteNetlinkMessage::NewLink(l) => link_event(l, EventChange::Changed),
        RouteNetlinkMessage::DelLink(l) => link_event(l, EventChange::Removed),
        RouteNetlinkMessage::NewQueueDiscipline(t) => {
            tc_event(t, KernelObject::Qdisc, EventChange::Changed)
        }
        RouteNetlinkMessage::DelQueueDiscipline(t) => {
            tc_event(t, KernelObject::Qdisc, EventChange::Removed)
        }
        RouteNetlinkMessage::NewTrafficFilter(t) => {
            tc_event(t, KernelObject::Filter, EventChange::Changed)
        }
        RouteNetlinkMessage::DelTrafficFilter(t) => {
            tc_event(t, KernelObject::Filter, EventChange::Removed)
        }
        _ => return None,
    })
}

impl Dataplane {
    /// Subscribes to link and tc notifications on a second socket. The receiver yields
    /// small events; dropping it ends the subscription at the next event.
    pub async fn events(&self) -> Result<mpsc::Receiver<KernelEvent>, DataplaneError> {
        self.events_with_buffer(0).await
    }

    /// [`Dataplane::events`] with the event socket's receive buffer set to `rcvbuf` bytes (0: the
    /// kernel's default). A small one makes bursts overflow it, which tests use.
    pub async fn events_with_buffer(
        &self,
        rcvbuf: usize,
    ) -> Result<mpsc::Receiver<KernelEvent>, DataplaneError> {
        use netlink_sys::{
            protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
        };
        let fail = |what: &str, e: std::io::Error| {
            DataplaneError::Connection(format!("{what} on the event socket: {e}"))
        };
        // A socket of its own, read here one datagram at a time (as `dump.rs` does): through
        // rtnetlink's connection, every notification the kernel had queued was parsed whole
        // into an unbounded queue before the first was looked at; a bulk deletion of 2,000
        // links raises thousands at once. Here what waits is the kernel's socket buffer, and
        // when it overflows the kernel says so (ENOBUFS: a full pass, nothing missed).
        let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(|e| fail("opening", e))?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_TC))
            .map_err(|e| fail("subscribing to link and tc events", e))?;
        if rcvbuf > 0 {
            socket
                .socket_mut()
                .set_rx_buf_sz(rcvbuf)
                .map_err(|e| fail("sizing the buffer", e))?;
        }
        let (tx, rx) = mpsc::channel(4096);
        let own = self.own.clone();
        tokio::spawn(async move {
            let lost = || KernelEvent {
                object: KernelObject::EventsLost,
                change: EventChange::Changed,
                ifindex: 0,
                name: None,
                link: None,
                caused_by_vxcd: false,
            };
            loop {
                let datagram = match socket.recv_from_full().await {
                    Ok((datagram, _)) => datagram,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if tx.send(lost()).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        log::error!("reading kernel events failed, drift is found by the periodic pass only: {e}");
                        let _ = tx.send(lost()).await;
                        break;
                    }
                };
                for msg in super::dump::datagram_messages(&datagram) {
                    // One the parser does not know: not an object vxcd makes.
                    let Ok(msg) = msg else { continue };
                    let port_id = msg.header.port_number;
                    let event = match msg.payload {
                        NetlinkPayload::InnerMessage(inner) => to_event(inner).map(|mut e| {
                            e.caused_by_vxcd = own.caused(&e, port_id);
                            e
                        }),
                        NetlinkPayload::Overrun(_) => Some(lost()),
                        _ => None,
                    };
                    if let Some(event) = event {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}
