//! The pure domain core: service keys, VXCs, ports, VLAN allocation and every rule of
//! `shared/domain.md`. No I/O: the daemon asks the model what a request would change, programs the
//! kernel and persists, then commits.

mod error;
mod ids;
mod model;
mod request;
mod stored;
mod vlan;
mod vni;

pub use error::{Holder, RuleError};
pub use ids::{KeyId, PortName, VxcId, MAX_ID_LEN};
pub use model::{Change, Model, PortUsage, VxcPlan, MAX_TEXT_LEN};
pub use request::{AEndRequest, KeyRequest, VxcRequest};
pub use stored::{AEnd, BEnd, ServiceKey, Vxc};
pub use vlan::{Vlan, VlanSet, VLAN_MAX, VLAN_MIN};
pub use vni::{Vni, VNI_MAX};

#[cfg(test)]
mod tests;
