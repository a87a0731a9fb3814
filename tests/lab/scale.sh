#!/bin/sh
# Scale run in the kernel lab (prints figures; not part of the test suite):
#     tests/lab-shell.sh tests/lab/scale.sh            # 4092 VXCs: all of 2..=4093 on both ports
#     N=1000 tests/lab-shell.sh tests/lab/scale.sh     # (N is read from the guest script below)
# One multi-use key; N VXCs put back to back on one connection, each assigned the next free VLAN
# on both ports; then a restart (hitless: converging N VXCs that are already right) and a delete of
# all. Times are under qemu TCG with debug binaries: ratios matter, not absolute values.
set -e
N=${N:-4092}
IP=/usr/sbin/ip
now() { cut -d' ' -f1 /proc/uptime; }
$IP netns add edge; $IP netns add far
$IP -n edge link set lo up
$IP link add cust0 netns edge type veth peer name c0 netns far
$IP link add prov0 netns edge type veth peer name p0 netns far
$IP -n edge link set cust0 up; $IP -n edge link set prov0 up
mkdir -p /tmp/s
cat > /tmp/s/vxcd.toml <<TOML
[control]
socket = "/tmp/s/control.sock"
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
start_vxcd() {
  t0=$(now)
  $IP netns exec edge vxcd --config /tmp/s/vxcd.toml 2>>/tmp/s/log &
  VXCD=$!
  while [ ! -S /tmp/s/control.sock ]; do sleep 0.05; done
  echo "vxcd ready after $(echo "$(now) - $t0" | bc 2>/dev/null || awk "BEGIN{print $(now) - $t0}") s"
}
start_vxcd
echo '{"op":"key.put","key":{"key":"m-1","port":"syd-2","single_use":false,"max_speed_mbps":1000}}' \
  | socat - UNIX-CONNECT:/tmp/s/control.sock >/dev/null
i=1; : > /tmp/s/puts
while [ $i -le $N ]; do
  echo "{\"op\":\"vxc.put\",\"vxc\":{\"id\":\"v-$i\",\"name\":\"scale\",\"service_key\":\"m-1\",\"rate_mbps\":10,\"a_end\":{\"port\":\"syd-1\"}}}" >> /tmp/s/puts
  i=$((i+1))
done
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/puts > /tmp/s/answers
t1=$(now)
ok=$(grep -c '"ok":true' /tmp/s/answers || true)
echo "$N vxc.put back to back: $ok ok in $(awk "BEGIN{print $t1 - $t0}") s ($(awk "BEGIN{printf \"%.1f\", $ok / ($t1 - $t0)}") per s)"
grep -v '"ok":true' /tmp/s/answers | head -3
echo "links in the edge namespace: $($IP -n edge -o link show | wc -l)"
echo '{"op":"status"}' | socat - UNIX-CONNECT:/tmp/s/control.sock
kill -TERM $VXCD; wait $VXCD || true
echo "restart (state holds $N VXCs, kernel already right):"
start_vxcd
grep -E "reconciled in" /tmp/s/log | tail -1
echo '{"op":"status"}' | socat - UNIX-CONNECT:/tmp/s/control.sock
i=1; : > /tmp/s/dels
while [ $i -le $N ]; do echo "{\"op\":\"vxc.delete\",\"id\":\"v-$i\"}" >> /tmp/s/dels; i=$((i+1)); done
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/dels > /tmp/s/answers
t1=$(now)
echo "$N vxc.delete back to back: $(grep -c '"ok":true' /tmp/s/answers) ok in $(awk "BEGIN{print $t1 - $t0}") s"
echo "links left in the edge namespace: $($IP -n edge -o link show | wc -l)"
kill -TERM $VXCD; wait $VXCD || true
