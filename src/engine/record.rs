//! The state's schema on disk: one journal record per change, the snapshot that compaction writes,
//! and the replay that turns both back into a model at start.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Port;
use crate::domain::{KeyId, Model, ServiceKey, Vxc, VxcId};
use crate::store::Store;

/// One journal record. A new VXC built from a single-use key is written as one batch of two
/// records (the key, now used, and the VXC) so that replay never sees one without the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", deny_unknown_fields)]
pub enum Record {
    #[serde(rename = "key")]
    Key { key: ServiceKey },
    #[serde(rename = "vxc")]
    Vxc { vxc: Vxc },
    #[serde(rename = "vxc_deleted")]
    VxcDeleted { id: VxcId },
    /// A full-state `sync` of this generation was applied.
    #[serde(rename = "generation")]
    Generation { generation: u64 },
}

/// The snapshot: every key and VXC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub keys: Vec<ServiceKey>,
    pub vxcs: Vec<Vxc>,
    /// The last `sync` generation applied (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// What the state directory holds, read at start.
pub struct Loaded {
    pub model: Model,
    pub store: Store<Record>,
    pub generation: Option<u64>,
}

/// Loads the state directory into a model. A torn tail (a write that a crash cut short, never
/// acknowledged) is reported loudly and dropped; any other damage refuses the start.
pub fn load_state(dir: &Path, ports: &[Port]) -> Result<Loaded, String> {
    let (store, loaded) = Store::<Record>::open::<Snapshot>(dir).map_err(|e| e.to_string())?;
    if let Some(torn) = &loaded.torn_tail {
        log::warn!(
            state_dir = dir.display().to_string().as_str();
            "state journal ended in a torn write (never acknowledged), dropped: {torn}"
        );
    }
    let snapshot = loaded.snapshot.unwrap_or_default();
    let mut generation = snapshot.generation;
    let mut keys: BTreeMap<KeyId, ServiceKey> = snapshot
        .keys
        .into_iter()
        .map(|k| (k.id.clone(), k))
        .collect();
    let mut vxcs: BTreeMap<VxcId, Vxc> = snapshot
        .vxcs
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect();
    for record in loaded.records {
        match record {
            Record::Key { key } => {
                keys.insert(key.id.clone(), key);
            }
            Record::Vxc { vxc } => {
                vxcs.insert(vxc.id.clone(), vxc);
            }
            Record::VxcDeleted { id } => {
                vxcs.remove(&id);
            }
            Record::Generation { generation: g } => generation = Some(g),
        }
    }
    let model = Model::restore(
        ports.iter().map(|p| p.name.clone()),
        keys.into_values(),
        vxcs.into_values(),
    )
    .map_err(|e| format!("state in {} is inconsistent: {e}", dir.display()))?;
    Ok(Loaded {
        model,
        store,
        generation,
    })
}
