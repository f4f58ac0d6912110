#!/bin/bash
# Vagrant provisioner (vagrant/Vagrantfile): runs as root in the Debian 12 box, on every
# `vagrant up` of a new box and on every `vagrant provision`.
#
# 1. Docker: Debian's docker.io, with its engine running, so ramfw can be tried against the real
#    engine in the box afterwards. The suite does not use that engine: its end-to-end tier starts
#    its own dockerd inside test namespaces (tests/e2e/dockerbed.py).
# 2. ramfw from the copy of the checkout in /ramfw: scripts/bootstrap (Debian packages, .venv,
#    the package with its test extras), and a `ramfw` command on root's PATH.
# 3. The whole suite, as root: scripts/test. Its exit status is this script's, so a failing test
#    fails `vagrant up` / `vagrant provision`.
#
# RAMFW_TEST_ARGS (set on the host, passed in by the Vagrantfile): arguments for pytest instead of
# the whole suite, e.g. RAMFW_TEST_ARGS="tests/netns -x".
set -euo pipefail

REPO=/ramfw
if [ ! -x "$REPO/scripts/bootstrap" ] || [ ! -x "$REPO/scripts/test" ]; then
  echo "provision.sh: $REPO/scripts/bootstrap or $REPO/scripts/test is missing or not executable;" \
       "is the checkout synced to $REPO (vagrant rsync)?" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed"; then
  echo "provision.sh: installing docker.io"
  apt-get update -q
  apt-get install -y -q --no-install-recommends docker.io
fi
systemctl enable --now docker.service
# The box's login user may use the engine without sudo (takes effect at the next `vagrant ssh`).
if id vagrant >/dev/null 2>&1; then
  usermod -aG docker vagrant
fi

"$REPO/scripts/bootstrap"
ln -sfn "$REPO/.venv/bin/ramfw" /usr/local/bin/ramfw
echo "provision.sh: $(ramfw --version) installed from $REPO (.venv), linked as /usr/local/bin/ramfw"

# Word splitting of RAMFW_TEST_ARGS is the point: it holds several pytest arguments.
read -r -a test_args <<< "${RAMFW_TEST_ARGS:-}"
echo "provision.sh: running scripts/test ${test_args[*]:-(the whole suite)}"
cd "$REPO"
exec scripts/test "${test_args[@]}"
