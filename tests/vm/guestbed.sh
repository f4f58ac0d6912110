#!/bin/sh
# The VM tier's small internet, inside the guest (run by tests/vm/conftest.py after each boot).
# Addresses from shared/TESTBED.md only:
#
#   guest (root namespace: systemd, dockerd, ramfw.service)      namespace "inet"
#     vm-inet 203.0.113.2/30  ---- veth ----  eth0 203.0.113.1/30
#     default route via 203.0.113.1                               lo: 198.51.100.53  dnsmasq
#     /etc/resolv.conf: 198.51.100.53                                 198.51.100.10:5000 reg-allowed.test
#                                                                     198.51.100.20:5000 reg-blocked.test
#                                                                     198.51.100.80:80   web.test (busybox httpd)
#
# The services are transient systemd units in the namespace (NetworkNamespacePath=), so they
# outlive the agent's command. Idempotent; after a reboot it rebuilds what the reboot removed.
# The first run imports tiny:1 (busybox-static) and pushes it to both registries, before any
# ramfw policy is enforced; the registries' storage is on disk and survives reboots.
set -eu

ln -sfn /opt/ramfw/venv/bin/ramfw /usr/local/bin/ramfw
mkdir -p /var/lib/vmbed/www
printf 'nameserver 198.51.100.53\n' > /etc/resolv.conf
echo "web.test says hello" > /var/lib/vmbed/www/index.html

if ! [ -e /run/netns/inet ]; then
  ip netns add inet
  ip link add vm-inet type veth peer name eth0 netns inet
  ip addr add 203.0.113.2/30 dev vm-inet
  ip link set vm-inet up
  ip -n inet link set lo up
  ip -n inet addr add 203.0.113.1/30 dev eth0
  ip -n inet link set eth0 up
  for a in 53 10 20 80; do ip -n inet addr add "198.51.100.$a/32" dev lo; done
fi
ip route replace default via 203.0.113.1

registry_config() {  # $1 name, $2 address
  mkdir -p "/var/lib/vmbed/$1"
  cat > "/var/lib/vmbed/$1.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/vmbed/$1
http:
  addr: $2:5000
EOF
}
registry_config reg-allowed 198.51.100.10
registry_config reg-blocked 198.51.100.20

start() {  # $1 unit name, then the command: a transient service in the inet namespace
  name=$1; shift
  systemctl is-active -q "$name" && return 0
  systemctl reset-failed "$name" >/dev/null 2>&1 || true
  systemd-run --quiet --unit="$name" -p NetworkNamespacePath=/run/netns/inet "$@"
}
start vmbed-dns /usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=198.51.100.53 --address=/reg-allowed.test/198.51.100.10 \
  --address=/reg-blocked.test/198.51.100.20 --address=/web.test/198.51.100.80 --local-ttl=60
start vmbed-reg-allowed /usr/bin/docker-registry serve /var/lib/vmbed/reg-allowed.yml
start vmbed-reg-blocked /usr/bin/docker-registry serve /var/lib/vmbed/reg-blocked.yml
start vmbed-web /bin/busybox httpd -f -p 198.51.100.80:80 -h /var/lib/vmbed/www

wait_tcp() {  # $1 address, $2 port: until something listens (services start asynchronously)
  i=0
  until ip netns exec inet bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "guestbed: nothing listens on $1:$2" >&2; exit 1; }
    sleep 0.2
  done
}
wait_tcp 198.51.100.10 5000
wait_tcp 198.51.100.20 5000
wait_tcp 198.51.100.80 80

if ! [ -e /var/lib/vmbed/pushed ]; then
  systemctl start docker.service
  if ! docker image inspect tiny:1 >/dev/null 2>&1; then
    root=$(mktemp -d)
    mkdir "$root/bin"
    cp /bin/busybox "$root/bin/"
    for a in sh wget nc true echo cat sleep; do ln -s busybox "$root/bin/$a"; done
    tar -C "$root" -c . | docker import - tiny:1 >/dev/null
    rm -rf "$root"
  fi
  for reg in reg-allowed.test reg-blocked.test; do
    docker tag tiny:1 "$reg:5000/tiny:1"
    docker push -q "$reg:5000/tiny:1" >/dev/null
    docker rmi -f "$reg:5000/tiny:1" >/dev/null   # later pulls must really pull
  done
  touch /var/lib/vmbed/pushed
fi
echo "guestbed: ready"
