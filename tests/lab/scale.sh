#!/bin/sh
# Scale run in the kernel lab (prints figures; not part of the test suite):
#     tests/lab-shell.sh tests/lab/scale.sh            # 4092 VXCs: all of 2..=4093 on both ports
#     (echo N=1000; cat tests/lab/scale.sh) > /tmp/s.sh && tests/lab-shell.sh /tmp/s.sh
# (the guest gets no environment from the host: N is set in the script it runs)
# One multi-use key; N VXCs put back to back on one connection, each assigned the next free VLAN
# on both ports; then a restart (hitless: converging N VXCs that are already right) and a delete of
# all. Then the same N VXCs across hosts (issue 10): the B-End on a peer, reached over a VXLAN
# device of its own each (a VNI per VXC), in the same boot, created and deleted the same way.
# Times are under qemu TCG with debug binaries: ratios matter, not absolute values.
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
# Each start logs one "reconciled in" line at the end of its first pass (the socket is bound
# before it): a start is over when that line is there.
start_vxcd() {
  t0=$(now)
  before=$(grep -c "reconciled in" /tmp/s/log 2>/dev/null || true)
  $IP netns exec edge vxcd --config /tmp/s/vxcd.toml 2>>/tmp/s/log &
  VXCD=$!
  while [ "$(grep -c "reconciled in" /tmp/s/log 2>/dev/null || true)" -le "${before:-0}" ]; do sleep 0.05; done
  echo "vxcd started and converged in $(awk "BEGIN{print $(now) - $t0}") s: $(grep "reconciled in" /tmp/s/log | tail -1)"
}

# ---- the reference: iproute2's batch mode making exactly the objects vxcd makes for N VXCs ----
# Per VXC: two VLAN subinterfaces (up, promisc, vxcd's group and alias), a TBF at 10 Mbit/s with
# vxcd's burst and limit on each, an ingress qdisc on each, a match-all u32 redirect each way.
TC=/usr/sbin/tc
i=1; : > /tmp/s/ip.batch; : > /tmp/s/tc.batch; : > /tmp/s/ipdel.batch
while [ $i -le $N ]; do
  v=$((i+1))
  for end in "cust0 a" "prov0 b"; do
    set -- $end
    echo "link add link $1 name $1.$v up group 30819 type vlan id $v" >> /tmp/s/ip.batch
    echo "link set dev $1.$v promisc on alias vxcd:v-$i:$2" >> /tmp/s/ip.batch
    echo "qdisc add dev $1.$v root handle 7863: tbf rate 10mbit burst 12176 limit 37176" >> /tmp/s/tc.batch
    echo "qdisc add dev $1.$v ingress" >> /tmp/s/tc.batch
    echo "link del dev $1.$v" >> /tmp/s/ipdel.batch
  done
  echo "filter add dev cust0.$v ingress prio 30819 protocol all u32 match u32 0 0 action mirred egress redirect dev prov0.$v" >> /tmp/s/tc.batch
  echo "filter add dev prov0.$v ingress prio 30819 protocol all u32 match u32 0 0 action mirred egress redirect dev cust0.$v" >> /tmp/s/tc.batch
  i=$((i+1))
done
t0=$(now)
$IP -n edge -batch /tmp/s/ip.batch
t1=$(now)
$TC -n edge -batch /tmp/s/tc.batch
t2=$(now)
echo "reference create of $N VXCs: ip -batch $(awk "BEGIN{print $t1 - $t0}") s + tc -batch $(awk "BEGIN{print $t2 - $t1}") s = $(awk "BEGIN{print $t2 - $t0}") s"
t0=$(now)
$IP -n edge -batch /tmp/s/ipdel.batch
t1=$(now)
echo "reference delete of $N VXCs, links one by one (ip -batch): $(awk "BEGIN{print $t1 - $t0}") s"
$IP -n edge -batch /tmp/s/ip.batch
$TC -n edge -batch /tmp/s/tc.batch
t0=$(now)
$IP -n edge link del group 30819
t1=$(now)
echo "reference delete of $N VXCs, the owner group at once (ip link del group): $(awk "BEGIN{print $t1 - $t0}") s"
echo "links left in the edge namespace: $($IP -n edge -o link show | wc -l)"

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
echo '{"op":"status"}' | socat - UNIX-CONNECT:/tmp/s/control.sock
i=1; : > /tmp/s/dels
while [ $i -le $N ]; do echo "{\"op\":\"vxc.delete\",\"id\":\"v-$i\"}" >> /tmp/s/dels; i=$((i+1)); done
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/dels > /tmp/s/answers
t1=$(now)
echo "$N vxc.delete back to back: $(grep -c '"ok":true' /tmp/s/answers) ok in $(awk "BEGIN{print $t1 - $t0}") s"
echo "links left in the edge namespace: $($IP -n edge -o link show | wc -l)"
# The same N again, deleted in one atomic batch: a run of deletes takes the kernel's bulk path.
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/puts > /tmp/s/answers
echo "$N vxc.put again: $(grep -c '"ok":true' /tmp/s/answers) ok"
{ printf '{"op":"batch","atomic":true,"ops":['; i=1; while [ $i -le $N ]; do
    [ $i -gt 1 ] && printf ','; printf '{"op":"vxc.delete","id":"v-%s"}' $i; i=$((i+1)); done
  printf ']}\n'; } > /tmp/s/batchdel
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/batchdel > /tmp/s/answers
t1=$(now)
echo "$N vxc.delete in one atomic batch: applied $(grep -c '"applied":true' /tmp/s/answers) in $(awk "BEGIN{print $t1 - $t0}") s"
echo "links left in the edge namespace: $($IP -n edge -o link show | wc -l)"
kill -TERM $VXCD; wait $VXCD || true

# ---- the same N across hosts: each VXC's B-End on the peer (far), one VXLAN device per VXC ----
$IP link add core0 netns edge type veth peer name k0 netns far
$IP -n edge link set core0 mtu 1600 up; $IP -n far link set k0 mtu 1600 up
$IP -n edge addr add 10.99.0.1/24 dev core0; $IP -n far addr add 10.99.0.2/24 dev k0
rm -rf /tmp/s/state /tmp/s/control.sock
: > /tmp/s/log
cat >> /tmp/s/vxcd.toml <<TOML
[core]
address = "10.99.0.1"
interface = "core0"
TOML
start_vxcd
echo '{"op":"key.put","key":{"key":"m-far","port":"mel-1","host":"10.99.0.2","single_use":false,"max_speed_mbps":1000}}' \
  | socat - UNIX-CONNECT:/tmp/s/control.sock >/dev/null
i=1; : > /tmp/s/puts
while [ $i -le $N ]; do
  echo "{\"op\":\"vxc.put\",\"vxc\":{\"id\":\"x-$i\",\"name\":\"scale\",\"service_key\":\"m-far\",\"rate_mbps\":10,\"a_end\":{\"port\":\"syd-1\"},\"vni\":$i}}" >> /tmp/s/puts
  i=$((i+1))
done
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/puts > /tmp/s/answers
t1=$(now)
ok=$(grep -c '"ok":true' /tmp/s/answers || true)
echo "$N vxc.put across hosts back to back: $ok ok in $(awk "BEGIN{print $t1 - $t0}") s ($(awk "BEGIN{printf \"%.1f\", $ok / ($t1 - $t0)}") per s)"
grep -v '"ok":true' /tmp/s/answers | head -3
echo "links in the edge namespace: $($IP -n edge -o link show | wc -l) (VXLAN: $($IP -n edge -o link show type vxlan | wc -l))"
echo "vxcd VmHWM: $(grep VmHWM /proc/$VXCD/status)"
kill -TERM $VXCD; wait $VXCD || true
echo "restart (state holds $N VXCs across hosts, kernel already right):"
start_vxcd
i=1; : > /tmp/s/dels
while [ $i -le $N ]; do echo "{\"op\":\"vxc.delete\",\"id\":\"x-$i\"}" >> /tmp/s/dels; i=$((i+1)); done
t0=$(now)
socat -t 600 - UNIX-CONNECT:/tmp/s/control.sock < /tmp/s/dels > /tmp/s/answers
t1=$(now)
echo "$N vxc.delete across hosts back to back: $(grep -c '"ok":true' /tmp/s/answers) ok in $(awk "BEGIN{print $t1 - $t0}") s"
echo "links left in the edge namespace: $($IP -n edge -o link show | wc -l)"
kill -TERM $VXCD; wait $VXCD || true
