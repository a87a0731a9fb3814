//! The state directory's files: any bytes as journal.log (first byte even) or as snapshot.json
//! (odd) open as a state or a typed error (corrupt, torn tail reported), never a panic.
#![no_main]

use vxcd::engine::{Record, Snapshot};
use vxcd::store::Store;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let file = if selector % 2 == 0 {
        "journal.log"
    } else {
        "snapshot.json"
    };
    if std::fs::write(dir.path().join(file), content).is_err() {
        return;
    }
    let _ = Store::<Record>::open::<Snapshot>(dir.path());
});
