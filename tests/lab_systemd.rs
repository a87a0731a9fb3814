//! The real-systemd tier (README "The kernel lab", "Under a real systemd"): the Debian package
//! installed with `dpkg -i` on a Debian 12 root booted with systemd as PID 1, and the unit's
//! promises checked there. One VM runs every check in order (each builds on the previous one's
//! state); each `#[test]` reports its own check's verdict, with the guest console on failure.

mod lab;

/// The checks, in the order the guest runs them.
const CHECKS: &[&str] = &[
    "install",
    "start_returns_after_ready",
    "vxc_ping_tagged",
    "verify_under_sandbox",
    "journal_structured_fields",
    "watchdog_restart_hitless",
    "reload_adds_port_same_pid",
    "restart_hitless",
    "stop_leaves_dataplane",
    "security_exposure",
    "remove_keeps_state_purge_removes_it",
];

/// Bash functions `check_<name>`, each run with `set -euo pipefail` as root in the guest.
const SCRIPT: &str = r#"
KEY=6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11
fail() { echo "FAIL: $*" >&2; systemctl status vxcd --no-pager -l -n 30 >&2 || true; exit 1; }
# wait_for SECS WHAT CMD...: polls CMD until it succeeds, fails after SECS.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || fail "$what: not within $secs s"
    sleep 0.2
  done
}
# step WHAT: the guest uptime at each step, so slow steps show in the console.
step() { local up; read -r up _ < /proc/uptime; echo "[$up] $*"; }
show() { systemctl show -p "$1" --value vxcd; }
ifindexes() { cat /sys/class/net/eth1.200/ifindex /sys/class/net/eth2.100/ifindex | tr '\n' ' '; }
vxc_up() { vxcctl vxcs | grep -qE '^v-17 +lab +up '; }
ping_across() {
  ip netns exec cust ping -c 3 -i 0.2 -W 2 10.50.0.2 || fail "ping from cust (VLAN 200) to prov 10.50.0.2 (VLAN 100) failed"
}
running_again() {
  local p; p=$(show MainPID)
  [ "$p" != 0 ] && [ "$p" != "$1" ] && [ "$(show ActiveState)/$(show SubState)" = active/running ]
}
config() {
  mkdir -p /etc/vxcd
  cat > /etc/vxcd/vxcd.toml <<EOF
[control]
socket = "/run/vxcd/control.sock"

[[port]]
name = "syd-1"
interface = "eth1"

[[port]]
name = "syd-2"
interface = "eth2"
EOF
  [ -z "${1:-}" ] || printf '\n[[port]]\nname = "syd-3"\ninterface = "eth3"\n' >> /etc/vxcd/vxcd.toml
}

check_install() {
  if [ ! -f /lab/vxcd.deb ]; then
    install -m 755 /lab/manual/vxcd /lab/manual/vxcctl /usr/local/bin/
    install -m 644 /lab/manual/vxcd.service /etc/systemd/system/vxcd.service
    mkdir -p /etc/vxcd && install -m 644 /lab/manual/vxcd.toml /etc/vxcd/vxcd.toml
    systemctl daemon-reload && systemctl enable vxcd
    fail "no .deb in the image (no [package.metadata.deb] in Cargo.toml): binaries and unit installed by hand so the other checks run"
  fi
  step "dpkg -i"
  dpkg -i /lab/vxcd.deb | grep -v "^(Reading database"
  [ "$(command -v vxcd)" = /usr/sbin/vxcd ] || fail "vxcd is not /usr/sbin/vxcd: $(command -v vxcd)"
  [ "$(command -v vxcctl)" = /usr/bin/vxcctl ] || fail "vxcctl is not /usr/bin/vxcctl: $(command -v vxcctl)"
  step "vxcctl --help, man vxcctl"
  vxcctl --help | grep -q '^Usage: vxcctl' || fail "vxcctl --help printed no usage"
  man -P cat vxcctl 2>&1 | sed 's/.\x08//g' > /tmp/man.txt
  grep -q '^NAME' /tmp/man.txt && grep -q 'vxcctl' /tmp/man.txt || fail "man vxcctl: $(head -5 /tmp/man.txt)"
  # The subcommand pages and the daemon's page in section 8, generated from the same clap code.
  man -P cat vxcctl-vxc-put 2>&1 | grep -q -- '--a-vlan' || fail "man vxcctl-vxc-put does not document --a-vlan"
  man -P cat 8 vxcd 2>&1 | grep -q -- '--check-config' || fail "man 8 vxcd does not document --check-config"
  for f in /usr/share/zsh/vendor-completions/_vxcctl /usr/share/fish/vendor_completions.d/vxcctl.fish; do
    [ -s "$f" ] || fail "no completion file $f"
  done
  vxcd --check-config --config /etc/vxcd/vxcd.toml || fail "the shipped /etc/vxcd/vxcd.toml does not pass vxcd --check-config"
  step "bash completion"
  # Bash completion as an interactive shell gets it: the lazy loader, then the function's answer.
  local words
  words=$(bash -c '. /usr/share/bash-completion/bash_completion; _completion_loader vxcctl
    f=$(complete -p vxcctl | sed -n "s/.*-F \([^ ]*\).*/\1/p"); [ -n "$f" ] || exit 3
    COMP_WORDS=(vxcctl st); COMP_CWORD=1; COMP_LINE="vxcctl st"; COMP_POINT=9
    "$f" vxcctl st vxcctl; echo "${COMPREPLY[*]}"') || fail "no bash completion for vxcctl (complete -p vxcctl after the loader)"
  echo "completion of 'vxcctl st': $words"
  echo " $words " | grep -q ' status ' || fail "bash completion of 'vxcctl st' does not offer status: $words"
  step "group, conffile, enabled"
  getent group vxcd >/dev/null || fail "the package made no vxcd group"
  dpkg-query -W -f='${Conffiles}\n' vxcd | grep -q '/etc/vxcd/vxcd.toml' || fail "/etc/vxcd/vxcd.toml is not a conffile"
  [ "$(systemctl is-enabled vxcd)" = enabled ] || fail "vxcd is $(systemctl is-enabled vxcd) after install, not enabled"
  ! systemctl is-active -q vxcd || fail "vxcd is running right after install (the ports are not set yet)"
}

check_start_returns_after_ready() {
  ip netns add cust; ip netns add prov
  ip link add eth1 type veth peer name eth0 netns cust
  ip link add eth2 type veth peer name eth0 netns prov
  ip link set eth1 up; ip link set eth2 up
  for ns in cust prov; do ip -n $ns link set lo up; ip -n $ns link set eth0 up; done
  ip -n cust link add link eth0 name eth0.200 type vlan id 200
  ip -n cust addr add 10.50.0.1/24 dev eth0.200; ip -n cust link set eth0.200 up
  ip -n prov link add link eth0 name eth0.100 type vlan id 100
  ip -n prov addr add 10.50.0.2/24 dev eth0.100; ip -n prov link set eth0.100 up
  config
  # A short watchdog so the watchdog check is quick; the abort timeout because a stopped
  # process cannot act on SIGABRT (only SIGKILL ends it).
  mkdir -p /etc/systemd/system/vxcd.service.d
  printf '[Service]\nWatchdogSec=5s\nTimeoutAbortSec=2s\nRestartSec=1s\n' > /etc/systemd/system/vxcd.service.d/lab.conf
  systemctl daemon-reload
  [ "$(show Type)" = notify ] || fail "the unit is Type=$(show Type), not notify: start would not wait for READY=1"
  step "a bad config is refused by ExecStartPre"
  config; echo 'bogus_key = 1' >> /etc/vxcd/vxcd.toml
  ! systemctl start vxcd 2>/dev/null || fail "systemctl start succeeded with a bad config"
  journalctl -u vxcd --no-pager | grep -q 'configuration refused' || fail "no 'configuration refused' reason in the journal"
  [ ! -e /run/vxcd/control.sock ] || fail "a refused start left a socket"
  systemctl reset-failed vxcd
  config
  step "start"
  systemctl start vxcd
  local state; state=$(systemctl show -p ActiveState,SubState,MainPID vxcd | tr '\n' ' ')
  echo "right after start returned: $state"
  case "$state" in *ActiveState=active*) ;; *) fail "not active right after start: $state" ;; esac
  case "$state" in *SubState=running*) ;; *) fail "not running right after start: $state" ;; esac
  [ "$(show MainPID)" != 0 ] || fail "no MainPID: $state"
  # No retry: READY=1 promises the socket listens.
  vxcctl status || fail "the control socket did not answer right after start returned"
  local status; status=$(show StatusText)
  echo "StatusText: $status"
  [ -n "$status" ] || fail "no STATUS= text after start (systemctl status shows no progress line)"
  case "$status" in ready:*) ;; *) fail "STATUS= after start is not the ready line: $status" ;; esac
  # Group=vxcd in the unit: the socket belongs to the package's group, mode 0660 from the config.
  [ "$(stat -c %G:%a /run/vxcd/control.sock)" = vxcd:660 ] || fail "socket is $(stat -c %U:%G:%a /run/vxcd/control.sock), not group vxcd mode 660"
}

check_vxc_ping_tagged() {
  vxcctl key put --key $KEY --port syd-2 --max-speed 1000 --single-use --vlan 100 --description lab
  vxcctl vxc put --id v-17 --name lab --key $KEY --rate 500 --a-port syd-1 --a-vlan 200
  wait_for 15 "VXC v-17 up in vxcctl vxcs" vxc_up
  vxcctl vxcs
  for side in cust:200 prov:100; do
    ns=${side%:*}; vlan=${side#*:}
    ip netns exec $ns timeout 30 tcpdump -e -n -l -i eth0 -c 2 "vlan $vlan and icmp" >/tmp/$ns.txt 2>/tmp/$ns.err &
    eval "pid_$ns=\$!"
    wait_for 10 "tcpdump listening in $ns" grep -q listening /tmp/$ns.err
  done
  ping_across
  wait $pid_cust || fail "tcpdump in cust saw no 2 ICMP frames tagged 200: $(cat /tmp/cust.txt /tmp/cust.err)"
  wait $pid_prov || fail "tcpdump in prov saw no 2 ICMP frames tagged 100: $(cat /tmp/prov.txt /tmp/prov.err)"
  cat /tmp/cust.txt /tmp/prov.txt
  grep -q 'vlan 200,.*ICMP echo request' /tmp/cust.txt || fail "no echo request tagged 200 on the customer wire"
  grep -q 'vlan 200,.*ICMP echo reply' /tmp/cust.txt || fail "no echo reply tagged 200 on the customer wire"
  grep -q 'vlan 100,.*ICMP echo request' /tmp/prov.txt || fail "no echo request tagged 100 on the provider wire"
  grep -q 'vlan 100,.*ICMP echo reply' /tmp/prov.txt || fail "no echo reply tagged 100 on the provider wire"
}

check_verify_under_sandbox() {
  vxcctl verify v-17 || fail "vxcctl verify v-17 failed under the unit's sandbox"
}

check_journal_structured_fields() {
  journalctl -u vxcd -o json --no-pager > /tmp/journal.json
  echo "$(wc -l < /tmp/journal.json) records of vxcd"
  grep '"VXC":"v-17"' /tmp/journal.json | head -2
  grep -q '"VXC":"v-17"' /tmp/journal.json || fail "no journal record with the field VXC=v-17"
  grep -q '"PORT":"syd-2"' /tmp/journal.json || fail "no journal record with the field PORT=syd-2"
  grep -q "\"KEY\":\"$KEY\"" /tmp/journal.json || fail "no journal record with the field KEY=$KEY"
}

check_watchdog_restart_hitless() {
  [ "$(show WatchdogUSec)" = 5s ] || fail "WatchdogUSec is $(show WatchdogUSec), the drop-in said 5s"
  local pid before restarts
  pid=$(show MainPID); before=$(ifindexes); restarts=$(show NRestarts)
  echo "MainPID $pid, ifindexes $before, NRestarts $restarts; SIGSTOP"
  kill -STOP "$pid"
  wait_for 40 "systemd restarting the stopped vxcd (new MainPID, active/running)" running_again "$pid"
  echo "MainPID now $(show MainPID), NRestarts $(show NRestarts)"
  [ "$(show NRestarts)" -gt "$restarts" ] || fail "NRestarts did not grow"
  journalctl -u vxcd --no-pager | grep -i 'watchdog timeout' || fail "systemd logged no watchdog timeout"
  [ "$(ifindexes)" = "$before" ] || fail "subinterface ifindexes changed across the watchdog restart: $before -> $(ifindexes)"
  vxc_up || fail "VXC v-17 not up after the watchdog restart: $(vxcctl vxcs)"
  ping_across
}

check_reload_adds_port_same_pid() {
  local pid; pid=$(show MainPID)
  ip link add eth3 type dummy; ip link set eth3 up
  config with-syd-3
  systemctl reload vxcd
  wait_for 15 "port syd-3 in vxcctl ports after reload" sh -c 'vxcctl ports | grep -q syd-3'
  vxcctl ports
  [ "$(show MainPID)" = "$pid" ] || fail "reload changed the MainPID: $pid -> $(show MainPID)"
  [ "$(show ActiveState)" = active ] || fail "vxcd not active after reload"
}

check_restart_hitless() {
  local pid before; pid=$(show MainPID); before=$(ifindexes)
  systemctl restart vxcd
  running_again "$pid" || fail "not active/running with a new MainPID after restart: $(systemctl show -p ActiveState,SubState,MainPID vxcd)"
  [ "$(ifindexes)" = "$before" ] || fail "ifindexes changed across restart: $before -> $(ifindexes)"
  vxc_up || fail "VXC v-17 not up after restart"
  ping_across
}

check_stop_leaves_dataplane() {
  local before; before=$(ifindexes)
  systemctl stop vxcd
  [ "$(show ActiveState)" = inactive ] || fail "vxcd is $(show ActiveState) after stop"
  [ ! -e /run/vxcd/control.sock ] || fail "the control socket is still there after stop"
  [ "$(ifindexes)" = "$before" ] || fail "subinterfaces changed by stop: $before -> $(ifindexes)"
  ping_across
}

check_security_exposure() {
  systemd-analyze security vxcd --no-pager > /tmp/security.txt 2>&1 || true
  local line value
  line=$(grep 'Overall exposure level' /tmp/security.txt) || fail "no exposure line: $(tail -5 /tmp/security.txt)"
  echo "$line"
  value=$(echo "$line" | sed -n 's/.*: *\([0-9][0-9.]*\).*/\1/p')
  [ -n "$value" ] || fail "cannot read the exposure from: $line"
  awk -v v="$value" 'BEGIN { exit !(v <= 2.0) }' || { grep -v '^  ✓' /tmp/security.txt >&2; fail "exposure $value is above 2.0"; }
}

check_remove_keeps_state_purge_removes_it() {
  step "dpkg -r"
  dpkg -r vxcd | grep -v "^(Reading database"
  [ ! -e /usr/sbin/vxcd ] || fail "/usr/sbin/vxcd is still there after dpkg -r"
  [ -s /var/lib/vxcd/journal.log ] || [ -s /var/lib/vxcd/snapshot.json ] || fail "dpkg -r removed the state in /var/lib/vxcd: $(ls -la /var/lib/vxcd 2>&1)"
  grep -q syd-3 /etc/vxcd/vxcd.toml || fail "dpkg -r removed or reset the operator's /etc/vxcd/vxcd.toml"
  step "dpkg -i again: the operator's config and the state are picked up"
  dpkg -i /lab/vxcd.deb | grep -v "^(Reading database"
  grep -q syd-3 /etc/vxcd/vxcd.toml || fail "reinstall replaced the operator's /etc/vxcd/vxcd.toml"
  [ "$(systemctl is-enabled vxcd)" = enabled ] || fail "vxcd is $(systemctl is-enabled vxcd) after reinstall"
  systemctl start vxcd
  vxc_up || fail "VXC v-17 not up after remove and reinstall (state lost?): $(vxcctl vxcs)"
  step "upgrade (the same version over itself) restarts a running vxcd, hitless"
  local pid before; pid=$(show MainPID); before=$(ifindexes)
  dpkg -i /lab/vxcd.deb | grep -v "^(Reading database"
  running_again "$pid" || fail "vxcd not restarted (new MainPID, active/running) by the upgrade: $(systemctl show -p ActiveState,SubState,MainPID vxcd)"
  [ "$(ifindexes)" = "$before" ] || fail "ifindexes changed across the upgrade: $before -> $(ifindexes)"
  step "dpkg --purge"
  dpkg --purge vxcd | grep -v "^(Reading database"
  ! systemctl is-active -q vxcd || fail "vxcd still running after purge"
  [ ! -e /var/lib/vxcd ] || fail "dpkg --purge left /var/lib/vxcd: $(ls -A /var/lib/vxcd)"
  [ ! -e /etc/vxcd/vxcd.toml ] || fail "dpkg --purge left /etc/vxcd/vxcd.toml"
  [ -e /sys/class/net/eth1.200 ] || fail "purge removed the dataplane (eth1.200): customer traffic would stop"
}
"#;

macro_rules! checks {
    ($($name:ident)*) => {$(
        #[test]
        fn $name() {
            lab::sysroot::check(stringify!($name), SCRIPT, CHECKS);
        }
    )*};
}

checks! {
    install
    start_returns_after_ready
    vxc_ping_tagged
    verify_under_sandbox
    journal_structured_fields
    watchdog_restart_hitless
    reload_adds_port_same_pid
    restart_hitless
    stop_leaves_dataplane
    security_exposure
    remove_keeps_state_purge_removes_it
}
