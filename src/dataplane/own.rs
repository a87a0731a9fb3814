//! Which kernel events vxcd caused itself, so that its own changes do not look like drift.
//!
//! - tc events carry the netlink port id of the request that caused them: those whose port id is
//!   the dataplane's own socket's are vxcd's (exact; this includes the echo of every qdisc read).
//! - link notifications on the 6.1 kernels vxcd runs on carry port id 0 whoever caused them, so
//!   every link change vxcd sends is noted (name and ifindex) just before it is sent; an event
//!   for a link noted in the last [`OWN_WINDOW`] is vxcd's. A deletion is vxcd's only when vxcd
//!   deleted that link: a link vxcd made a moment ago and someone deletes by hand is drift.
//!
//! A link event showing an IPv6 address generation mode other than `none` is never vxcd's (it sets
//! `none` on every link it manages). What this cannot tell apart: another hand-made change (not a
//! deletion, not the address mode) to a link within [`OWN_WINDOW`] of vxcd's own change to it.
//! The periodic pass (`reconcile.interval_s`) finds that one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{EventChange, KernelEvent, KernelObject};

/// How long after its own change to a link an event for it is taken for vxcd's. The kernel
/// reports carrier and operstate changes from its link-watch work, up to a second later and
/// later still on a loaded host (2 s let a burst under TCG run a pass of its own once).
pub const OWN_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
struct Noted {
    at: Instant,
    deleted: bool,
}

#[derive(Debug, Default)]
pub struct OwnChanges {
    /// The request socket's netlink port id (0: unknown, nothing is taken for vxcd's by it).
    port_id: std::sync::atomic::AtomicU32,
    links: Mutex<HashMap<LinkKey, Noted>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum LinkKey {
    Index(u32),
    Name(String),
}

impl OwnChanges {
    pub fn set_port_id(&self, port_id: u32) {
        self.port_id
            .store(port_id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes a link change about to be sent (`index` 0: not known yet, a creation).
    pub fn note_link(&self, index: u32, name: Option<&str>, deleted: bool) {
        let now = Instant::now();
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded: what is older than the window is of no use any more.
        if links.len() > 4096 {
            links.retain(|_, n| now.duration_since(n.at) < OWN_WINDOW);
        }
        let noted = Noted { at: now, deleted };
        if index != 0 {
            links.insert(LinkKey::Index(index), noted);
        }
        if let Some(name) = name {
            links.insert(LinkKey::Name(name.to_owned()), noted);
        }
    }

    /// Whether vxcd caused `event` (`port_id`: the event message's netlink port id).
    pub fn caused(&self, event: &KernelEvent, port_id: u32) -> bool {
        let own = self.port_id.load(std::sync::atomic::Ordering::Relaxed);
        match event.object {
            KernelObject::EventsLost => false,
            KernelObject::Qdisc | KernelObject::Filter => {
                (own != 0 && port_id == own) || self.deleted_link(event.ifindex)
            }
            // vxcd only ever sets `none`: another mode is a hand-made change, whenever it comes.
            KernelObject::Link
                if event
                    .addr_gen_mode
                    .is_some_and(|m| m != super::plan::ADDR_GEN_MODE_NONE) =>
            {
                false
            }
            KernelObject::Link => {
                let links = self
                    .links
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let recent = |key: &LinkKey| {
                    links
                        .get(key)
                        .filter(|n| n.at.elapsed() < OWN_WINDOW)
                        .copied()
                };
                let noted = recent(&LinkKey::Index(event.ifindex)).or_else(|| {
                    event
                        .name
                        .as_ref()
                        .and_then(|n| recent(&LinkKey::Name(n.clone())))
                });
                match (event.change, noted) {
                    (_, None) => false,
                    (EventChange::Removed, Some(n)) => n.deleted,
                    (_, Some(_)) => true,
                }
            }
        }
    }

    /// A tc object of a link vxcd deleted goes with it.
    fn deleted_link(&self, index: u32) -> bool {
        let links = self
            .links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        links
            .get(&LinkKey::Index(index))
            .is_some_and(|n| n.deleted && n.at.elapsed() < OWN_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(object: KernelObject, change: EventChange, ifindex: u32, name: &str) -> KernelEvent {
        KernelEvent {
            object,
            change,
            ifindex,
            name: Some(name.to_owned()),
            caused_by_vxcd: false,
            addr_gen_mode: None,
        }
    }

    #[test]
    fn own_changes_are_told_from_hand_made_ones() {
        let own = OwnChanges::default();
        own.set_port_id(77);
        own.note_link(0, Some("cust0.200"), false);
        own.note_link(12, Some("cust0.300"), true);
        let link = |change, index, name| event(KernelObject::Link, change, index, name);
        // The creation vxcd sent, and the flag changes that follow it.
        assert!(own.caused(&link(EventChange::Added, 11, "cust0.200"), 0));
        // Deleted by hand right after vxcd made it: drift.
        assert!(!own.caused(&link(EventChange::Removed, 11, "cust0.200"), 0));
        // Deleted by vxcd.
        assert!(own.caused(&link(EventChange::Removed, 12, "cust0.300"), 0));
        // A link vxcd never touched.
        assert!(!own.caused(&link(EventChange::Changed, 13, "eth9"), 0));
        // tc: by the port id, or of a link vxcd deleted.
        let qdisc = event(KernelObject::Qdisc, EventChange::Changed, 11, "");
        assert!(own.caused(&qdisc, 77));
        assert!(!own.caused(&qdisc, 4242));
        assert!(!own.caused(&qdisc, 0));
        let gone = event(KernelObject::Qdisc, EventChange::Removed, 12, "");
        assert!(own.caused(&gone, 0));
        let lost = event(KernelObject::EventsLost, EventChange::Changed, 0, "");
        assert!(!own.caused(&lost, 77));
        // Address generation turned back on by hand, right after vxcd's own change: drift.
        let mut eui64 = link(EventChange::Changed, 11, "cust0.200");
        eui64.addr_gen_mode = Some(0);
        assert!(!own.caused(&eui64, 0));
    }
}
