#!/bin/sh
# vxcd in the kernel lab, end to end: run it with
#     tests/lab-shell.sh tests/lab/demo.sh
# A customer host (VLAN 200) and a provider host (VLAN 100) are joined by a VXC that vxcd programs
# on the edge host between them; tcpdump shows each side's own tag on the wire.
set -e
IP=/usr/sbin/ip
TC=/usr/sbin/tc
step() { printf '\n==== %s\n' "$*"; }

step "three hosts: customer --veth-- edge (vxcd) --veth-- provider"
for ns in customer edge provider; do $IP netns add $ns; $IP -n $ns link set lo up; done
$IP link add cust0 netns edge type veth peer name eth0 netns customer
$IP link add prov0 netns edge type veth peer name eth0 netns provider
for ns in customer provider; do $IP -n $ns link set eth0 up; done
for i in cust0 prov0; do $IP -n edge link set $i up; done
$IP -n customer link add link eth0 name eth0.200 type vlan id 200
$IP -n customer addr add 10.20.0.1/24 dev eth0.200
$IP -n customer link set eth0.200 up
$IP -n provider link add link eth0 name eth0.100 type vlan id 100
$IP -n provider addr add 10.20.0.2/24 dev eth0.100
$IP -n provider link set eth0.100 up

step "vxcd on the edge host, ports syd-1 (cust0) and syd-2 (prov0)"
mkdir -p /tmp/vxcd
cat > /tmp/vxcd/vxcd.toml <<TOML
[control]
socket = "/tmp/vxcd/control.sock"
[state]
dir = "/tmp/vxcd/state"
[[port]]
name = "syd-1"
interface = "cust0"
[[port]]
name = "syd-2"
interface = "prov0"
TOML
$IP netns exec edge vxcd --config /tmp/vxcd/vxcd.toml 2>/tmp/vxcd/log &
export VXCD_SOCKET=/tmp/vxcd/control.sock
for i in $(seq 1 100); do [ -S $VXCD_SOCKET ] && break; sleep 0.1; done
vxcctl status

step "the provider stores a single-use key (B-End VLAN 100, up to 100 Mbps); the customer redeems it on VLAN 200"
vxcctl key put --key 6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11 --port syd-2 --max-speed 100 \
    --single-use --vlan 100 --description "acme to cloud"
vxcctl vxc plan --id v-17 --name acme-cloud --key 6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11 \
    --rate 50 --a-port syd-1 --a-vlan 200
vxcctl vxc put --id v-17 --name acme-cloud --key 6f2c1e4a-8d3b-4b7e-9c1a-2f5e7d9b0a11 \
    --rate 50 --a-port syd-1 --a-vlan 200
vxcctl vxcs
vxcctl ports

step "what vxcd made on the edge host"
$IP -n edge -d link show | grep -A3 'vxcd:' || true
$TC -n edge qdisc show

step "the customer pings the provider through the VXC; tcpdump -e on each side"
$IP netns exec customer tcpdump -e -n -l -c 4 -i eth0 icmp > /tmp/cust.txt 2>/dev/null &
cust_dump=$!
$IP netns exec provider tcpdump -e -n -l -c 4 -i eth0 icmp > /tmp/prov.txt 2>/dev/null &
prov_dump=$!
sleep 1
$IP netns exec customer ping -c 2 -W 2 10.20.0.2
wait $cust_dump $prov_dump
echo "-- customer's wire (tag 200):"; cat /tmp/cust.txt
echo "-- provider's wire (tag 100):"; cat /tmp/prov.txt

step "a second order for VLAN 200 on syd-1 is refused, naming the holder and the next free VLAN"
vxcctl key put --key m-1 --port syd-2 --max-speed 100
vxcctl vxc put --id v-18 --name other --key m-1 --rate 10 --a-port syd-1 --a-vlan 200 || true

step "vxcd's log"
cat /tmp/vxcd/log
