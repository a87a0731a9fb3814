//! `verify`: probes each VXC through the kernel's receive path and gathers the results. Blocking
//! (a few milliseconds to two seconds per direction): the server runs it on a blocking thread,
//! from specs taken from the published state, so neither the engine nor readers wait for it.

use serde_json::{json, Value};

use crate::inspector::{self, VerifySpec};

/// `{"pass": all passed, "results": [VerifyResult or {"vxc", "pass": false, "error"}]}`.
pub fn run_verify(specs: Vec<VerifySpec>) -> Value {
    let mut pass = true;
    let mut results = Vec::with_capacity(specs.len());
    for spec in &specs {
        match inspector::verify(spec, inspector::VerifyConfig::default()) {
            Ok(result) => {
                pass &= result.pass;
                for d in &result.directions {
                    if d.pass {
                        log::info!(vxc = spec.vxc.as_str(), direction = d.direction.as_str(); "verify {}: {}", spec.vxc, d.detail);
                    } else {
                        log::error!(vxc = spec.vxc.as_str(), direction = d.direction.as_str(); "verify {}: {}", spec.vxc, d.detail);
                    }
                }
                results.push(json!(result));
            }
            Err(e) => {
                pass = false;
                log::error!(vxc = spec.vxc.as_str(); "verify {}: {e}", spec.vxc);
                results.push(json!({"vxc": spec.vxc, "pass": false, "error": e.to_string()}));
            }
        }
    }
    json!({"pass": pass, "results": results})
}
