#!/bin/sh
# Scale run in the kernel lab (prints figures; not part of the test suite). Release build; the whole
# run (SIZES="1000 4000") takes longer than the lab's default VM limit of 600 s:
#     VXCD_LAB_TIMEOUT_SECS=7200 LAB_RELEASE=1 tests/lab-shell.sh tests/lab/scale.sh
#     (echo 'SIZES="30 100"'; cat tests/lab/scale.sh) > /tmp/s.sh && LAB_RELEASE=1 tests/lab-shell.sh /tmp/s.sh
# (the guest gets no environment from the host: SIZES is set in the script it runs; a first line
# N=1000 still works and means SIZES=1000)
#
# For each size N of SIZES, in one boot, side by side: iproute2's batch mode making exactly the
# objects vxcd makes for N VXCs (create; delete link by link; delete by the owner group), then vxcd
# with one multi-use key: N vxc.put pipelined on one connection (each VXC the next free VLAN on both
# ports); a restart over the N VXCs already right; N vxc.delete pipelined; the N puts again as ONE
# batch request, non-atomic; an atomic batch delete of all (the kernel's bulk path); the N puts as
# one atomic batch. Each figure with its ratio to the reference where one applies; vxcd's peak RSS.
# At the largest size, with N VXCs in place: the latency of single vxc.get and vxc.put requests
# while full reconcile passes (SIGHUP) run, by examples/latency.rs (/lab/latency in the guest).
# Then, for the first size only (to bound the time), the same N across hosts (issue 10): the B-End
# on a peer, reached over a VXLAN device of its own each (a VNI per VXC): created, restarted and
# deleted one by one.
# Times are under qemu TCG: ratios matter, not absolute values.
set -e
SIZES=${SIZES:-${N:-1000 4000}}
IP=/usr/sbin/ip
TC=/usr/sbin/tc
SOCK=/tmp/s/control.sock
now() { cut -d' ' -f1 /proc/uptime; }
# since T0: seconds from T0 to now, two decimals.
since() { awk "BEGIN{printf \"%.2f\", $(now) - $1}"; }
# ratio A B: A / B as "2.49x".
ratio() { awk "BEGIN{if ($2 > 0) printf \"%.2fx\", $1 / $2; else print \"-\"}"; }
ctl() { socat -t 900 - UNIX-CONNECT:$SOCK; }
links() { $IP -n edge -o link show | wc -l; }
hwm() { awk '/VmHWM/{printf "%.1f MiB", $2 / 1024}' /proc/$VXCD/status; }
# ok_lines FILE: answers with "ok":true; ok_results FILE: the same inside one batch answer.
ok_lines() { grep -c '"ok":true' "$1" || true; }
ok_results() { echo $(( $(grep -o '"ok":true' "$1" | wc -l) - 1 )); }
# expect WHAT GOT WANT [FILE]: a line (and the first refusals of FILE) when GOT is not WANT.
FAILED=0
expect() {
  if [ "$2" != "$3" ]; then
    FAILED=$((FAILED + 1))
    echo "!! $1: $2, expected $3"
    [ -n "$4" ] && grep -o '"ok":false,"error":{[^}]*}' "$4" | head -3
  fi
  return 0
}
T_START=$(now)
FIRST=${SIZES%% *}
LARGEST=$(for s in $SIZES; do echo $s; done | sort -n | tail -1)

$IP netns add edge; $IP netns add far
$IP -n edge link set lo up
# IPv6 address generation off by default in the edge namespace, for the reference and vxcd alike:
# neither makes link-local addresses on its subinterfaces (vxcd then creates each up in one
# request, as the reference does).
$IP netns exec edge sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/addr_gen_mode'
$IP link add cust0 netns edge type veth peer name c0 netns far
$IP link add prov0 netns edge type veth peer name p0 netns far
$IP -n edge link set cust0 up; $IP -n edge link set prov0 up
BASE_LINKS=$(links)
mkdir -p /tmp/s
cat > /tmp/s/vxcd.toml <<TOML
[control]
socket = "$SOCK"
[state]
dir = "/tmp/s/state"
[reconcile]
interval_s = 3600
[inspector]
enabled = false
[[port]]
name = "syd-1"
interface = "cust0"
[[port]]
name = "syd-2"
interface = "prov0"
TOML
# Each start logs one "reconciled in" line at the end of its first pass (the socket is bound
# before it): a start is over when that line is there. Sets VXCD, START_S and START_LINE.
start_vxcd() {
  t0=$(now)
  before=$(grep -c "reconciled in" /tmp/s/log 2>/dev/null || true)
  $IP netns exec edge vxcd --config /tmp/s/vxcd.toml 2>>/tmp/s/log &
  VXCD=$!
  while [ "$(grep -c "reconciled in" /tmp/s/log 2>/dev/null || true)" -le "${before:-0}" ]; do sleep 0.05; done
  START_S=$(since $t0)
  START_LINE=$(grep "reconciled in" /tmp/s/log | tail -1 | sed 's/.*\(reconciled in\)/\1/')
}
stop_vxcd() { kill -TERM $VXCD; wait $VXCD || true; }

# The request files for N VXCs, and the reference's batch files: per VXC two VLAN subinterfaces
# (up, promisc, vxcd's group and alias), a TBF at 10 Mbit/s with vxcd's burst and limit on each,
# an ingress qdisc on each, a match-all u32 redirect each way.
write_files() {
  awk -v n="$1" 'BEGIN {
    d = "/tmp/s/"
    put = "{\"op\":\"vxc.put\",\"vxc\":{\"id\":\"v-%d\",\"name\":\"scale\",\"service_key\":\"m-1\",\"rate_mbps\":10,\"a_end\":{\"port\":\"syd-1\"}}}"
    printf "" > (d "ip.batch"); printf "" > (d "tc.batch"); printf "" > (d "ipdel.batch")
    printf "" > (d "puts"); printf "" > (d "dels")
    printf "{\"op\":\"batch\",\"atomic\":false,\"ops\":[" > (d "batchput")
    printf "{\"op\":\"batch\",\"atomic\":true,\"ops\":[" > (d "batchputa")
    printf "{\"op\":\"batch\",\"atomic\":true,\"ops\":[" > (d "batchdel")
    for (i = 1; i <= n; i++) {
      v = i + 1
      split("cust0 a prov0 b", e, " ")
      for (k = 1; k <= 3; k += 2) {
        dev = e[k] "." v
        print "link add link " e[k] " name " dev " up group 30819 type vlan id " v > (d "ip.batch")
        print "link set dev " dev " promisc on alias vxcd:v-" i ":" e[k + 1] > (d "ip.batch")
        print "qdisc add dev " dev " root handle 7863: tbf rate 10mbit burst 12176 limit 37176" > (d "tc.batch")
        print "qdisc add dev " dev " ingress" > (d "tc.batch")
        print "link del dev " dev > (d "ipdel.batch")
      }
      print "filter add dev cust0." v " ingress prio 30819 protocol all u32 match u32 0 0 action mirred egress redirect dev prov0." v > (d "tc.batch")
      print "filter add dev prov0." v " ingress prio 30819 protocol all u32 match u32 0 0 action mirred egress redirect dev cust0." v > (d "tc.batch")
      printf put "\n", i > (d "puts")
      printf "{\"op\":\"vxc.delete\",\"id\":\"v-%d\"}\n", i > (d "dels")
      sep = (i > 1) ? "," : ""
      printf sep put, i > (d "batchput")
      printf sep put, i > (d "batchputa")
      printf "%s{\"op\":\"vxc.delete\",\"id\":\"v-%d\"}", sep, i > (d "batchdel")
    }
    print "]}" > (d "batchput"); print "]}" > (d "batchputa"); print "]}" > (d "batchdel")
  }'
}

for N in $SIZES; do
  write_files $N
  WANT_LINKS=$((BASE_LINKS + 2 * N))
  # ---- the reference: iproute2's batch mode ----
  t0=$(now)
  $IP -n edge -batch /tmp/s/ip.batch
  REF_IP=$(since $t0)
  t1=$(now)
  $TC -n edge -batch /tmp/s/tc.batch
  REF_TC=$(since $t1)
  REF_CREATE=$(since $t0)
  expect "N=$N reference create: links" "$(links)" $WANT_LINKS
  t0=$(now)
  $IP -n edge -batch /tmp/s/ipdel.batch
  REF_DEL=$(since $t0)
  expect "N=$N reference delete one by one: links left" "$(links)" $BASE_LINKS
  $IP -n edge -batch /tmp/s/ip.batch
  $TC -n edge -batch /tmp/s/tc.batch
  t0=$(now)
  $IP -n edge link del group 30819
  REF_GROUP=$(since $t0)
  expect "N=$N reference group delete: links left" "$(links)" $BASE_LINKS

  # ---- vxcd ----
  rm -rf /tmp/s/state
  start_vxcd
  echo '{"op":"key.put","key":{"key":"m-1","port":"syd-2","single_use":false,"max_speed_mbps":1000}}' \
    | ctl > /tmp/s/answers
  expect "N=$N key.put" "$(ok_lines /tmp/s/answers)" 1 /tmp/s/answers
  t0=$(now)
  ctl < /tmp/s/puts > /tmp/s/answers
  PUTS=$(since $t0)
  expect "N=$N vxc.put pipelined: ok" "$(ok_lines /tmp/s/answers)" $N /tmp/s/answers
  expect "N=$N vxc.put pipelined: links" "$(links)" $WANT_LINKS
  HWM_PUTS=$(hwm)
  stop_vxcd
  start_vxcd
  RESTART_S=$START_S; RESTART_LINE=$START_LINE
  expect "N=$N restart: VXCs in status" \
    "$(echo '{"op":"status"}' | ctl | grep -o '"vxcs":[0-9]*')" "\"vxcs\":$N"
  t0=$(now)
  ctl < /tmp/s/dels > /tmp/s/answers
  DELS=$(since $t0)
  expect "N=$N vxc.delete pipelined: ok" "$(ok_lines /tmp/s/answers)" $N /tmp/s/answers
  expect "N=$N vxc.delete pipelined: links left" "$(links)" $BASE_LINKS
  t0=$(now)
  ctl < /tmp/s/batchput > /tmp/s/answers
  BATCH=$(since $t0)
  expect "N=$N batch of vxc.put: ok" "$(ok_results /tmp/s/answers)" $N /tmp/s/answers
  expect "N=$N batch of vxc.put: links" "$(links)" $WANT_LINKS
  t0=$(now)
  ctl < /tmp/s/batchdel > /tmp/s/answers
  BATCHDEL=$(since $t0)
  expect "N=$N atomic batch delete: applied" "$(grep -c '"applied":true' /tmp/s/answers || true)" 1 /tmp/s/answers
  expect "N=$N atomic batch delete: links left" "$(links)" $BASE_LINKS
  t0=$(now)
  ctl < /tmp/s/batchputa > /tmp/s/answers
  ATOMIC=$(since $t0)
  expect "N=$N atomic batch of vxc.put: applied" "$(grep -c '"applied":true' /tmp/s/answers || true)" 1 /tmp/s/answers
  expect "N=$N atomic batch of vxc.put: links" "$(links)" $WANT_LINKS

  echo "N=$N create: reference $REF_CREATE s (ip -batch $REF_IP + tc -batch $REF_TC)," \
    "vxcd puts $PUTS s ($(ratio $PUTS $REF_CREATE)), vxcd batch $BATCH s ($(ratio $BATCH $REF_CREATE))," \
    "vxcd atomic batch $ATOMIC s ($(ratio $ATOMIC $REF_CREATE))"
  echo "N=$N delete: reference one by one $REF_DEL s, by group $REF_GROUP s;" \
    "vxcd deletes $DELS s ($(ratio $DELS $REF_DEL) of one by one)," \
    "vxcd atomic batch $BATCHDEL s ($(ratio $BATCHDEL $REF_GROUP) of by group)"
  echo "N=$N restart over $N VXCs already right: $RESTART_S s ($(ratio $RESTART_S $REF_CREATE) of the reference create; $RESTART_LINE)"
  if [ "$N" = "$LARGEST" ] && [ -z "$LATENCY_DONE" ]; then
    LATENCY_DONE=1
    t0=$(now)
    latency $SOCK $VXCD v-1 200 3 || { FAILED=$((FAILED + 1)); echo "!! N=$N latency probe failed"; }
    echo "N=$N latency probe took $(since $t0) s"
  fi
  echo "N=$N vxcd peak RSS (VmHWM): $HWM_PUTS after the puts; $(hwm) in the restarted daemon (restart, deletes, batches)"
  ctl < /tmp/s/batchdel > /tmp/s/answers
  expect "N=$N atomic batch delete (cleanup): applied" "$(grep -c '"applied":true' /tmp/s/answers || true)" 1 /tmp/s/answers
  stop_vxcd
  expect "N=$N links left" "$(links)" $BASE_LINKS
done

# ---- the first size across hosts: each VXC's B-End on the peer (far), one VXLAN device each ----
N=$FIRST
$IP link add core0 netns edge type veth peer name k0 netns far
$IP -n edge link set core0 mtu 1600 up; $IP -n far link set k0 mtu 1600 up
$IP -n edge addr add 10.99.0.1/24 dev core0; $IP -n far addr add 10.99.0.2/24 dev k0
BASE_LINKS=$(links)
rm -rf /tmp/s/state $SOCK
: > /tmp/s/log
cat >> /tmp/s/vxcd.toml <<TOML
[core]
address = "10.99.0.1"
interface = "core0"
TOML
start_vxcd
echo '{"op":"key.put","key":{"key":"m-far","port":"mel-1","host":"10.99.0.2","single_use":false,"max_speed_mbps":1000}}' \
  | ctl > /tmp/s/answers
expect "across hosts: key.put" "$(ok_lines /tmp/s/answers)" 1 /tmp/s/answers
awk -v n=$N 'BEGIN { for (i = 1; i <= n; i++) {
  printf "{\"op\":\"vxc.put\",\"vxc\":{\"id\":\"x-%d\",\"name\":\"scale\",\"service_key\":\"m-far\",\"rate_mbps\":10,\"a_end\":{\"port\":\"syd-1\"},\"vni\":%d}}\n", i, i > "/tmp/s/puts"
  printf "{\"op\":\"vxc.delete\",\"id\":\"x-%d\"}\n", i > "/tmp/s/dels" } }'
t0=$(now)
ctl < /tmp/s/puts > /tmp/s/answers
PUTS=$(since $t0)
expect "across hosts: vxc.put pipelined: ok" "$(ok_lines /tmp/s/answers)" $N /tmp/s/answers
expect "across hosts: links" "$(links)" $((BASE_LINKS + 2 * N))
expect "across hosts: VXLAN devices" "$($IP -n edge -o link show type vxlan | wc -l)" $N
HWM_PUTS=$(hwm)
stop_vxcd
start_vxcd
t0=$(now)
ctl < /tmp/s/dels > /tmp/s/answers
DELS=$(since $t0)
expect "across hosts: vxc.delete pipelined: ok" "$(ok_lines /tmp/s/answers)" $N /tmp/s/answers
expect "across hosts: links left" "$(links)" $BASE_LINKS
echo "N=$N across hosts (a subinterface and a VXLAN device each): vxcd puts $PUTS s," \
  "restart $START_S s ($START_LINE), deletes $DELS s; VmHWM $HWM_PUTS after the puts"
stop_vxcd
echo "scale run: SIZES=\"$SIZES\", guest time $(since $T_START) s, $FAILED failed checks"
