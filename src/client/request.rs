//! Request bodies from vxcctl's flags and from TOML or JSON files.

#[allow(unused_imports)]
use super::render::*;
use crate::cli::vxcctl_args::{KeyPutArgs, VxcArgs};
use crate::domain::{AEndRequest, KeyRequest, VxcRequest};
use crate::protocol::VxcView;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

/// A request body that could not be built (exit status 2, like a usage error).
#[derive(Debug, PartialEq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

impl KeyPutArgs {
    pub fn request(&self) -> Result<KeyRequest, InputError> {
        if let Some(path) = &self.file {
            return load_body(path, "key");
        }
        let (Some(key), Some(port), Some(max_speed)) = (&self.key, &self.port, self.max_speed)
        else {
            return Err(InputError(
                "key put needs --key, --port and --max-speed, or --file".into(),
            ));
        };
        Ok(KeyRequest {
            key: key.clone(),
            port: port.clone(),
            description: self.description.clone().unwrap_or_default(),
            single_use: self.single_use,
            max_speed_mbps: i64::from(max_speed),
            vlan: self.vlan.map(i64::from),
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            active: !self.inactive,
            host: self.host.clone(),
        })
    }
}

impl VxcArgs {
    pub fn request(&self) -> Result<VxcRequest, InputError> {
        if let Some(path) = &self.file {
            return load_body(path, "vxc");
        }
        let (Some(id), Some(name), Some(key), Some(rate), Some(a_port)) =
            (&self.id, &self.name, &self.key, self.rate, &self.a_port)
        else {
            return Err(InputError(
                "vxc put/plan needs --id, --name, --key, --rate and --a-port, or --file".into(),
            ));
        };
        Ok(VxcRequest {
            id: id.clone(),
            name: name.clone(),
            service_key: key.clone(),
            rate_mbps: i64::from(rate),
            a_end: AEndRequest {
                port: a_port.clone(),
                vlan: self.a_vlan.map(i64::from),
                untagged: self.untagged,
                host: self.a_host.clone(),
            },
            service_level_ref: self.service_level_ref.clone(),
            shutdown: self.shutdown,
            vni: self.vni.map(i64::from),
        })
    }
}

/// Reads a request body from a TOML or JSON file (`-`: standard input). JSON when the name ends
/// in `.json` or the text starts with `{`, TOML otherwise.
pub fn load_body<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, InputError> {
    let shown = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| InputError(format!("reading the {what} from {shown}: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| InputError(format!("reading the {what} file {shown}: {e}")))?
    };
    parse_body(
        &text,
        path.extension().is_some_and(|e| e == "json"),
        what,
        &shown,
    )
}

/// Parses a request body; see [`load_body`].
pub fn parse_body<T: DeserializeOwned>(
    text: &str,
    json_by_name: bool,
    what: &str,
    shown: &str,
) -> Result<T, InputError> {
    let value = if json_by_name || text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(text)
            .map_err(|e| InputError(format!("{shown}: not valid JSON: {e}")))?
    } else {
        let table = toml::from_str::<toml::Table>(text)
            .map_err(|e| InputError(format!("{shown}: not valid TOML: {e}")))?;
        toml_to_json(toml::Value::Table(table)).map_err(|e| InputError(format!("{shown}: {e}")))?
    };
    serde_json::from_value(value)
        .map_err(|e| InputError(format!("{shown}: not a valid {what} object: {e}")))
}

/// TOML to JSON, with TOML datetimes as RFC 3339 strings (the protocol's form).
pub(super) fn toml_to_json(value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("number {f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(dt) => Value::String(dt.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| toml_to_json(v).map(|v| (k, v)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering results for people.

/// `vxc shutdown` / `vxc enable`: the `vxc.put` that changes only `shutdown` of the VXC as
/// `vxc.get` showed it.
pub fn with_shutdown(view: &Value, shutdown: bool) -> Result<VxcRequest, String> {
    let v: VxcView = field(view, "vxc")?;
    Ok(VxcRequest {
        id: v.id,
        name: v.name,
        service_key: v.service_key,
        rate_mbps: i64::from(v.rate_mbps),
        a_end: AEndRequest {
            port: v.a_end.port,
            vlan: v.a_end.vlan.map(i64::from),
            untagged: v.a_end.untagged.unwrap_or(false),
            host: v.a_end.host,
        },
        service_level_ref: v.service_level_ref,
        shutdown,
        vni: v.vni.map(i64::from),
    })
}
