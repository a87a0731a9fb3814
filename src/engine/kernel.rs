//! The engine's seam towards the kernel: what a transaction or a reconcile pass asks of the
//! dataplane, and nothing else. In the daemon it is the netlink [`Dataplane`]; in the engine's
//! unit tests it is an in-memory kernel that can refuse, so every transaction's undo path runs
//! without root (`engine/tests.rs`).

use std::future::Future;

use crate::dataplane::{
    ApplyReport, ConvergeReport, Dataplane, DataplaneError, EndCounters, KernelEvent, Observed,
    PortsQuieted, Side, VxcSpec,
};

/// The kernel operations the engine and its reader use. Each one is atomic per VXC, as
/// [`Dataplane`] documents: a refused `apply` leaves nothing of that VXC behind.
pub trait Kernel: Clone + Send + Sync + 'static {
    /// Makes one VXC's objects what `spec` says (created, fixed in place, or already right).
    fn apply(
        &self,
        spec: &VxcSpec,
    ) -> impl Future<Output = Result<ApplyReport, DataplaneError>> + Send;
    /// Deletes one VXC's objects (those already gone are not an error).
    fn remove(&self, spec: &VxcSpec) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Deletes one end's objects (the old A-End of a VXC moved to another VLAN).
    fn remove_end(
        &self,
        spec: &VxcSpec,
        side: Side,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Deletes many VXCs' objects, by the kernel's bulk path where it can.
    fn remove_many(
        &self,
        specs: &[VxcSpec],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// One whole-host pass: every VXC made right, orphans of vxcd's removed.
    fn converge(
        &self,
        desired: &[VxcSpec],
    ) -> impl Future<Output = Result<ConvergeReport, DataplaneError>> + Send;
    /// Why a pass is wanted after these kernel events (`None`: they show only vxcd's own changes),
    /// `desired` being every VXC in the state once the transactions that raised them are done.
    fn link_drift(
        &self,
        events: &[KernelEvent],
        desired: &[VxcSpec],
    ) -> impl Future<Output = Option<String>> + Send;
    /// Keeps the host's own IPv6 off every port interface `obs` shows.
    fn quiet_ports(&self, obs: &Observed) -> impl Future<Output = PortsQuieted> + Send;
    /// What the kernel holds now (passes without the engine lock, observe-only passes).
    fn observe(&self) -> impl Future<Output = Result<Observed, DataplaneError>> + Send;
    /// A link's MTU (`None`: no such link).
    fn link_mtu(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<u32>, DataplaneError>> + Send;
    /// Whether a port interface's host IPv6 is off (`None`: no such link).
    fn port_ipv6_off(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<bool>, DataplaneError>> + Send;
    /// An end interface's counters and its shaper's.
    fn end_counters(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<EndCounters, DataplaneError>> + Send;
    /// The port interfaces (never deleted, only quieted) after a config reload.
    fn set_port_interfaces(&mut self, interfaces: Vec<String>);
}

impl Kernel for Dataplane {
    async fn apply(&self, spec: &VxcSpec) -> Result<ApplyReport, DataplaneError> {
        Dataplane::apply(self, spec).await
    }
    async fn remove(&self, spec: &VxcSpec) -> Result<(), DataplaneError> {
        Dataplane::remove(self, spec).await
    }
    async fn remove_end(&self, spec: &VxcSpec, side: Side) -> Result<(), DataplaneError> {
        Dataplane::remove_end(self, spec, side).await
    }
    async fn remove_many(&self, specs: &[VxcSpec]) -> Result<(), DataplaneError> {
        Dataplane::remove_many(self, specs).await
    }
    async fn converge(&self, desired: &[VxcSpec]) -> Result<ConvergeReport, DataplaneError> {
        Dataplane::converge(self, desired).await
    }
    async fn link_drift(&self, events: &[KernelEvent], desired: &[VxcSpec]) -> Option<String> {
        Dataplane::link_drift(self, events, desired).await
    }
    async fn quiet_ports(&self, obs: &Observed) -> PortsQuieted {
        Dataplane::quiet_ports(self, obs).await
    }
    async fn observe(&self) -> Result<Observed, DataplaneError> {
        Dataplane::observe(self).await
    }
    async fn link_mtu(&self, name: &str) -> Result<Option<u32>, DataplaneError> {
        Dataplane::link_mtu(self, name).await
    }
    async fn port_ipv6_off(&self, name: &str) -> Result<Option<bool>, DataplaneError> {
        Dataplane::port_ipv6_off(self, name).await
    }
    async fn end_counters(&self, name: &str) -> Result<EndCounters, DataplaneError> {
        Dataplane::end_counters(self, name).await
    }
    fn set_port_interfaces(&mut self, interfaces: Vec<String>) {
        Dataplane::set_port_interfaces(self, interfaces)
    }
}
