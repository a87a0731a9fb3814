//! The real-systemd lab tier: a Debian 12 root file system built from Debian's packages with
//! mmdebstrap (cached under `target/lab/sysroot-<key>/`), the cloud kernel's modules added, copied
//! per run into an ext4 image on virtio-blk with the run's files (the .deb, the checks), and booted
//! under qemu with systemd as PID 1 behind a busybox first stage that loads virtio_blk and
//! switches root. A oneshot unit after multi-user.target runs the checks on the serial console in
//! the same `@@lab begin/end` markers as the scenario lab, so `vm::VmRun::verdict` reads them.

use super::cpio::Cpio;
use super::vm::{self, run_capture, which, Kernel, VmRun};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Debian packages of the root (besides minbase). The cache key includes this list, so a change
/// rebuilds the root. No Rust toolchain: the package must install on a plain Debian 12.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "man-db",
    "bash-completion",
    "procps",
    // On every standard Debian 12 (not in minbase): a package's postinst may use addgroup.
    "adduser",
];
const SUITE: &str = "bookworm";
/// Bumped when the root's post-processing changes.
const ROOT_LAYOUT_VERSION: u32 = 2;

/// Units that would write on the console or wake up during the checks.
const MASKED_UNITS: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
];

/// First stage: virtio-blk, then the ext4 root and systemd.
const FIRST_STAGE_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

/// The first stage's /init (busybox, PID 1 until switch_root).
const FIRST_STAGE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
while read m; do /bin/busybox insmod "/modules/$m" || echo "@@lab insmod-failed $m"; done < /modules/order
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do /bin/busybox sleep 0.1; n=$((n+1)); done
/bin/busybox mount -t ext4 -o rw /dev/vda /newroot || { echo "@@lab no-root"; /bin/busybox poweroff -f; }
read up _ < /proc/uptime; echo "@@lab init uptime=$up"
/bin/busybox umount /proc
/bin/busybox umount /dev
exec /bin/busybox switch_root /newroot /lib/systemd/systemd
"#;

/// Runs the check script after multi-user.target, on the serial console.
const RUNNER_UNIT: &str = "[Unit]
Description=vxcd lab checks
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/bash /lab/run.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
";

/// Runs each named check of /lab/checks.sh in its own bash (`set -euo pipefail`), bounded, between
/// markers; then powers off.
const RUNNER: &str = r#"#!/bin/bash
exec </dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
# Plain text on the serial console: no colours, links or pager.
export SYSTEMD_COLORS=0 SYSTEMD_URLIFY=0 SYSTEMD_PAGER=cat PAGER=cat
read up _ < /proc/uptime; echo "@@lab ready uptime=$up"
systemd-analyze time 2>&1 | head -2
for c in $(cat /lab/checks); do
  read t0 _ < /proc/uptime
  echo "@@lab begin $c"
  timeout CHECK_TIMEOUT bash -euo pipefail -c ". /lab/checks.sh; check_$c" 2>&1
  rc=$?
  read t1 _ < /proc/uptime
  echo
  echo "@@lab end $c rc=$rc t0=$t0 t1=$t1"
done
echo "@@lab done"
systemctl poweroff --force
"#;

fn tell(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The cached root directory for this kernel and package list; built when missing.
pub fn root(kernel: &Kernel) -> Result<PathBuf, String> {
    let mut hasher = DefaultHasher::new();
    (
        ROOT_LAYOUT_VERSION,
        SUITE,
        PACKAGES,
        MASKED_UNITS,
        &kernel.version,
    )
        .hash(&mut hasher);
    let dir = vm::lab_dir().join(format!("sysroot-{:016x}", hasher.finish()));
    let root = dir.join("root");
    if root.join("lib/systemd/systemd").exists() {
        return Ok(root);
    }
    let mmdebstrap = which("mmdebstrap")
        .ok_or("mmdebstrap not found (install the Debian package mmdebstrap; tests/run.sh does so as root)")?;
    let started = Instant::now();
    let tmp = vm::lab_dir().join(format!("sysroot-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let tmp_root = tmp.join("root");
    let mut cmd = Command::new(mmdebstrap);
    cmd.args(["--quiet", "--variant=minbase", "--mode=root"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args(["--aptopt=Acquire::Languages \"none\""])
        .arg(SUITE)
        .arg(&tmp_root);
    // The host's own apt sources (its mirror and security archive), never a name in this repo.
    for source in host_apt_sources()? {
        cmd.arg(source);
    }
    run_capture(&mut cmd).map_err(|e| format!("building the Debian root with mmdebstrap: {e}"))?;
    // The kernel's modules, and modules.dep for them (the kernel .deb ships none).
    let modules = tmp_root.join("usr/lib/modules");
    fs::create_dir_all(&modules).map_err(|e| format!("creating {}: {e}", modules.display()))?;
    run_capture(
        Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules_dir)
            .arg(modules.join(&kernel.version)),
    )?;
    run_capture(
        Command::new("chroot")
            .arg(&tmp_root)
            .args(["depmod", &kernel.version]),
    )?;
    // man-db's trigger rebuilds its index on every package install (seconds under TCG); `man`
    // finds pages without it.
    run_capture(Command::new("chroot").arg(&tmp_root).args([
        "sh",
        "-c",
        "echo 'man-db man-db/auto-update boolean false' | debconf-set-selections",
    ]))?;
    let write = |rel: &str, text: &str| {
        let path = tmp_root.join(rel);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write("etc/hostname", "vxcd-lab\n")?;
    write("etc/fstab", "/dev/vda / ext4 rw 0 0\n")?;
    // A fixed machine id: no first-boot presets, the same journal directory every run.
    write("etc/machine-id", "6c6162766d6c6162766d6c6162766d31\n")?;
    let system = tmp_root.join("etc/systemd/system");
    for unit in MASKED_UNITS {
        let link = system.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)
            .map_err(|e| format!("masking {unit}: {e}"))?;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)
        .map_err(|e| format!("moving {} to {}: {e}", tmp.display(), dir.display()))?;
    tell(&format!(
        "lab systemd: Debian root built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        root.display()
    ));
    Ok(root)
}

/// The host's apt source files, as mmdebstrap takes them (one-line .list or deb822 .sources).
fn host_apt_sources() -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let list = PathBuf::from("/etc/apt/sources.list");
    let has_entries = |p: &Path| {
        fs::read_to_string(p).is_ok_and(|t| {
            t.lines()
                .any(|l| l.trim_start().starts_with("deb ") || l.trim_start().starts_with("Types:"))
        })
    };
    if has_entries(&list) {
        found.push(list);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .filter(|p| has_entries(p))
            .collect();
        files.sort();
        found.extend(files);
    }
    if found.is_empty() {
        return Err(
            "this machine has no apt sources (/etc/apt/sources.list{,.d}) for mmdebstrap".into(),
        );
    }
    Ok(found)
}

/// The package built by `cargo deb` (tests/run.sh builds it before the lab tier), refused when
/// older than the sources it was built from.
pub fn deb() -> Result<Option<PathBuf>, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo_toml = fs::read_to_string(manifest.join("Cargo.toml"))
        .map_err(|e| format!("reading Cargo.toml: {e}"))?;
    if let Ok(path) = std::env::var("VXCD_LAB_DEB") {
        return Ok(Some(PathBuf::from(path)));
    }
    if !cargo_toml.contains("[package.metadata.deb]") {
        // No packaging yet: the checks install the binaries by hand and the install check fails.
        return Ok(None);
    }
    let dir = manifest.join("target/debian");
    let newest = fs::read_dir(&dir)
        .map_err(|e| {
            format!(
                "no {} (run `cargo deb` first; tests/run.sh does): {e}",
                dir.display()
            )
        })?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("vxcd_") && n.ends_with(".deb")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .ok_or_else(|| {
            format!(
                "no vxcd_*.deb in {} (run `cargo deb` first; tests/run.sh does)",
                dir.display()
            )
        })?;
    // Everything the package is made of: code, unit, sysusers, maintainer scripts, the conffile,
    // the man pages' and completions' generator and the packaging metadata.
    let sources = [
        "src",
        "systemd",
        "debian",
        "config",
        "build.rs",
        "Cargo.toml",
    ]
    .iter()
    .map(|p| newest_mtime(&manifest.join(p)))
    .max()
    .unwrap_or(SystemTime::UNIX_EPOCH);
    if sources > newest.0 {
        return Err(format!(
            "{} is older than the sources (src/, systemd/, debian/, config/, build.rs, Cargo.toml; \
             run `cargo deb` again; tests/run.sh does)",
            newest.1.display()
        ));
    }
    Ok(Some(newest.1))
}

/// The newest modification time of a file, or of the files under a directory.
fn newest_mtime(dir: &Path) -> SystemTime {
    if dir.is_file() {
        return fs::metadata(dir)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let t = if path.is_dir() {
                newest_mtime(&path)
            } else {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            };
            newest = newest.max(t);
        }
    }
    newest
}

/// The busybox first stage: virtio and ext4 modules (dependencies first) and /init.
fn first_stage(kernel: &Kernel) -> Result<Vec<u8>, String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox not found (install the Debian package busybox-static)")?;
    let mut cpio = Cpio::new();
    let data = fs::read(&busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    cpio.file("/bin/busybox", 0o755, &data);
    cpio.file("/init", 0o755, FIRST_STAGE_INIT.as_bytes());
    let order = vm::module_load_order(&kernel.modules_dir, FIRST_STAGE_MODULES)?;
    let mut list = String::new();
    for rel in &order {
        let data = fs::read(kernel.modules_dir.join(rel))
            .map_err(|e| format!("reading module {rel}: {e}"))?;
        cpio.file(&format!("/modules/{rel}"), 0o644, &data);
        list.push_str(&format!("{rel}\n"));
    }
    cpio.file("/modules/order", 0o644, list.as_bytes());
    Ok(cpio.finish())
}

/// The run's files, written into a hard-linked copy of the root (only new files are written, so
/// the cache is never changed through a link).
fn stage_run(
    root: &Path,
    run: &Path,
    script: &str,
    checks: &[&str],
    deb: Option<&Path>,
) -> Result<(), String> {
    let _ = fs::remove_dir_all(run);
    run_capture(Command::new("cp").arg("-al").arg(root).arg(run))?;
    // man-db's trigger rebuilds its index (mandb, 10-20 s under TCG) on every dpkg run while this
    // flag file exists; the debconf answer set in the root does not remove it (only man-db's
    // postinst does). Unlinking it in the copy leaves the cached root alone.
    match fs::remove_file(run.join("var/lib/man-db/auto-update")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("removing man-db's auto-update flag: {e}"))
        }
        _ => {}
    }
    let lab = run.join("lab");
    fs::create_dir_all(&lab).map_err(|e| format!("creating {}: {e}", lab.display()))?;
    let write = |path: PathBuf, data: &[u8]| {
        fs::write(&path, data).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let timeout = std::env::var("VXCD_LAB_CHECK_TIMEOUT_SECS").unwrap_or_else(|_| "150".into());
    write(
        lab.join("run.sh"),
        RUNNER.replace("CHECK_TIMEOUT", &timeout).as_bytes(),
    )?;
    write(lab.join("checks.sh"), script.as_bytes())?;
    write(lab.join("checks"), checks.join("\n").as_bytes())?;
    match deb {
        Some(deb) => {
            fs::copy(deb, lab.join("vxcd.deb"))
                .map_err(|e| format!("copying {}: {e}", deb.display()))?;
        }
        None => {
            // Until the package exists: the binaries, the unit and the default config by hand.
            let manual = lab.join("manual");
            fs::create_dir_all(&manual)
                .map_err(|e| format!("creating {}: {e}", manual.display()))?;
            for name in ["vxcd", "vxcctl"] {
                let bin =
                    vm::host_binary(name).ok_or_else(|| format!("binary {name} was not built"))?;
                fs::copy(&bin, manual.join(name))
                    .map_err(|e| format!("copying {}: {e}", bin.display()))?;
            }
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            for (from, to) in [
                ("systemd/vxcd.service", "vxcd.service"),
                ("config/vxcd.toml", "vxcd.toml"),
            ] {
                fs::copy(manifest.join(from), manual.join(to))
                    .map_err(|e| format!("copying {from}: {e}"))?;
            }
        }
    }
    let system = run.join("etc/systemd/system");
    write(system.join("vxcd-lab.service"), RUNNER_UNIT.as_bytes())?;
    let wants = system.join("multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(|e| format!("creating {}: {e}", wants.display()))?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/vxcd-lab.service",
        wants.join("vxcd-lab.service"),
    )
    .map_err(|e| format!("enabling the lab runner unit: {e}"))?;
    Ok(())
}

/// Host-side timings of one run.
pub struct Timings {
    pub root: Duration,
    pub image: Duration,
}

static RUN: OnceLock<Result<(VmRun, Timings), String>> = OnceLock::new();

/// Boots the systemd guest once per test executable (first caller), runs all `checks` of
/// `script` (bash functions `check_<name>`), and turns check `name`'s outcome into pass or fail.
pub fn check(name: &str, script: &str, checks: &[&str]) {
    let run = RUN.get_or_init(|| {
        let result = boot(script, checks);
        match &result {
            Ok((run, t)) => {
                let mut summary = format!(
                    "lab systemd: root {:.1} s, image {:.1} s, first stage done at uptime {}, multi-user.target at uptime {}, VM wall {:.1} s",
                    t.root.as_secs_f64(),
                    t.image.as_secs_f64(),
                    run.init_uptime.map_or("?".into(), |u| format!("{u:.1} s")),
                    run.ready_uptime.map_or("?".into(), |u| format!("{u:.1} s")),
                    run.wall.as_secs_f64()
                );
                for c in checks {
                    let state = match run.verdict(c) {
                        vm::Verdict::Passed { guest_secs, .. } => format!("ok      {guest_secs:6.2} s"),
                        vm::Verdict::Failed { guest_secs, .. } => format!("FAILED  {guest_secs:6.2} s"),
                        vm::Verdict::Unfinished { .. } => "UNFINISHED".into(),
                        vm::Verdict::NotStarted => "not started".into(),
                    };
                    summary.push_str(&format!("\nlab systemd:   {state}  {c}"));
                }
                summary.push_str(&format!("\nlab systemd: console in {}", run.console_log.display()));
                tell(&summary);
            }
            Err(e) => tell(&format!("lab systemd: could not run: {e}")),
        }
        result
    });
    let run = match run {
        Ok((run, _)) => run,
        Err(e) => panic!("systemd lab check {name}: the VM could not run: {e}"),
    };
    let failure = match run.verdict(name) {
        vm::Verdict::Passed { .. } => return,
        vm::Verdict::Failed { rc, guest_secs, output } => format!(
            "systemd lab check {name} FAILED in the guest (exit status {rc}{}) after {guest_secs:.2} s\n\
             ---- guest console for {name} ----\n{}\n---- end of guest console for {name} ----",
            if rc == 124 { ", killed by the per-check timeout" } else { "" },
            output.join("\n")
        ),
        vm::Verdict::Unfinished { output } => format!(
            "systemd lab check {name} did not finish: {}\n---- guest console ----\n{}\n---- end ----",
            run.abnormal_end.as_deref().unwrap_or("the guest stopped"),
            output.join("\n")
        ),
        vm::Verdict::NotStarted => format!(
            "systemd lab check {name} never started in the guest: {}\n---- last guest console lines ----\n{}\n---- end ----",
            run.abnormal_end.as_deref().unwrap_or("the runner did not reach it"),
            run.console_tail(80)
        ),
    };
    println!("{failure}");
    std::panic::resume_unwind(Box::new(failure));
}

fn boot(script: &str, checks: &[&str]) -> Result<(VmRun, Timings), String> {
    let qemu = which("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 not found (install qemu-system-x86)")?;
    which("mke2fs").ok_or("mke2fs not found (install the Debian package e2fsprogs)")?;
    let deb = deb()?;
    let kernel = vm::kernel()?;
    let t_root = Instant::now();
    let root = root(&kernel)?;
    let root_time = t_root.elapsed();

    let t_image = Instant::now();
    let work = vm::lab_dir().join(format!("systemd-run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let tree = work.join("root");
    stage_run(&root, &tree, script, checks, deb.as_deref())?;
    let image = work.join("root.img");
    run_capture(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg("2000M"),
    )
    .map_err(|e| format!("making the ext4 image: {e}"))?;
    let _ = fs::remove_dir_all(&tree);
    let initrd = work.join("first-stage.cpio");
    fs::write(&initrd, first_stage(&kernel)?)
        .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    let image_time = t_image.elapsed();

    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "1024"])
        .args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,cache=unsafe", image.display()))
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off ipv6.disable_ipv6=1 systemd.show_status=error",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let console_log = vm::lab_dir().join("console-lab_systemd.log");
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting qemu: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().ok_or("qemu without stdout")?;
    let mut stderr = child.stderr.take().ok_or("qemu without stderr")?;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let timeout = Duration::from_secs(
        std::env::var("VXCD_LAB_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(480),
    );
    let verbose = std::env::var("VXCD_LAB_VERBOSE").is_ok_and(|v| v == "1");
    let mut log = fs::File::create(&console_log).ok();
    let mut console = Vec::new();
    let mut abnormal_end = None;
    loop {
        match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
            Ok(line) => {
                if verbose {
                    tell(&format!("guest| {line}"));
                }
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                abnormal_end = Some(format!(
                    "the VM did not power off within {} s (VXCD_LAB_TIMEOUT_SECS); qemu was killed",
                    timeout.as_secs()
                ));
                break;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
    let wall = started.elapsed();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let _ = fs::remove_dir_all(&work);
    let has = |m: &str| console.iter().any(|l| l.contains(&format!("@@lab {m}")));
    if abnormal_end.is_none() && !status.success() {
        abnormal_end = Some(format!("qemu exited with {status}: {}", qemu_stderr.trim()));
    }
    if abnormal_end.is_none() && !has("done") {
        abnormal_end = Some(format!(
            "the guest powered off before the runner finished {}",
            qemu_stderr.trim()
        ));
    }
    let uptime = |key: &str| {
        console.iter().find_map(|l| {
            let m = &l[l.find(&format!("@@lab {key} uptime="))? + key.len() + 14..];
            m.split_whitespace().next()?.parse().ok()
        })
    };
    let run = VmRun {
        kernel_version: kernel.version.clone(),
        init_uptime: uptime("init"),
        ready_uptime: uptime("ready"),
        console,
        prep: root_time + image_time,
        wall,
        abnormal_end,
        console_log,
    };
    Ok((
        run,
        Timings {
            root: root_time,
            image: image_time,
        },
    ))
}
