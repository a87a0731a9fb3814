//! systemd/vxcd.service: systemd itself accepts it, and it keeps the settings the daemon relies on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../systemd/vxcd.service");
/// Where the Debian package installs the daemon (Cargo.toml `[package.metadata.deb]`).
const INSTALLED_EXEC: &str = "/usr/sbin/vxcd";
/// Highest `systemd-analyze security` exposure the unit may have (issue 12).
const MAX_EXPOSURE: f64 = 2.0;

/// `Key=Value` settings per section; a key given twice keeps every value in order.
fn settings(unit: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut section = String::new();
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line without '=': {line}"));
        out.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    out
}

fn one(settings: &BTreeMap<(String, String), Vec<String>>, section: &str, key: &str) -> String {
    let values = settings
        .get(&(section.to_owned(), key.to_owned()))
        .unwrap_or_else(|| panic!("[{section}] has no {key}="));
    assert_eq!(
        values.len(),
        1,
        "[{section}] {key}= given {} times",
        values.len()
    );
    values[0].clone()
}

fn words(value: &str) -> Vec<&str> {
    let mut words: Vec<&str> = value.split_whitespace().collect();
    words.sort_unstable();
    words
}

/// Runs `systemd-analyze verify` on `unit_text` saved as vxcd.service in a temp dir. systemd 252
/// exits 0 on unknown keys and unparsable values (it only logs them), so every message about the
/// unit counts as a failure too: Err carries systemd-analyze's exit status and messages.
fn verify(unit_text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxcd.service");
    std::fs::write(&path, unit_text).unwrap();
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed, so the unit cannot be verified: install the \
             systemd package (tests/run.sh does: apt-get install systemd)"
        ),
        Err(e) => panic!("running systemd-analyze verify: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("vxcd.service") || l.contains(&*path.to_string_lossy()))
        .collect();
    if !out.status.success() || !about_unit.is_empty() {
        return Err(format!(
            "systemd-analyze verify exited {}: {stderr}",
            out.status
        ));
    }
    Ok(())
}

/// The unit with ExecStartPre and ExecStart pointing at the vxcd just built (verify checks that
/// they are executable).
fn unit_with_built_binary() -> String {
    let built = env!("CARGO_BIN_EXE_vxcd");
    assert!(Path::new(built).exists(), "{built} was not built");
    let mut replaced = UNIT.to_owned();
    for key in ["ExecStartPre", "ExecStart"] {
        let prefix = format!("\n{key}={INSTALLED_EXEC} ");
        assert!(
            replaced.contains(&prefix),
            "the unit has no line starting {prefix:?}"
        );
        replaced = replaced.replace(&prefix, &format!("\n{key}={built} "));
    }
    replaced
}

/// `systemd-analyze security --offline=true` of the unit file: the overall exposure and the full
/// report (for the failure message).
fn exposure() -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxcd.service");
    std::fs::write(&path, UNIT).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap_or_else(|e| panic!("running systemd-analyze security: {e}"));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze security printed no exposure (exit {}): {report}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let value = line
        .rsplit(':')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    (value, report)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if let Err(report) = verify(&unit_with_built_binary()) {
        panic!("{report}");
    }
}

#[test]
fn verify_as_used_here_catches_a_broken_unit() {
    let good = unit_with_built_binary();
    let typo = good.replace("WatchdogSec=", "WatchdgSec=");
    assert!(verify(&typo).is_err(), "an unknown key went unnoticed");
    let bad_type = good.replace("Type=notify", "Type=notifyy");
    assert!(verify(&bad_type).is_err(), "a bad Type= went unnoticed");
    let missing = good.replace(env!("CARGO_BIN_EXE_vxcd"), "/nonexistent/vxcd");
    assert!(
        verify(&missing).is_err(),
        "a missing ExecStart went unnoticed"
    );
}

#[test]
fn the_unit_keeps_the_settings_vxcd_relies_on() {
    let s = settings(UNIT);
    let svc = "Service";
    assert_eq!(one(&s, svc, "Type"), "notify");
    assert_eq!(
        one(&s, svc, "ExecStart"),
        format!("{INSTALLED_EXEC} --config /etc/vxcd/vxcd.toml")
    );
    // A bad config is refused before anything is touched, with the reason in systemctl status.
    assert_eq!(
        one(&s, svc, "ExecStartPre"),
        format!("{INSTALLED_EXEC} --check-config --config /etc/vxcd/vxcd.toml")
    );
    // vxcd re-reads its config on SIGHUP.
    assert_eq!(one(&s, svc, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // The package's group owns the socket (no chown: the filter below refuses it).
    assert_eq!(one(&s, svc, "Group"), "vxcd");
    assert_eq!(one(&s, svc, "WatchdogSec"), "60");
    assert_eq!(one(&s, svc, "Restart"), "on-failure");
    assert_eq!(one(&s, svc, "RuntimeDirectory"), "vxcd");
    assert_eq!(one(&s, svc, "StateDirectory"), "vxcd");
    assert_eq!(one(&s, svc, "KillSignal"), "SIGTERM");
    assert!(s.contains_key(&(svc.to_owned(), "TimeoutStopSec".to_owned())));
    assert_eq!(
        words(&one(&s, svc, "CapabilityBoundingSet")),
        ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    );
    // verify's probe tap: the host's /dev behind a device ACL that lets exactly tun through.
    // PrivateDevices= would hide /dev/net/tun whatever DeviceAllow= says.
    assert!(!s.contains_key(&(svc.to_owned(), "PrivateDevices".to_owned())));
    assert_eq!(one(&s, svc, "DevicePolicy"), "closed");
    assert_eq!(one(&s, svc, "DeviceAllow"), "/dev/net/tun rw");
    assert_eq!(
        words(&one(&s, svc, "RestrictAddressFamilies")),
        ["AF_NETLINK", "AF_PACKET", "AF_UNIX"]
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
    ] {
        assert_eq!(one(&s, svc, key), value, "{key}");
    }
    // Runs as root (with the bounding set above); every link property goes over rtnetlink.
    assert!(!s.contains_key(&(svc.to_owned(), "User".to_owned())));
    assert_eq!(one(&s, svc, "ProtectKernelTunables"), "yes");
    assert_eq!(one(&s, "Install", "WantedBy"), "multi-user.target");
}

#[test]
fn security_exposure_is_at_most_2() {
    let (value, report) = exposure();
    assert!(
        value <= MAX_EXPOSURE,
        "systemd-analyze security --offline=true rates the unit {value}, above {MAX_EXPOSURE}:\n{report}"
    );
}
