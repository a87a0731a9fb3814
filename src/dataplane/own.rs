//! Which kernel events vxcd caused itself, so that its own changes do not look like drift.
//!
//! tc events carry the netlink port id of the request that caused them: those whose port id is
//! the dataplane's own request socket's are vxcd's (exact; this includes the kernel's echo of
//! every qdisc vxcd reads, which alone made a pass after every `vxc.stats` or scrape).
//!
//! Link events are not told apart: on the 6.1 kernels vxcd runs on, link notifications carry port
//! id 0 whoever caused them, and the kernel adds its own later ones (link-watch carrier and
//! operstate changes, a parent's promiscuity). A window after each of vxcd's own link changes was
//! tried and dropped: it hid hand-made changes made within it (an MTU set on a port just after a
//! repair), and still let a late link-watch event through under load. Link events therefore
//! still run a pass (coalesced per burst).

use std::sync::atomic::{AtomicU32, Ordering};

use super::{KernelEvent, KernelObject};

#[derive(Debug, Default)]
pub struct OwnChanges {
    /// The request socket's netlink port id (0: unknown, nothing is taken for vxcd's).
    port_id: AtomicU32,
}

impl OwnChanges {
    pub fn set_port_id(&self, port_id: u32) {
        self.port_id.store(port_id, Ordering::Relaxed);
    }

    /// Whether vxcd caused `event` (`port_id`: the event message's netlink port id).
    pub fn caused(&self, event: &KernelEvent, port_id: u32) -> bool {
        let own = self.port_id.load(Ordering::Relaxed);
        matches!(event.object, KernelObject::Qdisc | KernelObject::Filter)
            && own != 0
            && port_id == own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::EventChange;

    fn event(object: KernelObject) -> KernelEvent {
        KernelEvent {
            object,
            change: EventChange::Changed,
            ifindex: 11,
            name: None,
            caused_by_vxcd: false,
        }
    }

    #[test]
    fn tc_events_of_vxcds_socket_are_its_own_and_nothing_else_is() {
        let own = OwnChanges::default();
        // Unknown port id: nothing is vxcd's.
        assert!(!own.caused(&event(KernelObject::Qdisc), 0));
        own.set_port_id(77);
        assert!(own.caused(&event(KernelObject::Qdisc), 77));
        assert!(own.caused(&event(KernelObject::Filter), 77));
        assert!(!own.caused(&event(KernelObject::Qdisc), 4242));
        assert!(!own.caused(&event(KernelObject::Qdisc), 0));
        // Link events carry 0 on 6.1 whoever made them: never taken for vxcd's.
        assert!(!own.caused(&event(KernelObject::Link), 77));
        assert!(!own.caused(&event(KernelObject::EventsLost), 77));
    }
}
