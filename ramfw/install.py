"""`ramfw install`: the systemd unit (package data) with this installation's paths filled in."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources

from .errors import UsageError


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
    return template.replace("@RAMFW@", executable or ramfw_executable()).replace("@POLICY@", policy)


def install(unit: str, unit_dir: str, policy: str) -> list[str]:
    """Write the unit, and the embedded default policy where the policy file does not exist yet."""
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
    if "://" not in policy and not os.path.exists(policy):
        os.makedirs(os.path.dirname(policy) or ".", exist_ok=True)
        default = resources.files("ramfw.data").joinpath("default-policy.toml").read_text(encoding="utf-8")
        with open(policy, "w") as fh:
            fh.write(default)
        said.append(f"wrote {policy} (the embedded default: allow docker.io); edit it, ramfw reloads on change")
    said.append("next: systemctl daemon-reload && systemctl enable --now ramfw && ramfw status")
    return said
