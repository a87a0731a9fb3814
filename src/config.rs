//! `vxcd.toml`: where the socket and the state live, who may change things, how shaping and
//! reconciliation behave, and the ports. Unknown keys and invalid values are refused with the file,
//! the line and the key, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::dataplane::{BurstPolicy, DataplaneConfig, DEFAULT_OWNER_GROUP};
use crate::domain::PortName;
use crate::inspector::InspectConfig;

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub shaping: ShapingConfig,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub inspector: InspectorSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[core]`: this host's place on the VXLAN core; absent: only VXCs between its own ports.
    #[serde(default)]
    pub core: Option<CoreSection>,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortConfig>,
}

/// `[core]`: the VXLAN core between edge hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreSection {
    /// This host's VTEP address (IPv4 or IPv6): the source of its tunnels, and the address its
    /// peers name as `host`.
    pub address: String,
    /// UDP destination port of the tunnels.
    #[serde(default = "default_udp_port")]
    pub udp_port: u16,
    /// The uplink towards the core: the tunnels are bound to it and take its MTU less the
    /// encapsulation (50 bytes over IPv4, 70 over IPv6).
    #[serde(default)]
    pub interface: Option<String>,
}

fn default_udp_port() -> u16 {
    4789
}

/// The validated `[core]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Core {
    pub address: std::net::IpAddr,
    pub udp_port: u16,
    pub interface: Option<String>,
}

/// `[metrics]`: the Prometheus endpoint, off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `address:port` to serve `GET /metrics` on, e.g. `127.0.0.1:9863`.
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The Unix socket the control plane and vxcctl connect to.
    pub socket: PathBuf,
    /// Permission bits of the socket, as an octal string ("0660").
    pub mode: Spanned<String>,
    /// Group owning the socket (None: the daemon's group).
    pub group: Option<Spanned<String>>,
    /// Users (names or numeric uids) allowed to change state besides root.
    pub writers: Vec<Spanned<String>>,
    /// Connections open at once from users who may only read (root and writers have a reserve
    /// beyond it, so a flood of readers never locks them out).
    pub max_connections: usize,
    /// Connections open at once from one uid (root and writers excepted).
    pub max_connections_per_uid: usize,
    /// Seconds a connection may go without a complete request before it is closed.
    pub idle_timeout_s: u64,
    /// MiB of partial request lines buffered across all connections at once.
    pub buffer_budget_mib: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/vxcd/control.sock"),
            mode: Spanned::new(0..0, "0660".to_owned()),
            group: None,
            writers: Vec::new(),
            max_connections: 256,
            max_connections_per_uid: 64,
            idle_timeout_s: 60,
            buffer_budget_mib: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of the snapshot and journal (see `store`).
    pub dir: PathBuf,
    /// Journal records after which the whole state is written as a new snapshot.
    pub compact_every: usize,
}

/// Default of `state.compact_every`.
pub const DEFAULT_COMPACT_EVERY: usize = 4096;

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/vxcd"),
            compact_every: DEFAULT_COMPACT_EVERY,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Seconds between full checks of the kernel against the state.
    pub interval_s: u64,
    /// Repair drift (true) or only report it (false: observe-only, for maintenance and tests).
    pub repair: bool,
    /// Receive buffer of the kernel event socket in bytes; 0 keeps the kernel's default. When a
    /// burst overflows it, the kernel drops events and vxcd runs a full resync.
    pub event_buffer_bytes: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval_s: 30,
            repair: true,
            event_buffer_bytes: 0,
        }
    }
}

/// Burst policy of the TBF shapers (see `dataplane::tbf`): burst = max(rate x burst_us,
/// burst_frames full-size frames); queue limit = rate x latency_us + burst, as iproute2 computes it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    pub burst_us: u32,
    pub burst_frames: u32,
    pub latency_us: u32,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        let policy = BurstPolicy::default();
        ShapingConfig {
            burst_us: policy.min_burst_us,
            burst_frames: policy.min_burst_frames,
            latency_us: policy.latency_us,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    /// Interface group (IFLA_GROUP) that marks the links vxcd owns.
    pub owner_group: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            owner_group: DEFAULT_OWNER_GROUP,
        }
    }
}

/// The packet inspector: passive capture on every port interface, and `verify`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InspectorSection {
    /// Capture and classify frames on the ports (verify works either way).
    pub enabled: bool,
    /// Port names to inspect; empty: every port.
    pub ports: Vec<String>,
    /// Bytes kept of each frame: headers only; counters use the full length.
    pub snap_len: u32,
}

impl Default for InspectorSection {
    fn default() -> Self {
        let defaults = InspectConfig::default();
        InspectorSection {
            enabled: true,
            ports: Vec::new(),
            snap_len: defaults.snap_len,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// The port name used in keys and VXCs.
    pub name: Spanned<String>,
    /// The kernel interface.
    pub interface: Spanned<String>,
}

/// A configured port after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: PortName,
    pub interface: String,
}

/// A config that cannot be used: the file, and a message naming line and key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// The socket's access settings, resolved to numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub mode: u32,
    pub gid: Option<u32>,
    /// Uids besides root that may change state.
    pub writer_uids: Vec<u32>,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub idle_timeout: std::time::Duration,
    pub buffer_budget: usize,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            path: origin.to_owned(),
            message,
        };
        let config: Config =
            toml::from_str(text).map_err(|e| fail(e.to_string().trim_end().to_owned()))?;
        let at = |span: std::ops::Range<usize>, key: &str, why: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            fail(format!("line {line}, key {key}: {why}"))
        };
        let mut names = std::collections::HashSet::new();
        let mut interfaces = std::collections::HashSet::new();
        for port in &config.ports {
            PortName::parse("port.name", port.name.get_ref())
                .map_err(|e| at(port.name.span(), "port.name", e.to_string()))?;
            if !names.insert(port.name.get_ref().clone()) {
                return Err(at(
                    port.name.span(),
                    "port.name",
                    format!("port {} is configured twice", port.name.get_ref()),
                ));
            }
            check_ifname(port.interface.get_ref())
                .map_err(|why| at(port.interface.span(), "port.interface", why))?;
            if !interfaces.insert(port.interface.get_ref().clone()) {
                return Err(at(
                    port.interface.span(),
                    "port.interface",
                    format!(
                        "interface {} is given to two ports",
                        port.interface.get_ref()
                    ),
                ));
            }
        }
        parse_mode(config.control.mode.get_ref())
            .map_err(|why| at(config.control.mode.span(), "control.mode", why))?;
        if config.state.compact_every == 0 {
            return Err(fail("key state.compact_every: must be at least 1".into()));
        }
        if config.control.max_connections == 0
            || config.control.max_connections_per_uid == 0
            || config.control.idle_timeout_s == 0
            || config.control.buffer_budget_mib == 0
        {
            return Err(fail(
                "keys control.max_connections, control.max_connections_per_uid, \
                 control.idle_timeout_s and control.buffer_budget_mib: must be at least 1"
                    .into(),
            ));
        }
        if config.shaping.burst_frames == 0 || config.shaping.burst_us == 0 {
            return Err(fail(
                "keys shaping.burst_us and shaping.burst_frames: must be at least 1".into(),
            ));
        }
        if config.inspector.snap_len < 64 {
            return Err(fail(
                "key inspector.snap_len: must be at least 64 bytes".into(),
            ));
        }
        for name in &config.inspector.ports {
            if !names.contains(name) {
                return Err(fail(format!(
                    "key inspector.ports: {name:?} is not a configured port"
                )));
            }
        }
        if config.reconcile.interval_s == 0 {
            return Err(fail("key reconcile.interval_s: must be at least 1".into()));
        }
        if let Some(core) = &config.core {
            let address: std::net::IpAddr = core.address.parse().map_err(|_| {
                fail(format!(
                    "key core.address: {:?} is not an IPv4 or IPv6 address",
                    core.address
                ))
            })?;
            if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
                return Err(fail(format!(
                    "key core.address: {address} is not a unicast address a peer can reach"
                )));
            }
            if core.udp_port == 0 {
                return Err(fail("key core.udp_port: must be 1 to 65535".into()));
            }
            if let Some(interface) = &core.interface {
                check_ifname(interface)
                    .map_err(|why| fail(format!("key core.interface: {why}")))?;
                if interfaces.contains(interface) {
                    return Err(fail(format!(
                        "key core.interface: {interface} is a port's interface; the uplink \
                         carries no customer"
                    )));
                }
            }
        }
        if let Some(listen) = &config.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(fail(format!(
                    "key metrics.listen: {listen:?} is not an address:port (e.g. \"127.0.0.1:9863\")"
                )));
            }
        }
        Ok(config)
    }

    /// The validated `[core]`; `None` without one.
    pub fn core(&self) -> Option<Core> {
        let core = self.core.as_ref()?;
        Some(Core {
            address: core.address.parse().ok()?,
            udp_port: core.udp_port,
            interface: core.interface.clone(),
        })
    }

    /// Where `/metrics` is served; `None`: off.
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.metrics.listen.as_deref().and_then(|l| l.parse().ok())
    }

    /// The dataplane's settings.
    pub fn dataplane(&self) -> DataplaneConfig {
        DataplaneConfig {
            owner_group: self.dataplane.owner_group,
            burst: BurstPolicy {
                min_burst_us: self.shaping.burst_us,
                min_burst_frames: self.shaping.burst_frames,
                latency_us: self.shaping.latency_us,
            },
            ..DataplaneConfig::default()
        }
    }

    /// The inspector's settings, `None` when inspection is off.
    pub fn inspector(&self) -> Option<InspectConfig> {
        self.inspector.enabled.then(|| InspectConfig {
            snap_len: self.inspector.snap_len,
            ports: self.inspector.ports.clone(),
            ..InspectConfig::default()
        })
    }

    /// The validated ports.
    pub fn ports(&self) -> Vec<Port> {
        self.ports
            .iter()
            .filter_map(|p| {
                Some(Port {
                    name: PortName::parse("port.name", p.name.get_ref()).ok()?,
                    interface: p.interface.get_ref().clone(),
                })
            })
            .collect()
    }

    /// Resolves the socket mode, group and writers against the system's user database.
    pub fn access(&self) -> Result<Access, String> {
        let mode = parse_mode(self.control.mode.get_ref())?;
        let gid = match &self.control.group {
            None => None,
            Some(name) => Some(resolve_group(name.get_ref())?),
        };
        let writer_uids = self
            .control
            .writers
            .iter()
            .map(|w| resolve_user(w.get_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Access {
            mode,
            gid,
            writer_uids,
            max_connections: self.control.max_connections,
            max_connections_per_uid: self.control.max_connections_per_uid,
            idle_timeout: std::time::Duration::from_secs(self.control.idle_timeout_s),
            buffer_budget: self.control.buffer_budget_mib.saturating_mul(1 << 20),
        })
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if name.is_empty() || name.len() > MAX_IFNAME || bad_char || name == "." || name == ".." {
        return Err(format!(
            "{name:?} is not a Linux interface name (1 to {MAX_IFNAME} bytes, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

fn parse_mode(raw: &str) -> Result<u32, String> {
    u32::from_str_radix(raw.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{raw:?} is not an octal permission mode such as \"0660\""))
}

fn resolve_user(raw: &str) -> Result<u32, String> {
    if let Ok(uid) = raw.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(raw) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!(
            "control.writers: no user named {raw:?} on this host"
        )),
        Err(e) => Err(format!("control.writers: looking up user {raw:?}: {e}")),
    }
}

fn resolve_group(raw: &str) -> Result<u32, String> {
    if let Ok(gid) = raw.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(raw) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!(
            "control.group: no group named {raw:?} on this host"
        )),
        Err(e) => Err(format!("control.group: looking up group {raw:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[control]
socket = "/tmp/x.sock"
mode = "0600"
writers = ["0", "1000"]

[[port]]
name = "syd-1"
interface = "eth1"

[[port]]
name = "syd-2"
interface = "eth2"
"#;

    #[test]
    fn parses_a_full_config() {
        let config = Config::parse("t.toml", SAMPLE).unwrap();
        assert_eq!(config.control.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.ports().len(), 2);
        assert_eq!(config.ports()[1].interface, "eth2");
        let access = config.access().unwrap();
        assert_eq!(access.mode, 0o600);
        assert_eq!(access.writer_uids, vec![0, 1000]);
        assert_eq!(config.reconcile.interval_s, 30);
        assert!(config.reconcile.repair);
    }

    #[test]
    fn the_shipped_default_config_parses() {
        let text = include_str!("../config/vxcd.toml");
        let config = Config::parse("config/vxcd.toml", text).unwrap();
        assert_eq!(
            config.control.socket,
            PathBuf::from("/run/vxcd/control.sock")
        );
        assert_eq!(config.state.dir, PathBuf::from("/var/lib/vxcd"));
        assert!(!config.ports().is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[control]\nsocket = \"/x\"\n\n[reconcile]\nintervall_s = 5\n";
        let err = Config::parse("/etc/vxcd.toml", text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/vxcd.toml: "), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("intervall_s"), "{err}");
    }

    #[test]
    fn invalid_values_name_line_and_key() {
        let cases = [
            ("[[port]]\nname = \"syd 1\"\ninterface = \"eth1\"\n", "line 2, key port.name"),
            (
                "[[port]]\nname = \"a\"\ninterface = \"much-too-long-name0\"\n",
                "line 3, key port.interface",
            ),
            (
                "[[port]]\nname = \"a\"\ninterface = \"eth1\"\n[[port]]\nname = \"a\"\ninterface = \"eth2\"\n",
                "line 5, key port.name",
            ),
            (
                "[[port]]\nname = \"a\"\ninterface = \"eth1\"\n[[port]]\nname = \"b\"\ninterface = \"eth1\"\n",
                "line 6, key port.interface",
            ),
            ("[control]\nmode = \"rw\"\n", "line 2, key control.mode"),
        ];
        for (text, want) in cases {
            let err = Config::parse("c.toml", text).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = Config::parse("c.toml", "[reconcile]\ninterval_s = \"often\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("interval_s"),
            "{err}"
        );
    }

    #[test]
    fn unknown_writer_is_named() {
        let config =
            Config::parse("c.toml", "[control]\nwriters = [\"no-such-user-vxcd\"]\n").unwrap();
        let err = config.access().unwrap_err();
        assert!(err.contains("no-such-user-vxcd"), "{err}");
    }
}
