//! Kernel link and tc change notifications, which trigger convergence.

use netlink_packet_core::NLMSG_OVERRUN;
use netlink_packet_route::link::LinkHeader;
use netlink_packet_route::tc::TcHeader;
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

pub(super) const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;

/// The event a notification of message type `kind` is, read from its bytes after the netlink
/// header: of a link, only what [`ObservedLink`] holds (`msg::link_from_payload`); of a qdisc or
/// filter, only its header's ifindex. Each of vxcd's own changes raises several notifications,
/// parsed whole they were much of a burst's CPU time.
pub(super) fn frame_event(kind: u16, payload: &[u8]) -> Option<KernelEvent> {
    let link_event = |change: EventChange| {
        let header = LinkHeader::parse(payload).ok()?;
        let added = change == EventChange::Changed && header.change_mask.bits() == u32::MAX;
        let link = super::msg::link_from_payload(payload);
        Some(KernelEvent {
            object: KernelObject::Link,
            // A link's registration is announced with every flag marked changed.
            change: if added { EventChange::Added } else { change },
            ifindex: header.index,
            name: link.as_ref().map(|l| l.name.clone()),
            link: link.map(Box::new),
            caused_by_vxcd: false,
        })
    };
    let tc_event = |object: KernelObject, change: EventChange| {
        let header = TcHeader::parse(payload).ok()?;
        Some(KernelEvent {
            object,
            change,
            ifindex: header.index as u32,
            name: None,
            link: None,
            caused_by_vxcd: false,
        })
    };
    match kind {
        RTM_NEWLINK => link_event(EventChange::Changed),
        RTM_DELLINK => link_event(EventChange::Removed),
        RTM_NEWQDISC => tc_event(KernelObject::Qdisc, EventChange::Changed),
        RTM_DELQDISC => tc_event(KernelObject::Qdisc, EventChange::Removed),
        RTM_NEWTFILTER => tc_event(KernelObject::Filter, EventChange::Changed),
        RTM_DELTFILTER => tc_event(KernelObject::Filter, EventChange::Removed),
        _ => None,
    }
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
                for frame in super::dump::datagram_frames(&datagram) {
                    // One that cannot be framed: nothing after it can be found either.
                    let Ok(frame) = frame else { continue };
                    let event = if frame.kind == NLMSG_OVERRUN {
                        Some(lost())
                    } else {
                        frame_event(frame.kind, frame.payload()).map(|mut e| {
                            e.caused_by_vxcd = own.caused(&e, frame.port);
                            e
                        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
    use netlink_packet_route::tc::TcMessage;

    fn link_bytes(change_mask: u32) -> Vec<u8> {
        let mut msg = LinkMessage::default();
        msg.header.index = 9;
        msg.header.change_mask = LinkFlags::from_bits_retain(change_mask);
        msg.attributes = vec![LinkAttribute::IfName("cust0.7".into())];
        let mut out = vec![0; msg.buffer_len()];
        msg.emit(&mut out);
        out
    }

    #[test]
    fn notifications_become_events_of_their_object_and_change() {
        let added = frame_event(RTM_NEWLINK, &link_bytes(u32::MAX)).unwrap();
        assert_eq!(
            (
                added.object,
                added.change,
                added.ifindex,
                added.name.as_deref()
            ),
            (KernelObject::Link, EventChange::Added, 9, Some("cust0.7"))
        );
        assert_eq!(added.link.map(|l| l.name), Some("cust0.7".to_owned()));
        let changed = frame_event(RTM_NEWLINK, &link_bytes(1)).unwrap();
        assert_eq!(changed.change, EventChange::Changed);
        let removed = frame_event(RTM_DELLINK, &link_bytes(u32::MAX)).unwrap();
        assert_eq!(removed.change, EventChange::Removed);

        let mut qdisc = TcMessage::default();
        qdisc.header.index = 33;
        let mut tc = vec![0; qdisc.buffer_len()];
        qdisc.emit(&mut tc);
        for (kind, object, change) in [
            (RTM_NEWQDISC, KernelObject::Qdisc, EventChange::Changed),
            (RTM_DELQDISC, KernelObject::Qdisc, EventChange::Removed),
            (RTM_NEWTFILTER, KernelObject::Filter, EventChange::Changed),
            (RTM_DELTFILTER, KernelObject::Filter, EventChange::Removed),
        ] {
            let e = frame_event(kind, &tc).unwrap();
            assert_eq!((e.object, e.change, e.ifindex), (object, change, 33));
        }
        // Other messages, and ones too short for their header, are no events.
        assert_eq!(frame_event(20, &tc), None, "RTM_NEWADDR");
        assert_eq!(frame_event(RTM_NEWQDISC, &tc[..3]), None);
        assert_eq!(frame_event(RTM_NEWLINK, &[0; 8]), None);
    }
}
