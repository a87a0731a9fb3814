//! `vxcd --check-config` (the unit's ExecStartPre): says what the config holds or why it is
//! refused, exits 0 or 1, and touches neither the socket nor the state.

use std::path::Path;
use std::process::{Command, Output};

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vxcd"))
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("running vxcd --check-config")
}

fn config_text(dir: &Path, extra_control: &str) -> String {
    format!(
        "[control]\nsocket = \"{}/control.sock\"\n{extra_control}\n[state]\ndir = \"{}/state\"\n\n\
         [[port]]\nname = \"syd-1\"\ninterface = \"eth1\"\n\n[[port]]\nname = \"syd-2\"\ninterface = \"eth2\"\n",
        dir.display(),
        dir.display()
    )
}

#[test]
fn a_good_config_exits_0_naming_its_ports_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxcd.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("2 ports (syd-1 on eth1, syd-2 on eth2)"),
        "{stdout}"
    );
    assert!(
        !dir.path().join("control.sock").exists(),
        "--check-config created the socket"
    );
    assert!(
        !dir.path().join("state").exists(),
        "--check-config created the state dir"
    );
}

#[test]
fn a_config_that_does_not_parse_exits_1_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxcd.toml");
    std::fs::write(
        &path,
        config_text(dir.path(), "").replace("[state]", "[state]\ncompact_evry = 3"),
    )
    .unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("compact_evry"), "{stderr}");
    assert!(out.stdout.is_empty(), "a refused config printed on stdout");
}

#[test]
fn an_unknown_socket_group_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vxcd.toml");
    let text = config_text(dir.path(), "group = \"no-such-group-vxcd\"\n");
    std::fs::write(&path, text).unwrap();
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-group-vxcd"), "{stderr}");
}

#[test]
fn a_missing_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("absent.toml"), "{stderr}");
}
