//! Which kernel events vxcd caused itself, so that its own changes do not look like drift.
//!
//! tc events carry the netlink port id of the request that caused them: those whose port id is
//! the dataplane's own request socket's are vxcd's (exact; this includes the kernel's echo of
//! every qdisc vxcd reads, which alone made a pass after every `vxc.stats` or scrape).
//!
//! Link events cannot be told apart by who sent them: on the 6.1 kernels vxcd runs on, link
//! notifications carry port id 0 whoever caused them, and the kernel adds its own later ones
//! (link-watch carrier and operstate changes, a parent's promiscuity). A window of time after each
//! of vxcd's own link changes was tried and dropped: it hid hand-made changes made within it, and
//! still let a late link-watch event through under load. They are told apart by what they say
//! instead (`dataplane/drift.rs`): every link notification carries the whole link, which is
//! compared with the link as vxcd last read it ([`OwnChanges::known`]); only a difference in a
//! field vxcd's plan compares is looked at further, with a read of that one VXC.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::{KernelEvent, KernelObject, ObservedLink};

#[derive(Debug, Default)]
pub struct OwnChanges {
    /// The request sockets' netlink port ids (0: none, nothing is taken for vxcd's): the
    /// requests' and the long reads' (`Dataplane::second_socket`).
    port_ids: [AtomicU32; 2],
    /// The links vxcd cares about (its own, the port interfaces, the links it read by name), as
    /// it last read them: by a full dump, a VXC's read-back, a link read by name. Held only for
    /// the moment of a lookup or an insert, never across an await.
    known: Mutex<HashMap<String, ObservedLink>>,
}

impl OwnChanges {
    /// Takes the events that a request on this socket causes for vxcd's own (at most two).
    pub fn add_port_id(&self, port_id: u32) {
        for slot in &self.port_ids {
            if slot
                .compare_exchange(0, port_id, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// The first socket's port id, if known.
    pub fn port_id(&self) -> Option<u32> {
        Some(self.port_ids[0].load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObservedLink>> {
        // A poisoned map only means a panic mid-insert of a plain value: the map is whole.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A full dump: what it shows replaces all that was known (`keep`: the links worth keeping).
    pub fn know_all<'a>(
        &self,
        links: impl Iterator<Item = &'a ObservedLink>,
        keep: impl Fn(&ObservedLink) -> bool,
    ) {
        let fresh: HashMap<String, ObservedLink> = links
            .filter(|l| keep(l))
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        *self.known() = fresh;
    }

    /// A link read by name (`None`: the kernel said there is none).
    pub fn know(&self, name: &str, link: Option<&ObservedLink>) {
        let mut known = self.known();
        match link {
            Some(l) => {
                known.insert(name.to_owned(), l.clone());
            }
            None => {
                known.remove(name);
            }
        }
    }

    /// A change vxcd made and the kernel acknowledged, applied to what it knows of the link.
    pub fn amend(&self, name: &str, change: impl FnOnce(&mut ObservedLink)) {
        if let Some(link) = self.known().get_mut(name) {
            change(link);
        }
    }

    /// The link of that name as vxcd last read it.
    pub fn known_link(&self, name: &str) -> Option<ObservedLink> {
        self.known().get(name).cloned()
    }

    /// Whether vxcd caused `event` (`port_id`: the event message's netlink port id).
    pub fn caused(&self, event: &KernelEvent, port_id: u32) -> bool {
        matches!(event.object, KernelObject::Qdisc | KernelObject::Filter)
            && port_id != 0
            && self
                .port_ids
                .iter()
                .any(|own| own.load(Ordering::Relaxed) == port_id)
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
            link: None,
            caused_by_vxcd: false,
        }
    }

    #[test]
    fn tc_events_of_vxcds_socket_are_its_own_and_nothing_else_is() {
        let own = OwnChanges::default();
        // Unknown port id: nothing is vxcd's.
        assert!(!own.caused(&event(KernelObject::Qdisc), 0));
        own.add_port_id(77);
        assert!(own.caused(&event(KernelObject::Qdisc), 77));
        assert!(own.caused(&event(KernelObject::Filter), 77));
        assert!(!own.caused(&event(KernelObject::Qdisc), 4242));
        assert!(!own.caused(&event(KernelObject::Qdisc), 0));
        // Link events carry 0 on 6.1 whoever made them: never taken for vxcd's.
        assert!(!own.caused(&event(KernelObject::Link), 77));
        assert!(!own.caused(&event(KernelObject::EventsLost), 77));
    }
}
