//! Host side of the lab: fetches Debian's cloud kernel, builds the initramfs, boots qemu (TCG),
//! collects the serial console and cuts it into per-scenario results.

use super::cpio::Cpio;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where iproute2, tcpdump and busybox live in the guest. Guest helpers call these by full path
/// because busybox's shell prefers its own `ip`/`tc` applets over anything in PATH.
pub const GUEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "/usr/sbin/ip"),
    ("tc", "/usr/sbin/tc"),
    ("bridge", "/usr/sbin/bridge"),
    ("tcpdump", "/usr/bin/tcpdump"),
    // Scrapes /metrics (tests/lab_daemon.rs).
    ("curl", "/usr/bin/curl"),
];
/// Copied into the guest when the host has them; scenarios must not rely on them.
const OPTIONAL_TOOLS: &[(&str, &str)] = &[
    ("socat", "/usr/bin/socat"),
    ("ethtool", "/usr/sbin/ethtool"),
];

/// Kernel modules loaded at boot, dependencies first (resolved from each module's `depends=`).
const MODULES: &[&str] = &[
    "8021q",
    "veth",
    "dummy",
    "bridge",
    "macvlan",
    "ifb",
    "nlmon",
    // /dev/net/tun: the inspector injects verify probes through a tap device.
    "tun",
    // VXCs across edge hosts (tests/lab_core.rs); its dependencies udp_tunnel and
    // ip6_udp_tunnel come first by `depends=`.
    "vxlan",
    "sch_tbf",
    "sch_htb",
    "sch_ingress",
    "sch_prio",
    "sch_netem",
    "cls_u32",
    "cls_matchall",
    "cls_flower",
    "cls_bpf",
    "act_mirred",
    "act_vlan",
    "act_gact",
    "act_police",
];

/// Module parameters: no default devices in the root namespace, which scenarios do not own.
const MODULE_PARAMS: &[(&str, &str)] = &[("dummy", "numdummies=0"), ("ifb", "numifbs=0")];

/// Bumped when the base archive's layout changes, so stale caches are not reused.
const BASE_LAYOUT_VERSION: u32 = 2;

/// What the guest runs after boot.
pub enum GuestMode {
    /// Run these scenarios of the test executable, one after the other, then power off.
    Scenarios(Vec<String>),
    /// An interactive shell on the console, or this script when given; power off afterwards.
    Shell { script: Option<String> },
}

/// The lab's cache and scratch directory, `target/lab/`.
pub fn lab_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("VXCD_LAB_DIR") {
        return PathBuf::from(dir);
    }
    // Integration tests know target/tmp; other targets (the launcher example) fall back to the
    // package's target/.
    match option_env!("CARGO_TARGET_TMPDIR").and_then(|tmp| Path::new(tmp).parent()) {
        Some(target) => target.join("lab"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("lab"),
    }
}

pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

pub fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    run_capture(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// The package the metapackage `linux-image-cloud-amd64` depends on, e.g.
/// `linux-image-6.1.0-56-cloud-amd64`.
fn cloud_kernel_package() -> Result<String, String> {
    let ask = || -> Result<String, String> {
        let deps =
            run_capture(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "apt-cache depends linux-image-cloud-amd64 named no kernel package:\n{deps}"
                )
            })
    };
    match ask() {
        Ok(pkg) => Ok(pkg),
        Err(first) if is_root() => {
            // A fresh machine has empty package lists.
            run_capture(Command::new("apt-get").args(["update", "-qq"]))
                .map_err(|e| format!("{first}; then apt-get update failed: {e}"))?;
            ask()
        }
        Err(first) => Err(format!(
            "{first} (as root the lab would run apt-get update)"
        )),
    }
}

fn find_vmlinuz(unpacked: &Path) -> Option<(String, PathBuf)> {
    let boot = fs::read_dir(unpacked.join("boot")).ok()?;
    boot.filter_map(Result::ok).find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.strip_prefix("vmlinuz-")
            .map(|v| (v.to_string(), e.path()))
    })
}

/// How long the answer of `apt-cache depends` is reused: asking costs over a second and the
/// kernel package changes with Debian point releases only.
const KERNEL_CHOICE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `cloud_kernel_package()`, remembered in `target/lab/kernel/choice` for a day.
fn cloud_kernel_package_cached(kernels: &Path) -> Result<String, String> {
    let choice = kernels.join("choice");
    let fresh = fs::metadata(&choice)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < KERNEL_CHOICE_MAX_AGE);
    if fresh {
        if let Ok(pkg) = fs::read_to_string(&choice) {
            if !pkg.trim().is_empty() {
                return Ok(pkg.trim().to_string());
            }
        }
    }
    let pkg = cloud_kernel_package()?;
    let _ = fs::create_dir_all(kernels);
    let _ = fs::write(&choice, format!("{pkg}\n"));
    Ok(pkg)
}

/// The cloud kernel, unpacked under `target/lab/kernel/<package>/`; downloaded once.
pub fn kernel() -> Result<Kernel, String> {
    let kernels = lab_dir().join("kernel");
    let pkg = match cloud_kernel_package_cached(&kernels) {
        Ok(pkg) => pkg,
        Err(e) => {
            // Offline but cached: use what we have rather than fail.
            let cached = fs::read_dir(&kernels).ok().and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("linux-image-") && !n.contains(".tmp-"))
                    .max()
            });
            cached.ok_or_else(|| format!("cannot tell which cloud kernel to use: {e}"))?
        }
    };
    let unpacked = kernels.join(&pkg);
    if find_vmlinuz(&unpacked).is_none() {
        let download = lab_dir().join("download");
        fs::create_dir_all(&download)
            .map_err(|e| format!("creating {}: {e}", download.display()))?;
        run_capture(
            Command::new("apt-get")
                .args(["download", "-q", &pkg])
                .current_dir(&download),
        )
        .map_err(|e| format!("downloading kernel package {pkg}: {e}"))?;
        let deb = fs::read_dir(&download)
            .map_err(|e| format!("reading {}: {e}", download.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")
                })
            })
            .ok_or_else(|| {
                format!(
                    "apt-get download {pkg} left no .deb in {}",
                    download.display()
                )
            })?;
        let tmp = kernels.join(format!("{pkg}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        run_capture(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))
            .map_err(|e| format!("unpacking {}: {e}", deb.display()))?;
        // Rename last so a half-unpacked kernel is never taken for a cached one.
        if let Err(e) = fs::rename(&tmp, &unpacked) {
            let _ = fs::remove_dir_all(&tmp);
            if find_vmlinuz(&unpacked).is_none() {
                return Err(format!(
                    "moving {} to {}: {e}",
                    tmp.display(),
                    unpacked.display()
                ));
            }
        }
        let _ = fs::remove_file(&deb);
    }
    let (version, vmlinuz) = find_vmlinuz(&unpacked)
        .ok_or_else(|| format!("no boot/vmlinuz-* in {}", unpacked.display()))?;
    let modules_dir = unpacked.join("lib/modules").join(&version);
    Ok(Kernel {
        version,
        vmlinuz,
        modules_dir,
    })
}

/// Module file paths (relative to the modules dir) in load order, dependencies first.
pub fn module_load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>, String> {
    fn walk(dir: &Path, base: &Path, index: &mut HashMap<String, PathBuf>) -> Result<(), String> {
        for entry in fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
            let path = entry
                .map_err(|e| format!("reading {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(&path, base, index)?;
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    let rel = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
                    index.insert(stem.replace('-', "_"), rel);
                } else if name.contains(".ko.") {
                    return Err(format!(
                        "{}: compressed modules are not supported by the lab (busybox insmod)",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }
    let mut index = HashMap::new();
    walk(modules_dir, modules_dir, &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.rsplit('/')
                .next()?
                .strip_suffix(".ko")
                .map(|s| s.replace('-', "_"))
        })
        .collect();

    fn depends(ko: &[u8]) -> Vec<String> {
        // The .modinfo section holds NUL-separated `key=value` strings; `depends=` is always there.
        let key = b"\0depends=";
        let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
            return Vec::new();
        };
        let rest = &ko[at + key.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect()
    }

    fn visit(
        name: &str,
        modules_dir: &Path,
        index: &HashMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        let rel = index.get(name).ok_or_else(|| {
            format!(
                "kernel module {name} is neither in {} nor built in",
                modules_dir.display()
            )
        })?;
        let ko =
            fs::read(modules_dir.join(rel)).map_err(|e| format!("reading module {name}: {e}"))?;
        for dep in depends(&ko) {
            visit(&dep, modules_dir, index, builtin, seen, order)?;
        }
        order.push(rel.to_string_lossy().into_owned());
        Ok(())
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for name in wanted {
        visit(name, modules_dir, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Absolute paths of the shared libraries and dynamic loader `ldd` lists for `binary`.
fn shared_libs(binary: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("running ldd: {e}"))?;
    // ldd exits 1 for static binaries ("not a dynamic executable"): nothing to add.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line.trim(),
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    found
}

/// One file of the base archive: its guest path and where its bytes come from.
enum Item {
    HostFile {
        guest: String,
        host: PathBuf,
        perm: u32,
    },
    Bytes {
        guest: String,
        perm: u32,
        data: Vec<u8>,
    },
}

fn hash_items(items: &[Item], hasher: &mut DefaultHasher) {
    for item in items {
        match item {
            Item::HostFile { guest, host, perm } => {
                (guest, host, perm).hash(hasher);
                if let Ok(meta) = fs::metadata(host) {
                    meta.len().hash(hasher);
                    meta.modified().ok().hash(hasher);
                }
            }
            Item::Bytes { guest, perm, data } => (guest, perm, data).hash(hasher),
        }
    }
}

fn add_items(cpio: &mut Cpio, items: &[Item]) -> Result<(), String> {
    for item in items {
        match item {
            Item::HostFile { guest, host, perm } => {
                let data = fs::read(host)
                    .map_err(|e| format!("reading {} for the initramfs: {e}", host.display()))?;
                cpio.file(guest, *perm, &data);
            }
            Item::Bytes { guest, perm, data } => cpio.file(guest, *perm, data),
        }
    }
    Ok(())
}

/// Binaries plus every library they need, deduplicated by guest path.
fn with_libs(binaries: Vec<(String, PathBuf)>) -> Result<Vec<Item>, String> {
    let mut items = BTreeMap::new();
    for (guest, host) in binaries {
        for lib in shared_libs(&host)? {
            items.entry(lib.clone()).or_insert(Item::HostFile {
                guest: lib.clone(),
                host: lib.into(),
                perm: 0o755,
            });
        }
        items.insert(
            guest.clone(),
            Item::HostFile {
                guest,
                host,
                perm: 0o755,
            },
        );
    }
    Ok(items.into_values().collect())
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:110::/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ntcpdump:x:110:\n";
/// Makes `ip`, `tc`, `bridge` in the interactive shell mean iproute2, not busybox's applets.
const PROFILE: &str = "ip() { /usr/sbin/ip \"$@\"; }\ntc() { /usr/sbin/tc \"$@\"; }\n\
bridge() { /usr/sbin/bridge \"$@\"; }\nPS1='lab# '\nexport PS1\n";

/// The cached base archive (gzip): busybox, iproute2, tcpdump, libraries, modules.
fn base_archive(kernel: &Kernel) -> Result<PathBuf, String> {
    let mut binaries = Vec::new();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("busybox not found (install the Debian package busybox-static)")?;
    binaries.push(("/bin/busybox".to_string(), busybox));
    for (tool, guest) in GUEST_TOOLS {
        let host = which(tool).ok_or_else(|| {
            format!("{tool} not found on this machine (Debian packages iproute2, tcpdump; tests/run.sh installs them)")
        })?;
        binaries.push((guest.to_string(), host));
    }
    for (tool, guest) in OPTIONAL_TOOLS {
        if let Some(host) = which(tool) {
            binaries.push((guest.to_string(), host));
        }
    }
    let mut items = with_libs(binaries)?;
    let order = module_load_order(&kernel.modules_dir, MODULES)?;
    for rel in &order {
        items.push(Item::HostFile {
            guest: format!("/lib/modules/{rel}"),
            host: kernel.modules_dir.join(rel),
            perm: 0o644,
        });
    }
    let mut list = String::new();
    for rel in &order {
        let stem = Path::new(rel)
            .file_stem()
            .map(|s| s.to_string_lossy().replace('-', "_"))
            .unwrap_or_default();
        let params = MODULE_PARAMS
            .iter()
            .find(|(m, _)| *m == stem)
            .map_or("", |(_, p)| p);
        list.push_str(&format!("{rel} {params}\n"));
    }
    items.push(Item::Bytes {
        guest: "/lab/modules".into(),
        perm: 0o644,
        data: list.into_bytes(),
    });
    for (guest, text) in [
        ("/etc/passwd", PASSWD),
        ("/etc/group", GROUP),
        ("/etc/profile", PROFILE),
    ] {
        items.push(Item::Bytes {
            guest: guest.into(),
            perm: 0o644,
            data: text.as_bytes().to_vec(),
        });
    }

    let mut hasher = DefaultHasher::new();
    (BASE_LAYOUT_VERSION, &kernel.version).hash(&mut hasher);
    hash_items(&items, &mut hasher);
    let path = lab_dir().join(format!(
        "base-{}-{:016x}.cpio.gz",
        kernel.version,
        hasher.finish()
    ));
    if path.is_file() {
        return Ok(path);
    }
    let mut cpio = Cpio::new();
    add_items(&mut cpio, &items)?;
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/root",
        "/var",
        "/usr/bin",
        "/usr/sbin",
        "/sbin",
    ] {
        cpio.dir(dir);
    }
    let plain = cpio.finish();
    let mut gzip = Command::new("gzip")
        .arg("-6")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running gzip for the initramfs: {e}"))?;
    let mut stdin = gzip.stdin.take().ok_or("gzip without stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(&plain));
    let mut gz = Vec::new();
    gzip.stdout
        .take()
        .ok_or("gzip without stdout")?
        .read_to_end(&mut gz)
        .map_err(|e| format!("reading gzip: {e}"))?;
    let _ = feeder.join();
    let status = gzip.wait().map_err(|e| format!("waiting for gzip: {e}"))?;
    if !status.success() {
        return Err(format!("gzip of the base initramfs exited with {status}"));
    }
    // The kernel looks for the next (uncompressed) archive at a 4-byte boundary; zeros between
    // archives are skipped.
    gz.resize(gz.len().next_multiple_of(512), 0);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, &gz).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("moving {} into place: {e}", tmp.display()))?;
    Ok(path)
}

/// `/init`: mount, load modules, quiet IPv6, then the mode's work, then power off. Lines starting
/// with `@@lab` are markers the host parses.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
export PATH=/lab:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root ENV=/etc/profile
read up _ < /proc/uptime; echo "@@lab init uptime=$up"
while read m params; do insmod "/lib/modules/$m" $params || echo "@@lab insmod-failed $m"; done < /lab/modules
/usr/sbin/ip link set lo up
read up _ < /proc/uptime; echo "@@lab ready uptime=$up"
. /lab/mode.sh
echo "@@lab done"
poweroff -f
"#;

/// Host environment variables passed on to the guest's processes.
const FORWARDED_ENV: &[&str] = &["RUST_BACKTRACE", "RUST_LOG"];

fn mode_script(mode: &GuestMode, scenario_timeout_secs: u64) -> String {
    let mut exports = String::new();
    for name in FORWARDED_ENV {
        // Only values that need no shell quoting; anything else stays on the host.
        let safe = |v: &String| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_=,.:-".contains(c))
        };
        if let Some(value) = std::env::var(name).ok().filter(safe) {
            exports.push_str(&format!("export {name}={value}\n"));
        }
    }
    exports
        + &match mode {
            GuestMode::Scenarios(_) => format!(
                r#"for t in $(cat /lab/scenarios); do
  read t0 _ < /proc/uptime
  echo "@@lab begin $t"
  VXCD_LAB_GUEST=1 timeout {scenario_timeout_secs} /lab/testexe --exact "$t" --nocapture --test-threads=1 </dev/null 2>&1
  rc=$?
  read t1 _ < /proc/uptime
  echo
  echo "@@lab end $t rc=$rc t0=$t0 t1=$t1"
done
"#
            ),
            GuestMode::Shell { script: Some(_) } => {
                "VXCD_LAB_GUEST=1 sh /lab/script; echo \"@@lab script rc=$?\"\n".to_string()
            }
            GuestMode::Shell { script: None } => {
                "echo 'lab: shell in the guest; exit (or Ctrl-D) powers off, Ctrl-A X kills qemu'\n\
             VXCD_LAB_GUEST=1 setsid cttyhack sh -l\n"
                    .to_string()
            }
        }
}

/// The project's binaries: from cargo when this is an integration test, else next to the
/// running executable's directory (target/debug/ for target/debug/examples/lab).
pub fn host_binary(name: &str) -> Option<PathBuf> {
    let from_cargo = match name {
        "vxcd" => option_env!("CARGO_BIN_EXE_vxcd"),
        "vxcctl" => option_env!("CARGO_BIN_EXE_vxcctl"),
        _ => None,
    };
    if let Some(path) = from_cargo {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The per-run archive (uncompressed: it changes every build and gzip would cost more than it
/// saves): /init, the mode, the test executable and the project's binaries.
fn run_archive(mode: &GuestMode, scenario_timeout_secs: u64) -> Result<Vec<u8>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the test executable: {e}"))?;
    let mut binaries = vec![("/lab/testexe".to_string(), exe)];
    // latency: examples/latency.rs, found next to the launcher (tests/lab/scale.sh uses it).
    for name in ["vxcd", "vxcctl", "latency"] {
        if let Some(path) = host_binary(name).filter(|p| p.is_file()) {
            binaries.push((format!("/lab/{name}"), path));
        }
    }
    let mut items = with_libs(binaries)?;
    items.push(Item::Bytes {
        guest: "/init".into(),
        perm: 0o755,
        data: INIT.as_bytes().to_vec(),
    });
    items.push(Item::Bytes {
        guest: "/lab/mode.sh".into(),
        perm: 0o644,
        data: mode_script(mode, scenario_timeout_secs).into_bytes(),
    });
    match mode {
        GuestMode::Scenarios(names) => {
            let list = names.iter().map(|n| format!("{n}\n")).collect::<String>();
            items.push(Item::Bytes {
                guest: "/lab/scenarios".into(),
                perm: 0o644,
                data: list.into_bytes(),
            });
        }
        GuestMode::Shell {
            script: Some(script),
        } => {
            items.push(Item::Bytes {
                guest: "/lab/script".into(),
                perm: 0o755,
                data: script.clone().into_bytes(),
            });
        }
        GuestMode::Shell { script: None } => {}
    }
    let mut cpio = Cpio::new();
    add_items(&mut cpio, &items)?;
    Ok(cpio.finish())
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A booted-and-finished VM: its console and how it ended.
pub struct VmRun {
    pub kernel_version: String,
    pub console: Vec<String>,
    /// Preparing kernel and initramfs on the host.
    pub prep: Duration,
    /// From starting qemu to its exit (or to killing it).
    pub wall: Duration,
    /// Guest uptime when /init started, and when modules were loaded.
    pub init_uptime: Option<f64>,
    pub ready_uptime: Option<f64>,
    /// Set when qemu did not end by itself (timeout) or ended badly.
    pub abnormal_end: Option<String>,
    pub console_log: PathBuf,
}

/// What one scenario did in the guest.
pub enum Verdict<'a> {
    Passed {
        guest_secs: f64,
        output: &'a [String],
    },
    Failed {
        rc: i32,
        guest_secs: f64,
        output: &'a [String],
    },
    /// Started but never finished (VM timed out or died).
    Unfinished {
        output: &'a [String],
    },
    NotStarted,
}

fn marker(line: &str) -> Option<&str> {
    line.find("@@lab ").map(|at| &line[at + "@@lab ".len()..])
}

fn field<'a>(marker: &'a str, key: &str) -> Option<&'a str> {
    marker
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl VmRun {
    pub fn verdict(&self, name: &str) -> Verdict<'_> {
        let begin = format!("begin {name}");
        let Some(start) = self
            .console
            .iter()
            .position(|l| marker(l) == Some(begin.as_str()))
        else {
            return Verdict::NotStarted;
        };
        let body = &self.console[start + 1..];
        let end_prefix = format!("end {name} ");
        let Some(end) = body
            .iter()
            .position(|l| marker(l).is_some_and(|m| m.starts_with(&end_prefix)))
        else {
            return Verdict::Unfinished { output: body };
        };
        let end_marker = marker(&body[end]).unwrap_or_default();
        let num = |k: &str| field(end_marker, k).and_then(|v| v.parse::<f64>().ok());
        let guest_secs = match (num("t0"), num("t1")) {
            (Some(t0), Some(t1)) => t1 - t0,
            _ => f64::NAN,
        };
        // Drop the empty line the guest prints before the end marker.
        let mut output = &body[..end];
        if output.last().is_some_and(|l| l.trim().is_empty()) {
            output = &output[..output.len() - 1];
        }
        match field(end_marker, "rc").and_then(|v| v.parse::<i32>().ok()) {
            Some(0) => Verdict::Passed { guest_secs, output },
            Some(rc) => Verdict::Failed {
                rc,
                guest_secs,
                output,
            },
            None => Verdict::Failed {
                rc: -1,
                guest_secs,
                output,
            },
        }
    }

    /// The last `n` console lines, for failures that are not any scenario's own.
    pub fn console_tail(&self, n: usize) -> String {
        let skip = self.console.len().saturating_sub(n);
        self.console[skip..].join("\n")
    }

    pub fn boot_summary(&self) -> String {
        let mut text = format!(
            "kernel {}: host prep {:.1} s",
            self.kernel_version,
            self.prep.as_secs_f64()
        );
        if let (Some(init), Some(ready)) = (self.init_uptime, self.ready_uptime) {
            text.push_str(&format!(
                ", /init at guest uptime {init:.1} s, modules loaded at {ready:.1} s"
            ));
        }
        text.push_str(&format!(", VM wall {:.1} s", self.wall.as_secs_f64()));
        text
    }
}

/// Boots the lab VM in `mode` and waits for it to power off. With `interactive`, qemu's console
/// is the terminal (nothing is collected); otherwise it is captured and also written to
/// `target/lab/console-<exe>.log`.
pub fn boot(mode: GuestMode, interactive: bool) -> Result<VmRun, String> {
    let prep_start = Instant::now();
    let qemu = which("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 not found (install the Debian package qemu-system-x86; tests/run.sh does so as root)")?;
    let kernel = kernel()?;
    let base = base_archive(&kernel)?;
    let scenario_timeout = env_secs("VXCD_LAB_SCENARIO_TIMEOUT_SECS", 180);
    let per_run = run_archive(&mode, scenario_timeout)?;
    let exe_stem = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "lab".into());
    let initrd = lab_dir().join(format!("initrd-{exe_stem}-{}.img", std::process::id()));
    let mut image = fs::read(&base).map_err(|e| format!("reading {}: {e}", base.display()))?;
    image.extend_from_slice(&per_run);
    fs::write(&initrd, &image).map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    drop(image);
    let prep = prep_start.elapsed();

    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1024",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    // mitigations=off: page-table isolation costs a TLB flush per syscall under TCG.
    // ipv6.disable_ipv6=1 is the default of every namespace's interfaces (a sysctl in the
    // root namespace is not inherited): saves time per link, keeps captures free of ND noise.
    // tsc=reliable clocksource=tsc: under TCG the kernel finds the TSC unstable and falls back
    // to the HPET, which the vDSO cannot read: every clock read (tokio reads it at each timer and
    // park) became a system call and an emulated HPET read, 160 per VXC created (strace). Real
    // edge hosts read the TSC in the vDSO; so does the lab now (qemu's TCG TSC is monotonic).
    .args([
        "-append",
        "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off ipv6.disable_ipv6=1 tsc=reliable clocksource=tsc",
    ]);
    let console_log = lab_dir().join(format!("console-{exe_stem}.log"));
    let started = Instant::now();
    if interactive {
        let status = cmd
            .args(["-serial", "mon:stdio"])
            .status()
            .map_err(|e| format!("starting qemu: {e}"));
        let _ = fs::remove_file(&initrd);
        let status = status?;
        return Ok(VmRun {
            kernel_version: kernel.version,
            console: Vec::new(),
            prep,
            wall: started.elapsed(),
            init_uptime: None,
            ready_uptime: None,
            abnormal_end: (!status.success()).then(|| format!("qemu exited with {status}")),
            console_log,
        });
    }

    cmd.args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("starting qemu: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().ok_or("qemu without stdout")?;
    let stderr = child.stderr.take().ok_or("qemu without stderr")?;
    let reader = std::thread::spawn(move || {
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
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });

    // A hang limit for the whole VM, not a timing assertion: lab_daemon's scenarios take about
    // 300 s of guest time under TCG (the atomic batch of 500 alone about 100 s).
    let timeout = Duration::from_secs(env_secs("VXCD_LAB_TIMEOUT_SECS", 600));
    let verbose = std::env::var("VXCD_LAB_VERBOSE").is_ok_and(|v| v == "1");
    let mut log = fs::File::create(&console_log).ok();
    let mut console = Vec::new();
    let mut abnormal_end = None;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if verbose {
                    let _ = writeln!(std::io::stderr(), "guest| {line}");
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
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let _ = fs::remove_file(&initrd);
    if abnormal_end.is_none() && !status.success() {
        abnormal_end = Some(format!("qemu exited with {status}: {}", qemu_stderr.trim()));
    }
    if abnormal_end.is_none() && !console.iter().any(|l| marker(l) == Some("done")) {
        abnormal_end = Some(format!(
            "the guest powered off without finishing /init {}",
            qemu_stderr.trim()
        ));
    }
    let uptime = |key: &str| {
        console
            .iter()
            .filter_map(|l| marker(l))
            .find(|m| m.starts_with(key))
            .and_then(|m| field(m, "uptime").and_then(|v| v.parse().ok()))
    };
    Ok(VmRun {
        kernel_version: kernel.version,
        init_uptime: uptime("init "),
        ready_uptime: uptime("ready "),
        console,
        prep,
        wall,
        abnormal_end,
        console_log,
    })
}
