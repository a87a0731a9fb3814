//! The engine's side of the packet inspector: it starts it, and hands it the expectation of
//! each port a change touched before the change is answered.

use std::sync::Arc;

use super::{Engine, Journal, Kernel};
use crate::dataplane::VxcSpec;
use crate::domain::Vxc;
use crate::inspector::{self, InspectConfig, Inspector};

impl<K: Kernel, J: Journal> Engine<K, J> {
    /// Starts passive inspection of the ports (`None`: inspection off).
    pub fn start_inspector(&mut self, cfg: Option<InspectConfig>) {
        self.inspect_config = cfg.clone();
        let Some(cfg) = cfg else {
            log::info!("packet inspection is off");
            return;
        };
        let expectation = self.published.load().expectation();
        match Inspector::start(cfg, expectation) {
            Ok(inspector) => {
                let inspector = Arc::new(inspector);
                self.published.edit(|s| s.inspector = Some(inspector));
            }
            Err(e) => log::error!("packet inspection could not start: {e}"),
        }
    }

    /// A VXC was created or deleted: the inspector learns it before the answer goes out (a VXC
    /// in the kernel but not in the inspector's tables would have its frames counted as
    /// violations, its egress logged as vxcd sending wrong tags). Only the VXC's two ports are
    /// rebuilt, from the model's per-port index: the cost is bounded by the ends on those
    /// ports (at most one per VLAN), not by the VXCs on the host.
    pub(super) fn inspect_changed(&self, vxc: &Vxc) {
        let state = self.published.load();
        let Some(inspector) = &state.inspector else {
            return;
        };
        let touched: Vec<(String, String)> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .filter_map(|p| Some((p.to_string(), state.ports.get(p)?.clone())))
            .collect();
        let mut ids = std::collections::HashSet::new();
        let specs: Vec<VxcSpec> = [&vxc.a_end.port, &vxc.b_end.port]
            .into_iter()
            .flat_map(|p| state.model.vxcs_on_port(p))
            .filter(|v| ids.insert(v.id.clone()))
            .filter_map(|v| state.spec(v))
            .collect();
        let expectation = inspector::Expectation::from_vxcs(&touched, &specs);
        let ports: Vec<_> = expectation
            .ports
            .into_iter()
            .filter(|p| {
                touched
                    .iter()
                    .any(|(_, interface)| *interface == p.interface)
            })
            .collect();
        inspector.update_ports(&ports);
    }

    /// Hands the inspector the current expectation (it also retries ports that were missing).
    pub(super) fn refresh_inspector(&self) {
        let state = self.published.load();
        if let Some(inspector) = &state.inspector {
            inspector.update(state.expectation());
        }
    }
}
