//! The read side: what the engine has committed, published for readers who never take the
//! engine's lock.
//!
//! # Why a published copy
//! Writes hold the engine lock across kernel round trips and a disk sync; a read under that lock
//! waited for them, and a flood of reads (30 readers listing 8,000 keys) made root's `key.put`
//! wait seconds. The engine instead publishes its state as an `Arc<ReadState>`: a reader takes a
//! reference (a few nanoseconds under an `RwLock` that is never held longer than that) and
//! computes its answer from it, lock-free, while the engine goes on.
//!
//! The engine edits the published state in place with `Arc::make_mut`: it is copied only when a
//! reader still holds the previous version, so a host without readers (a bulk push) never pays
//! for a copy, and one with readers pays one copy per write, never a wait. Every edit is made
//! after the change is in the kernel and on disk, so a reader sees only acknowledged changes, and
//! a client that got an answer reads its own write on any connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Kernel;
use crate::config::Core;
use crate::dataplane::{self, Dataplane, EndSpec, TunnelSpec, VxcSpec};
use crate::domain::{Model, PortName, RuleError, ServiceKey, Vxc, VxcId};
use crate::inspector::{Direction, Expectation, Inspector, VerifySpec};
use crate::protocol::{
    CoreView, EndStatsView, EndView, Failure, InspectorStatus, KernelView, KeyView, Op, PortView,
    StatusView, StoreStatus, VxcStatsView, VxcView, PROTOCOL_VERSION,
};

/// Where a VXC stands in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VxcState {
    Up,
    /// Waiting for a port interface to appear (or its port is no longer configured).
    Pending(String),
    /// The kernel refused it; the reason names the object and the kernel's error.
    Failed(String),
}

impl VxcState {
    pub fn name(&self) -> &'static str {
        match self {
            VxcState::Up => "up",
            VxcState::Pending(_) => "pending",
            VxcState::Failed(_) => "failed",
        }
    }

    pub fn reason(&self) -> Option<String> {
        match self {
            VxcState::Up => None,
            VxcState::Pending(r) | VxcState::Failed(r) => Some(r.clone()),
        }
    }
}

/// Everything a read answers from: the committed model and what the engine learnt of the kernel
/// and the store.
#[derive(Clone)]
pub struct ReadState {
    pub model: Model,
    /// Port name -> kernel interface, from the config.
    pub ports: BTreeMap<PortName, String>,
    pub states: HashMap<VxcId, VxcState>,
    pub started: Instant,
    pub last_reconcile: Option<OffsetDateTime>,
    pub drift_repairs: u64,
    /// Probed at start and at each reconcile pass (reading `/lib/modules` on every `status` was
    /// a file scan per poll).
    pub kernel_8021q: bool,
    pub store: StoreStatus,
    /// The last full-state `sync` generation applied.
    pub generation: Option<u64>,
    /// The packet inspector, when enabled (it is shared: its tables have their own lock).
    pub inspector: Option<Arc<Inspector>>,
    /// `[core]`, when this host takes VXCs with an end on a peer.
    pub core: Option<Core>,
    /// The MTUs the tunnels depend on, as read at the last reconcile pass.
    pub core_mtu: Option<CoreMtu>,
}

/// The MTUs of the uplink and of the ports with an end of a VXC to a peer, read from the kernel:
/// a customer's full-size frame plus the encapsulation must fit the uplink, or it is lost on
/// the core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreMtu {
    pub uplink: Option<u32>,
    pub ports: BTreeMap<PortName, u32>,
}

/// The published state: one writer (the engine), any number of readers.
#[derive(Clone)]
pub struct Published(Arc<RwLock<Arc<ReadState>>>);

impl Published {
    pub fn new(state: ReadState) -> Self {
        Published(Arc::new(RwLock::new(Arc::new(state))))
    }

    /// The current state. Holding it costs the writer a copy at its next edit, not a wait: drop
    /// it before editing.
    pub fn load(&self) -> Arc<ReadState> {
        // A poisoned lock only means a panic while the Arc was swapped; the Arc is whole.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Edits the state in place (copied first only when a reader holds the current version).
    pub fn edit<R>(&self, f: impl FnOnce(&mut ReadState) -> R) -> R {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(Arc::make_mut(&mut guard))
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The ops answered from the published state.
pub fn is_read(op: &Op) -> bool {
    matches!(
        op,
        Op::Hello {}
            | Op::Status {}
            | Op::PortList {}
            | Op::KeyGet { .. }
            | Op::KeyList {}
            | Op::VxcGet { .. }
            | Op::VxcList {}
            | Op::VxcPlan { .. }
            | Op::Inspect {}
    )
}

impl ReadState {
    /// Answers a read op (`None` for an op that changes state or probes).
    pub fn answer(&self, op: &Op) -> Option<Result<Value, Failure>> {
        let now = OffsetDateTime::now_utc();
        Some(match op {
            Op::Hello {} => {
                Ok(json!({"protocol": PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION")}))
            }
            Op::Status {} => Ok(json!(self.status())),
            Op::KeyGet { key } => match self.model.key(key) {
                Some(k) => Ok(json!({"key": self.key_view(k, now)})),
                None => Err(RuleError::NotFound {
                    what: "service key",
                    id: key.clone(),
                }
                .into()),
            },
            Op::KeyList {} => Ok(json!({"keys": self.key_views(now)})),
            Op::VxcGet { id } => match self.model.vxc(id) {
                Some(v) => Ok(json!({"vxc": self.vxc_view(v, None)})),
                None => Err(RuleError::NotFound {
                    what: "VXC",
                    id: id.clone(),
                }
                .into()),
            },
            Op::VxcList {} => Ok(json!({"vxcs": self.vxc_views()})),
            Op::VxcPlan { vxc } => self
                .model
                .plan_vxc(vxc, now)
                .map(|plan| json!({"vxc": self.vxc_view(plan.change.after(), Some("planned"))}))
                .map_err(Failure::from),
            Op::Inspect {} => match &self.inspector {
                Some(inspector) => {
                    let view = inspector.snapshot();
                    Ok(json!({"enabled": true, "ports": view.ports}))
                }
                None => Ok(json!({"enabled": false, "ports": []})),
            },
            _ => return None,
        })
    }

    /// `key.list`'s keys.
    pub fn key_views(&self, now: OffsetDateTime) -> Vec<KeyView> {
        self.model.keys().map(|k| self.key_view(k, now)).collect()
    }

    /// `vxc.list`'s VXCs.
    pub fn vxc_views(&self) -> Vec<VxcView> {
        self.model.vxcs().map(|v| self.vxc_view(v, None)).collect()
    }

    pub fn port_pairs(&self) -> Vec<(String, String)> {
        self.ports
            .iter()
            .map(|(name, interface)| (name.to_string(), interface.clone()))
            .collect()
    }

    /// What the inspector expects on every port.
    pub fn expectation(&self) -> Expectation {
        let desired: Vec<VxcSpec> = self.model.vxcs().filter_map(|v| self.spec(v)).collect();
        Expectation::from_vxcs(&self.port_pairs(), &desired)
    }

    fn end_spec(&self, port: &PortName, vlan: Option<u16>) -> Option<EndSpec> {
        Some(EndSpec {
            port: port.to_string(),
            interface: self.ports.get(port)?.clone(),
            vlan,
            tunnel: None,
        })
    }

    /// The end of a VXC on a peer: the tunnel device to it (`None` without `[core]`).
    fn tunnel_spec(&self, vxc: &Vxc, port: &PortName, peer: std::net::IpAddr) -> Option<EndSpec> {
        let core = self.core.as_ref()?;
        let vni = vxc.vni?.get();
        Some(EndSpec {
            port: port.to_string(),
            interface: dataplane::tunnel_interface_name(vni),
            vlan: None,
            tunnel: Some(TunnelSpec {
                vni,
                local: core.address,
                remote: peer,
                udp_port: core.udp_port,
                uplink: core.interface.clone(),
            }),
        })
    }

    /// What the kernel should hold for a VXC; `None` while one of its ports is not configured
    /// (or, for a VXC with an end on a peer, `[core]` is not).
    pub fn spec(&self, vxc: &Vxc) -> Option<VxcSpec> {
        let a = match vxc.a_end.host {
            None => self.end_spec(&vxc.a_end.port, vxc.a_end.vlan.map(|v| v.get()))?,
            Some(peer) => self.tunnel_spec(vxc, &vxc.a_end.port, peer)?,
        };
        let b = match vxc.b_end.host {
            None => self.end_spec(&vxc.b_end.port, Some(vxc.b_end.vlan?.get()))?,
            Some(peer) => self.tunnel_spec(vxc, &vxc.b_end.port, peer)?,
        };
        Some(VxcSpec {
            id: vxc.id.to_string(),
            rate_mbps: vxc.rate_mbps,
            a,
            b,
            shutdown: vxc.shutdown,
        })
    }

    /// Why customers' full-size frames on a VXC's local port cannot cross the core, if they
    /// cannot: the port's MTU plus the encapsulation exceeds the uplink's.
    pub fn mtu_shortfall(&self, vxc: &Vxc) -> Option<String> {
        let core = self.core.as_ref()?;
        vxc.peer()?;
        let mtus = self.core_mtu.as_ref()?;
        let uplink_mtu = mtus.uplink?;
        let port = if vxc.a_end.is_local() {
            &vxc.a_end.port
        } else {
            &vxc.b_end.port
        };
        let port_mtu = *mtus.ports.get(port)?;
        let overhead = if core.address.is_ipv4() { 50 } else { 70 };
        (port_mtu + overhead > uplink_mtu).then(|| {
            format!(
                "customer frames of port {port} (MTU {port_mtu}) cannot cross the core: uplink {} \
                 has MTU {uplink_mtu}, which carries at most {} after the {overhead} bytes of \
                 VXLAN; raise its MTU to {}",
                core.interface.as_deref().unwrap_or("?"),
                uplink_mtu.saturating_sub(overhead),
                port_mtu + overhead
            )
        })
    }

    fn core_view(&self) -> Option<CoreView> {
        let core = self.core.as_ref()?;
        let remote: Vec<&Vxc> = self.model.vxcs().filter(|v| v.peer().is_some()).collect();
        let mut warnings: Vec<String> = remote
            .iter()
            .filter_map(|v| self.mtu_shortfall(v))
            .collect();
        warnings.sort();
        warnings.dedup();
        Some(CoreView {
            address: core.address.to_string(),
            udp_port: core.udp_port,
            interface: core.interface.clone(),
            interface_mtu: self.core_mtu.as_ref().and_then(|m| m.uplink),
            tunnels: remote.len(),
            mtu_warnings: warnings,
        })
    }

    /// What `verify` probes: one VXC, or every VXC.
    pub fn verify_specs(&self, id: Option<&str>) -> Result<Vec<VerifySpec>, Failure> {
        let vxcs: Vec<&Vxc> = match id {
            Some(id) => vec![self.model.vxc(id).ok_or_else(|| RuleError::NotFound {
                what: "VXC",
                id: id.to_owned(),
            })?],
            None => self.model.vxcs().collect(),
        };
        let ports = self.port_pairs();
        vxcs.into_iter()
            .map(|vxc| {
                self.spec(vxc)
                    .map(|spec| VerifySpec::from_vxc(&spec, &ports))
                    .ok_or_else(|| {
                        Failure::dataplane(format!(
                            "VXC {}: port {} or {} is not in the config; nothing to probe",
                            vxc.id, vxc.a_end.port, vxc.b_end.port
                        ))
                    })
            })
            .collect()
    }

    pub fn state_of(&self, id: &VxcId) -> VxcState {
        self.states
            .get(id)
            .cloned()
            .unwrap_or_else(|| VxcState::Pending("not yet reconciled".into()))
    }

    /// The state shown for a VXC: `shutdown` for one shut down whose objects are right, else
    /// what the kernel says (a shut VXC whose port is missing is `pending`, as any other).
    pub fn state_name(&self, vxc: &Vxc, state: &VxcState) -> &'static str {
        match state {
            VxcState::Up if vxc.shutdown => "shutdown",
            other => other.name(),
        }
    }

    fn inspector_status(&self) -> InspectorStatus {
        let Some(inspector) = &self.inspector else {
            return InspectorStatus::default();
        };
        let view = inspector.snapshot();
        let mut status = InspectorStatus {
            enabled: true,
            ..InspectorStatus::default()
        };
        for port in &view.ports {
            status.capturing += usize::from(port.capturing);
            for v in &port.violations {
                status.violations += v.count;
                if v.direction == Direction::Tx {
                    status.egress_violations += v.count;
                }
            }
        }
        status
    }

    fn status(&self) -> StatusView {
        let mut vxc_states = BTreeMap::new();
        for vxc in self.model.vxcs() {
            let state = self.state_of(&vxc.id);
            *vxc_states
                .entry(self.state_name(vxc, &state).to_owned())
                .or_insert(0) += 1;
        }
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            ports: self.model.ports().count(),
            keys: self.model.keys().count(),
            vxcs: self.model.vxcs().count(),
            kernel: KernelView {
                vlan_8021q: self.kernel_8021q,
            },
            last_reconcile: self.last_reconcile.map(rfc3339),
            drift_repairs: self.drift_repairs,
            vxc_states,
            inspector: self.inspector_status(),
            store: self.store.clone(),
            generation: self.generation,
            reconcile_passes: crate::metrics::daemon().reconcile_passes.get(),
            own_event_bursts: crate::metrics::daemon().own_event_bursts.get(),
            core: self.core_view(),
        }
    }

    pub fn key_view(&self, key: &ServiceKey, now: OffsetDateTime) -> KeyView {
        let refusal = self.model.key_refusal(key, now);
        KeyView {
            key: key.id.to_string(),
            port: key.port.to_string(),
            description: key.description.clone(),
            single_use: key.single_use,
            max_speed_mbps: key.max_speed_mbps,
            vlan: key.vlan.map(|v| v.get()),
            valid_from: key.valid_from.map(rfc3339),
            valid_until: key.valid_until.map(rfc3339),
            active: key.active,
            used_by: self
                .model
                .key_users(&key.id)
                .iter()
                .map(|v| v.to_string())
                .collect(),
            host: key.host.map(|h| h.to_string()),
            redeemable: refusal.is_none(),
            reason: refusal.map(|r| r.code().to_owned()),
        }
    }

    /// `state_override` is `Some("planned")` for vxc.plan.
    pub fn vxc_view(&self, vxc: &Vxc, state_override: Option<&str>) -> VxcView {
        let a_vlan = vxc.a_end.vlan.map(|v| v.get());
        let b_vlan = vxc.b_end.vlan.map(|v| v.get());
        let interface = |port: &PortName, vlan: Option<u16>, host: Option<std::net::IpAddr>| match (
            host, vxc.vni,
        ) {
            (Some(_), Some(vni)) => Some(dataplane::tunnel_interface_name(vni.get())),
            (Some(_), None) => None,
            (None, _) => self
                .ports
                .get(port)
                .map(|parent| dataplane::end_interface_name(parent, vlan)),
        };
        let (state, state_reason) = match state_override {
            Some(s) => (s.to_owned(), None),
            None => {
                let s = self.state_of(&vxc.id);
                // An up VXC whose customers' full-size frames cannot cross the core says so.
                let reason = s.reason().or_else(|| self.mtu_shortfall(vxc));
                (self.state_name(vxc, &s).to_owned(), reason)
            }
        };
        VxcView {
            id: vxc.id.to_string(),
            name: vxc.name.clone(),
            service_key: vxc.service_key.to_string(),
            rate_mbps: vxc.rate_mbps,
            service_level_ref: vxc.service_level_ref.clone(),
            a_end: EndView {
                port: vxc.a_end.port.to_string(),
                vlan: a_vlan,
                untagged: Some(a_vlan.is_none()),
                interface: interface(&vxc.a_end.port, a_vlan, vxc.a_end.host),
                host: vxc.a_end.host.map(|h| h.to_string()),
            },
            b_end: EndView {
                port: vxc.b_end.port.to_string(),
                vlan: b_vlan,
                untagged: None,
                interface: interface(&vxc.b_end.port, b_vlan, vxc.b_end.host),
                host: vxc.b_end.host.map(|h| h.to_string()),
            },
            vni: vxc.vni.map(|v| v.get()),
            state,
            state_reason,
            created_at: rfc3339(vxc.created_at),
            shutdown: vxc.shutdown,
        }
    }
}

/// Answers reads for the server, without the engine lock.
#[derive(Clone)]
pub struct Reader<K = Dataplane> {
    published: Published,
    /// A second handle on the engine's netlink socket, for `port.list`'s link lookups (requests
    /// are pipelined on the socket; the engine's lock is not needed to ask).
    dataplane: K,
}

impl<K: Kernel> Reader<K> {
    pub fn new(published: Published, dataplane: K) -> Self {
        Reader {
            published,
            dataplane,
        }
    }

    /// The current published state.
    pub fn state(&self) -> Arc<ReadState> {
        self.published.load()
    }

    /// `vxc.stats`: the counters of one VXC (`Some(id)`) or of every VXC, read from the kernel
    /// after the state is let go.
    pub async fn vxc_stats(&self, id: Option<&str>) -> Result<Value, Failure> {
        let mut out = self.stats_views(id).await?;
        Ok(match id {
            Some(_) => json!({"vxc": out.pop()}),
            None => json!({"vxcs": out}),
        })
    }

    /// The counters of one VXC or every VXC (`vxc.stats`, `/metrics`).
    pub async fn stats_views(&self, id: Option<&str>) -> Result<Vec<VxcStatsView>, Failure> {
        let views: Vec<(VxcStatsView, [Option<String>; 2])> = {
            let state = self.state();
            let vxcs: Vec<&Vxc> = match id {
                Some(id) => vec![state.model.vxc(id).ok_or_else(|| RuleError::NotFound {
                    what: "VXC",
                    id: id.to_owned(),
                })?],
                None => state.model.vxcs().collect(),
            };
            vxcs.into_iter()
                .map(|vxc| {
                    let view = state.vxc_view(vxc, None);
                    let end = |e: &EndView| EndStatsView {
                        port: e.port.clone(),
                        vlan: e.vlan,
                        interface: e.interface.clone(),
                        counters: None,
                        shaper: None,
                    };
                    let names = [view.a_end.interface.clone(), view.b_end.interface.clone()];
                    let stats = VxcStatsView {
                        id: view.id.clone(),
                        state: view.state.clone(),
                        rate_mbps: view.rate_mbps,
                        read_at: String::new(),
                        a_end: end(&view.a_end),
                        b_end: end(&view.b_end),
                    };
                    (stats, names)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(views.len());
        for (mut stats, [a, b]) in views {
            for (end, name) in [(&mut stats.a_end, a), (&mut stats.b_end, b)] {
                let Some(name) = name else { continue };
                let counters = self
                    .dataplane
                    .end_counters(&name)
                    .await
                    .map_err(|e| Failure::dataplane(e.to_string()))?;
                end.counters = counters.interface;
                end.shaper = counters.shaper;
            }
            stats.read_at = rfc3339(OffsetDateTime::now_utc());
            out.push(stats);
        }
        Ok(out)
    }

    /// `port.list`: the model's ports with what the kernel says of their interfaces. The state
    /// is let go before the kernel is asked, so the engine never copies it for this reader.
    pub async fn port_views(&self) -> Vec<PortView> {
        let mut views: Vec<PortView> = {
            let state = self.state();
            state
                .model
                .ports()
                .map(|usage| PortView {
                    name: usage.name.to_string(),
                    interface: state.ports.get(&usage.name).cloned(),
                    present: false,
                    host_ipv6_off: false,
                    vlans: usage.vlans.iter().map(|v| v.get()).collect(),
                    untagged_vxc: usage.untagged_vxc.map(|v| v.to_string()),
                    accepting: usage.accepting,
                })
                .collect()
        };
        for view in &mut views {
            let Some(name) = &view.interface else {
                continue;
            };
            let facts = self
                .dataplane
                .port_ipv6_off(name)
                .await
                .unwrap_or_else(|e| {
                    log::warn!("port.list: looking up interface {name}: {e}");
                    None
                });
            view.present = facts.is_some();
            view.host_ipv6_off = facts.unwrap_or(false);
        }
        views
    }
}
