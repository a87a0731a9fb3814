#!/usr/bin/env bash
# The one test command (README "Run the tests"). On a fresh Debian/Ubuntu machine, run as root:
# it installs what the tests need, then runs every tier: unit, host (network namespaces on this
# kernel) and lab (Debian's cloud kernel under qemu, for 802.1Q).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# Lab tier (README.md, "The kernel lab"): qemu boots Debian's cloud kernel (fetched by the harness with
# apt-get download into target/lab/) with an initramfs holding static busybox, iproute2, tcpdump.
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
# A static busybox: ldd fails on it ("not a dynamic executable").
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need_pkgs+=(busybox-static)
command -v tcpdump >/dev/null || need_pkgs+=(tcpdump)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v ping >/dev/null || need_pkgs+=(iputils-ping)
command -v socat >/dev/null || need_pkgs+=(socat)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
# Real-systemd lab tier (tests/lab_systemd.rs): a Debian 12 root from Debian's packages on an ext4 image.
command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
command -v mke2fs >/dev/null || need_pkgs+=(e2fsprogs)
# rustup's toolchain links with the system C compiler.
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing ${need_pkgs[*]}; run as root to install them" >&2
    exit 2
  fi
  echo "tests/run.sh: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without recommends: qemu-system-x86 would pull a GUI the lab does not use.
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# rustup puts cargo in ~/.cargo/bin, which `sudo` drops from PATH (secure_path): look in the
# caller's, the sudo user's and root's rustup homes too. Debian 12's own cargo is too old.
if ! command -v cargo >/dev/null; then
  for home in "$HOME" "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}" /root; do
    if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
      export PATH="$home/.cargo/bin:$PATH"
      # rustup's proxies look for toolchains in RUSTUP_HOME, by default ~/.rustup of $HOME,
      # which is root's under sudo, not the user's whose cargo this is.
      if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$home/.rustup" ]; then export RUSTUP_HOME="$home/.rustup"; fi
      break
    fi
  done
fi
command -v cargo >/dev/null || {
  echo "tests/run.sh: cargo not found in PATH, ~/.cargo/bin, the sudo user's or root's ~/.cargo/bin (install Rust with rustup: README \"The two commands\")" >&2
  exit 2
}
# Where `cargo install` puts cargo-deb.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Unit and host tiers first, then the lab tier (tests/lab_*.rs: one qemu boot per file), each timed.
lab_tests=()
host_tests=()
for file in tests/*.rs; do
  name=$(basename "$file" .rs)
  case "$name" in
    lab_*) lab_tests+=(--test "$name") ;;
    *) host_tests+=(--test "$name") ;;
  esac
done
start=$(date +%s)
cargo test --lib --bins --examples --benches "${host_tests[@]}" -- --test-threads=2 "$@"
host_end=$(date +%s)
# tests/lab_systemd.rs installs the package with dpkg -i in the guest (and fails on a missing
# or stale one): cargo-deb (installed once, about 75 s here) builds it in release, as shipped.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
deb_start=$(date +%s)
cargo deb
echo "tests/run.sh: cargo deb $(( $(date +%s) - deb_start )) s"
# The lab tier: each tests/lab_*.rs is one qemu boot whose guest runs its scenarios one after
# another, so the boots run in two lanes at once (this machine has two cores; a TCG guest keeps
# about one busy). lab_selftest first, alone and whatever filter was given: it fetches the kernel
# and builds the base initramfs that every other boot shares, which two boots must not do at
# once. Then lab_daemon (the longest) in one lane and the rest in the other; each lane's output
# is printed once both have ended.
lab_exes=$(cargo test --no-run --message-format=json "${lab_tests[@]}" |
  grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
lab_exe() { echo "$lab_exes" | grep "/$1-[0-9a-f]*\$"; }
lane_a=(lab_daemon)
lane_b=()
for arg in "${lab_tests[@]}"; do
  case "$arg" in --test | lab_selftest | lab_daemon) ;; *) lane_b+=("$arg") ;; esac
done
lab_dir_log=target/lab-lanes
mkdir -p "$lab_dir_log"
# run_lane NAME TEST...: each test binary in turn, with the given test arguments, its output in
# target/lab-lanes/NAME.log.
run_lane() {
  local lane=$1; shift
  local log="$lab_dir_log/$lane.log"
  : > "$log"
  for name in "$@"; do
    local t0; t0=$(date +%s)
    echo "== $name" >> "$log"
    "$(lab_exe "$name")" --test-threads=2 "${test_args[@]}" >> "$log" 2>&1 || { echo "== $name FAILED" >> "$log"; return 1; }
    echo "== $name passed in $(( $(date +%s) - t0 )) s" >> "$log"
  done
}
lab_start=$(date +%s)
test_args=()
run_lane selftest lab_selftest || { cat "$lab_dir_log/selftest.log"; exit 1; }
cat "$lab_dir_log/selftest.log"
test_args=("$@")
# An interrupted run takes its lanes and their guests with it.
trap 'trap - INT TERM; kill 0' INT TERM
run_lane a "${lane_a[@]}" & lane_a_pid=$!
run_lane b "${lane_b[@]}" & lane_b_pid=$!
lab_rc=0
wait "$lane_a_pid" || lab_rc=1
wait "$lane_b_pid" || lab_rc=1
cat "$lab_dir_log/a.log" "$lab_dir_log/b.log"
[ "$lab_rc" -eq 0 ] || { echo "tests/run.sh: the lab tier failed (above)" >&2; exit 1; }
end=$(date +%s)
echo "tests/run.sh: unit and host tiers $(( host_end - start )) s, lab tier $(( end - lab_start )) s: all passed"
