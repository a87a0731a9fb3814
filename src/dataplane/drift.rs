//! Whether a burst of link notifications shows drift, or only vxcd's own changes and the kernel's
//! echoes of them (link-watch carrier and operstate changes, a parent's promiscuity).
//!
//! Link notifications do not say who caused them (`dataplane/own.rs`), but each one carries the
//! whole link. The last one of each link in the burst is what the kernel held after everything
//! the burst reports, and it is judged by what it says, never by when it came:
//! - an end of a VXC in the state: exactly the link as vxcd last read it (every field the plan
//!   compares), or else that one VXC is read back and planned (a few requests): right, or drift;
//! - a port interface or a core uplink: still there under its name, with the same ifindex, MTU
//!   and IPv6 mode, or else drift (VXCs come up or go pending, MTU warnings change);
//! - a link of vxcd's (its group) that is no end: drift (an orphan) unless it is already gone,
//!   as after an undo or a VLAN move; any other link is not vxcd's business.
//!
//! The caller asks only once every transaction whose changes raised the burst is done and in
//! `desired`, so what vxcd is making is never taken for an orphan.

use std::collections::{HashMap, HashSet};

use super::plan::{self, VxcStatus};
use super::{
    doomed_group, end_interface_name, EventChange, KernelEvent, ObservedLink, Side, VxcSpec,
};

use super::conn::*;

impl Dataplane {
    /// Why a pass is wanted after `events` (`None`: none is; they were vxcd's own or harmless).
    pub async fn link_drift(&self, events: &[KernelEvent], desired: &[VxcSpec]) -> Option<String> {
        let mut last: HashMap<&str, (EventChange, &ObservedLink)> = HashMap::new();
        for event in events {
            if let Some(link) = &event.link {
                last.insert(link.name.as_str(), (event.change, link));
            }
        }
        if last.is_empty() {
            return None;
        }
        let mut ends: HashMap<String, &VxcSpec> = HashMap::with_capacity(desired.len() * 2);
        let mut uplinks: HashSet<&str> = HashSet::new();
        for spec in desired {
            for side in [Side::A, Side::B] {
                let end = spec.end(side);
                ends.insert(end_interface_name(&end.interface, end.vlan), spec);
                if let Some(uplink) = end.tunnel.as_ref().and_then(|t| t.uplink.as_deref()) {
                    uplinks.insert(uplink);
                }
            }
        }
        // A port or uplink renamed away shows only under its new name: known by its ifindex.
        let watched: Vec<&str> = self
            .port_interfaces
            .iter()
            .map(String::as_str)
            .chain(uplinks.iter().copied())
            .collect();
        let by_index: HashMap<u32, &str> = watched
            .iter()
            .filter_map(|name| Some((self.own.known_link(name)?.index, *name)))
            .collect();
        let group = self.cfg.owner_group;
        let mut to_read: Vec<&VxcSpec> = Vec::new();
        for (name, (change, link)) in last {
            if let Some(was) = by_index.get(&link.index).filter(|was| **was != name) {
                return Some(format!("interface {was} is now named {name}"));
            }
            if let Some(spec) = ends.get(name) {
                let as_known = change != EventChange::Removed
                    && self.own.known_link(name).as_ref() == Some(link);
                if !as_known && !to_read.iter().any(|s| s.id == spec.id) {
                    to_read.push(spec);
                }
                continue;
            }
            if watched.contains(&name) {
                if change == EventChange::Removed {
                    return Some(format!("interface {name} was removed"));
                }
                match self.own.known_link(name) {
                    Some(k)
                        if k.index == link.index
                            && k.mtu == link.mtu
                            && k.addr_gen_mode == link.addr_gen_mode => {}
                    Some(k) => {
                        return Some(format!(
                            "interface {name} changed (ifindex {} -> {}, MTU {} -> {})",
                            k.index, link.index, k.mtu, link.mtu
                        ))
                    }
                    None => return Some(format!("interface {name} appeared")),
                }
                continue;
            }
            let ours = link.group == group || link.group == doomed_group(group);
            if change != EventChange::Removed && ours {
                // Part of no VXC: an orphan, unless vxcd already took it back.
                if !matches!(self.link_present(name).await, Ok(false)) {
                    return Some(format!("link {name} is vxcd's but part of no VXC"));
                }
            }
        }
        for spec in to_read {
            let status = match self.observe_vxc(spec).await {
                Ok(obs) => plan::vxc_status(spec, &obs),
                Err(e) => return Some(format!("VXC {}: reading it back: {e}", spec.id)),
            };
            match status {
                VxcStatus::Ok => {}
                VxcStatus::Drift(found) => {
                    let what: Vec<String> = found.iter().map(|d| d.to_string()).collect();
                    return Some(format!("VXC {}: {}", spec.id, what.join("; ")));
                }
                other => return Some(format!("VXC {}: {other:?}", spec.id)),
            }
        }
        None
    }
}
