"""`ramfw install`: the systemd unit (package data) with this installation's paths filled in."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources

from ramfw.errors import UsageError


def ramfw_executable() -> str:
    """The ramfw command of this installation (the venv's, when run from one)."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ramfw")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("ramfw")
    if found:
        return os.path.abspath(found)
    raise UsageError("cannot find the ramfw executable to put in the unit; install the package first")


def render_unit(policy: str, executable: str | None = None) -> str:
    if any(ch.isspace() for ch in policy):
        raise UsageError(f"policy path {policy!r} contains white space; systemd would split it")
    template = resources.files("ramfw.data").joinpath("ramfw.service").read_text(encoding="utf-8")
    executable = executable or ramfw_executable()
    return (template.replace("@RAMFW_DIR@", os.path.dirname(executable)).replace("@RAMFW@", executable)
            .replace("@POLICY@", policy))


# The engines require ramfw: if ramfw.service fails to start (invalid policy, crash, timeout)
# they do not start at all, instead of starting with no ruleset. Ordering (After=) alone, which
# the unit's own Before= gives, would let them start anyway.
GUARDED_UNITS = ("docker.service", "containerd.service")
DROPIN_NAME = "ramfw.conf"


def render_dropin(engine: str) -> str:
    return (
        f"# Installed by `ramfw install`: {engine} starts only once ramfw enforces, and never without it.\n"
        "# Remove this file (and run `systemctl daemon-reload`) to undo; see README, \"Linux host\".\n"
        "# Note: `systemctl restart ramfw` restarts the engine too; reload a policy with `systemctl reload ramfw`.\n"
        "[Unit]\n"
        "Requires=ramfw.service\n"
        "After=ramfw.service\n"
    )


def dropin_paths(unit_dir: str) -> dict[str, str]:
    """engine unit -> the drop-in file `install` writes for it."""
    return {engine: os.path.join(unit_dir, f"{engine}.d", DROPIN_NAME) for engine in GUARDED_UNITS}


def install(unit: str, unit_dir: str, policy: str) -> list[str]:
    """Write the unit, the engines' drop-ins, and the embedded default policy where the policy
    file does not exist yet."""
    said = []
    exe = unit.split("ExecStart=", 1)[1].split()[0]
    if exe.startswith(("/home/", "/root/")):
        said.append(f"warning: {exe} is under /home or /root, which the unit's ProtectHome=yes hides from the "
                    "service; install ramfw elsewhere (e.g. a venv in /opt/ramfw) and run 'ramfw install' from there")
    os.makedirs(unit_dir, exist_ok=True)
    unit_path = os.path.join(unit_dir, "ramfw.service")
    with open(unit_path, "w") as fh:
        fh.write(unit)
    said.append(f"wrote {unit_path}")
    for engine, path in dropin_paths(unit_dir).items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(render_dropin(engine))
        said.append(f"wrote {path} ({engine} requires ramfw.service)")
    if "://" not in policy and not os.path.exists(policy):
        os.makedirs(os.path.dirname(policy) or ".", exist_ok=True)
        default = resources.files("ramfw.data").joinpath("default-policy.toml").read_text(encoding="utf-8")
        with open(policy, "w") as fh:
            fh.write(default)
        said.append(f"wrote {policy} (the embedded default: allow docker.io); edit it, ramfw reloads on change")
    said.append("next: systemctl daemon-reload && systemctl enable --now ramfw && ramfw status")
    return said
