//! What the dataplane tells its caller: each change made, each VXC's outcome of a convergence.

use super::plan::Orphan;
use super::DataplaneError;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectChange {
    Created,
    /// Fields changed in place (names of the fields).
    Changed(Vec<String>),
    /// Deleted (e.g. an owned link of the wrong kind before recreating it).
    Deleted,
}

/// One change made by `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub object: String,
    pub change: ObjectChange,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            ObjectChange::Created => write!(f, "created {}", self.object),
            ObjectChange::Deleted => write!(f, "deleted {}", self.object),
            ObjectChange::Changed(fields) => {
                write!(f, "changed {} ({})", self.object, fields.join(", "))
            }
        }
    }
}

/// What `apply` did; no changes means the kernel was already right and nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub vxc_id: String,
    pub changes: Vec<Change>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// One VXC's result in a convergence.
#[derive(Debug)]
pub enum VxcOutcome {
    Ok,
    Repaired(ApplyReport),
    /// Port interfaces absent: `(port, interface)`.
    Pending(Vec<(String, String)>),
    Failed(DataplaneError),
}

/// Result of a full convergence.
#[derive(Debug, Default)]
pub struct ConvergeReport {
    pub vxcs: Vec<(String, VxcOutcome)>,
    pub orphans_removed: Vec<Orphan>,
    /// Orphans that could not be removed, with the error.
    pub orphan_failures: Vec<(Orphan, DataplaneError)>,
    /// Port interfaces whose host IPv6 was switched off, with what was done.
    pub ports_quieted: Vec<(String, Vec<String>)>,
    /// Port interfaces where that failed.
    pub port_failures: Vec<(String, DataplaneError)>,
}

impl ConvergeReport {
    pub fn outcome(&self, id: &str) -> Option<&VxcOutcome> {
        self.vxcs.iter().find(|(v, _)| v == id).map(|(_, o)| o)
    }
}
