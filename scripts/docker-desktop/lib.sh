# Shared by scripts/docker-desktop/install and uninstall (sourced, not run).
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are used by the scripts that source this
#
# Docker Desktop runs the Docker engine in a small Linux VM (LinuxKit). Nothing can be installed
# in that VM the usual way, but a privileged container that shares the engine's namespaces is,
# for the kernel, a process of the VM: ramfw runs there, built from this checkout as an image.

RAMFW_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DOCKERFILE=scripts/docker-desktop/Dockerfile   # relative to the build context (= the repo)
IMAGE=${RAMFW_IMAGE:-ramfw-local}
CONTAINER=${RAMFW_CONTAINER:-ramfw}
# ramfw's state (/run/ramfw: what was applied, the controller's heartbeat, the blocked-attempt
# log) in a named volume, so that a one-shot container (`ramfw down` in uninstall, or
# `docker run --rm ... ramfw status`) sees what the controller container wrote.
STATE_VOLUME=${RAMFW_STATE_VOLUME:-ramfw-state}

die() {
  echo "${0##*/}: $*" >&2
  exit 1
}

say() {
  echo "${0##*/}: $*"
}

# The docker CLI must reach a running Docker Desktop engine. On any other engine, refuse:
# a plain Linux host has its own procedure (README.rst, "Installation", "Linux host"), and there an
# allowlist in the engine's namespace would be the host's own network.
require_docker_desktop() {
  command -v docker >/dev/null 2>&1 || die "no docker command on PATH; install Docker Desktop first"
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "the docker CLI cannot reach an engine; start Docker Desktop (docker context: $(docker context show 2>/dev/null || echo unknown))"
  local os
  os=$(docker info --format '{{.OperatingSystem}}' 2>/dev/null || true)
  case "$os" in
    *"Docker Desktop"*) ;;
    *)
      if [ "${RAMFW_FORCE:-}" = 1 ]; then
        say "warning: the engine reports '$os', not Docker Desktop; going on because RAMFW_FORCE=1"
      else
        die "the engine reports '$os', not Docker Desktop; on a Linux host use 'sudo ramfw install'" \
            "(README.rst, section Installation), or set RAMFW_FORCE=1 if you know this engine runs in a VM of its own"
      fi
      ;;
  esac
}

# The build context on stdout: exactly what the image needs, as a tar (no .venv, .git, caches).
build_context() {
  tar -C "$RAMFW_REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    setup.cfg setup.py README.rst ramfw "$DOCKERFILE"
}

build_image() {
  say "building image $IMAGE from $RAMFW_REPO"
  build_context | docker build --tag "$IMAGE" --file "$DOCKERFILE" - \
    || die "building $IMAGE failed (the engine needs internet access to pull debian:bookworm-slim and the Python packages)"
}

container_exists() {
  docker container inspect "$CONTAINER" >/dev/null 2>&1
}
