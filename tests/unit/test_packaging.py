"""Installation artefacts: the Vagrant box, the Docker Desktop scripts and every shell script.

Nothing here needs the network, a VM or a Docker engine: `vagrant validate` runs against a
throwaway VAGRANT_HOME with a stand-in VBoxManage, and the Docker Desktop scripts run against a
stand-in `docker` command that records every call. What these cannot show (a real box booting, a
real Docker Desktop VM) is listed in README.rst, "Installation".

The tools are required, never skipped: scripts/bootstrap installs `vagrant` and `shellcheck`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
DD_DIR = REPO / "scripts" / "docker-desktop"
INSTALL = DD_DIR / "install"
UNINSTALL = DD_DIR / "uninstall"
DOCKERFILE = DD_DIR / "Dockerfile"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: scripts/bootstrap must install the Debian package {name!r}")
    return path


# ------------------------------------------------------------------------------------ vagrant


def run_vagrant(args, cwd: Path, tmp_path: Path, provider: str | None = None, plugins: bool = True):
    """`vagrant ARGS` with a private VAGRANT_HOME and dotfile path, no version check over the
    network, and a stand-in VBoxManage on PATH so that the VirtualBox provider counts as usable
    and its settings are validated for real."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir(exist_ok=True)
    vbox = fakebin / "VBoxManage"
    vbox.write_text("#!/bin/sh\n# stand-in: vagrant validate only asks for the version\necho 7.0.14r161095\n")
    vbox.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")
    } | {
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
        "PATH": f"{fakebin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    if not plugins:
        env["VAGRANT_NO_PLUGINS"] = "1"  # as on a machine where no plugin (vagrant-libvirt) is installed
    return subprocess.run([require_tool("vagrant"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_validated(r):
    assert r.returncode == 0 and "validated successfully" in r.stdout, f"vagrant validate failed:\n{r.stdout}\n{r.stderr}"


def libvirt_plugin_installed(tmp_path: Path) -> bool:
    r = run_vagrant(["plugin", "list"], VAGRANT_DIR, tmp_path)
    return r.returncode == 0 and "vagrant-libvirt" in r.stdout


def test_vagrantfile_validates_without_any_provider_or_plugin(tmp_path):
    # CI's case: neither VirtualBox nor libvirt; provider settings are not checked then.
    assert_validated(run_vagrant(["validate", "--ignore-provider"], VAGRANT_DIR, tmp_path, plugins=False))


def test_vagrantfile_validates_with_virtualbox_and_no_libvirt_plugin(tmp_path):
    # A developer with VirtualBox only: the libvirt block must not get in the way, and the
    # VirtualBox settings are checked by the real provider.
    assert_validated(run_vagrant(["validate"], VAGRANT_DIR, tmp_path, provider="virtualbox", plugins=False))
    # ... and that check is real: a setting VirtualBox does not have is refused.
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert "vb.memory = 4096" in text
    (bad / "Vagrantfile").write_text(text.replace("vb.memory = 4096", "vb.memory = 4096\n    vb.no_such_setting = 1"))
    r = run_vagrant(["validate"], bad, tmp_path, provider="virtualbox", plugins=False)
    assert r.returncode != 0 and "no_such_setting" in r.stdout + r.stderr


def test_vagrantfile_validates_with_libvirt_plugin_when_installed(tmp_path):
    """With vagrant-libvirt installed (Debian package vagrant-libvirt), its provider checks the
    libvirt block for real; without it, the block is not declared and plain validation holds."""
    if libvirt_plugin_installed(tmp_path):
        assert_validated(run_vagrant(["validate"], VAGRANT_DIR, tmp_path, provider="libvirt"))
    # Either way, the block is guarded (the runs without plugins above show the guard holds).
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert re.search(r"^  if LIBVIRT\n    config\.vm\.provider :libvirt do", text, re.M)


# ------------------------------------------------------------------------------ shell scripts


def shell_scripts() -> list[Path]:
    """Every shell script under scripts/ and vagrant/ (by shebang or .sh), and CI's entry point."""
    found = []
    for top in (REPO / "scripts", REPO / "vagrant"):
        for path in sorted(top.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or ".vagrant" in path.parts:
                continue
            with open(path, "rb") as fh:
                first = fh.readline(200)
            if path.suffix == ".sh" or re.match(rb"#!\s*(/usr)?/bin/(env\s+)?(ba)?sh\b", first):
                found.append(path)
    found.append(REPO / ".ci" / "run")
    return found


def test_shell_script_discovery_finds_the_known_scripts():
    names = {str(p.relative_to(REPO)) for p in shell_scripts()}
    for expected in ("scripts/bootstrap", "scripts/test", "scripts/docker-desktop/install",
                     "scripts/docker-desktop/uninstall", "scripts/docker-desktop/lib.sh", "vagrant/provision.sh"):  # fmt: skip
        assert expected in names
    assert not any(n.endswith(".py") for n in names)


def test_shell_scripts_parse():
    bad = []
    for path in shell_scripts():
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            bad.append(f"{path.relative_to(REPO)}: {r.stderr.strip()}")
    assert not bad, "bash -n failed:\n" + "\n".join(bad)


def test_shellcheck_clean():
    shellcheck = require_tool("shellcheck")
    # --severity=warning: errors and warnings fail the test; "info" and "style" notes (quoting
    # preferences, `$(...)` suggestions) are advice, not defects, and are left out.
    # -x follows `. lib.sh` (each sourcing script names it with a `shellcheck source=` directive).
    r = subprocess.run(
        [shellcheck, "--severity=warning", "--external-sources", "--format=gcc", *map(str, shell_scripts())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, f"shellcheck reports:\n{r.stdout}{r.stderr}"


# ----------------------------------------------------------------------- Docker Desktop scripts


def logical_lines(text: str) -> list[str]:
    """Shell or Dockerfile text with backslash continuations joined and comment lines dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def test_dockerfile_instructions():
    lines = logical_lines(DOCKERFILE.read_text())
    instructions = [ln.split(None, 1) for ln in lines if ln.strip()]
    known = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "CMD", "ENTRYPOINT", "WORKDIR", "LABEL", "USER", "EXPOSE",
             "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD"}  # fmt: skip
    assert all(i[0] in known for i in instructions), instructions
    assert instructions[0][0] == "FROM"
    froms = [i[1] for i in instructions if i[0] == "FROM"]
    assert all(f.split()[0] == "debian:bookworm-slim" for f in froms), froms
    final = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")):]
    final_text = "\n".join(final)
    for pkg in ("python3", "nftables", "iptables"):
        assert re.search(rf"apt-get install [^\n]*\b{pkg}\b", final_text), f"{pkg} not installed in the final stage"


# The stand-in docker: records each call (argv as JSON) and answers as Docker Desktop would.
FAKE_DOCKER = r'''#!@PYTHON@
import json, os, subprocess, sys
d = os.environ["FAKE_DOCKER_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps(args) + "\n")
state = os.path.join(d, "container")
def has(*words):
    return all(w in args for w in words)
cmd = args[0] if args else ""
if cmd == "version":
    if os.environ.get("FAKE_NO_ENGINE"):
        sys.exit(1)
    print("28.0.0")
elif cmd == "context":
    print("desktop-linux")
elif cmd == "info":
    print(os.environ.get("FAKE_OS", "Docker Desktop"))
elif cmd == "build":
    with open(os.path.join(d, "context.tar"), "wb") as out:
        out.write(sys.stdin.buffer.read())
elif cmd == "run" and has("policy", "validate"):
    sys.exit(int(os.environ.get("FAKE_VALIDATE_RC", "0")))
elif cmd == "run" and "-d" in args:
    open(state, "w").write("running")
    print("0123456789ab")
elif cmd == "run" and has("ramfw", "down"):
    print("removed table inet ramfw")
elif cmd == "container" and args[1] == "inspect":
    if not os.path.exists(state):
        sys.exit(1)
    if "--format" in args:
        print("true")
elif cmd in ("stop", "rm"):
    if cmd == "rm" and os.path.exists(state):
        os.unlink(state)
elif cmd == "exec" and args[-2:] == ["python3", "-"]:
    env = dict(os.environ, PATH=os.path.join(d, "inside") + ":" + os.environ["PATH"])
    sys.exit(subprocess.run([sys.executable, "-"], env=env).returncode)
elif cmd == "exec":
    print("enforcing:   yes, allowlist with nft")
elif cmd == "image" and args[1] == "inspect":
    sys.exit(1 if os.environ.get("FAKE_NO_IMAGE") else 0)
'''

# The stand-in `ramfw` the readiness check runs "inside the container".
FAKE_RAMFW_INSIDE = r'''#!@PYTHON@
import json, sys
assert sys.argv[1:] == ["status", "--json"], sys.argv
print(json.dumps({"enforcing": True, "controller": {"running": True, "pid": 1}}))
'''


@pytest.fixture
def fake_docker(tmp_path):
    d = tmp_path / "docker"
    (d / "bin").mkdir(parents=True)
    (d / "inside").mkdir()
    for path, text in ((d / "bin" / "docker", FAKE_DOCKER), (d / "inside" / "ramfw", FAKE_RAMFW_INSIDE)):
        path.write_text(text.replace("@PYTHON@", sys.executable))
        path.chmod(0o755)

    def run(script: Path, *args, **env):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMFW_", "DOCKER_"))}
        full_env |= {"FAKE_DOCKER_DIR": str(d), "PATH": f"{d / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        full_env |= {k: str(v) for k, v in env.items()}
        r = subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True, timeout=60)
        calls_file = d / "calls.jsonl"
        calls = [json.loads(x) for x in calls_file.read_text().splitlines()] if calls_file.exists() else []
        calls_file.unlink(missing_ok=True)
        return r, calls

    run.dir = d
    return run


def the_call(calls, predicate):
    found = [c for c in calls if predicate(c)]
    assert len(found) == 1, f"expected one such call, got {found} in {calls}"
    return calls.index(found[0]), found[0]


def test_install_builds_validates_and_runs_in_the_vm_namespaces(fake_docker, tmp_path):
    policy = tmp_path / "org policy.toml"  # a space in the path must survive
    policy.write_text('allow = ["ghcr.io"]\n')
    r, calls = fake_docker(INSTALL, str(policy))
    assert r.returncode == 0, r.stdout + r.stderr
    i_build, build = the_call(calls, lambda c: c[0] == "build")
    assert build[-1] == "-" and "ramfw-local" in build and "scripts/docker-desktop/Dockerfile" in build
    mount = f"{policy}:/etc/ramfw/policy.toml:ro"
    i_val, val = the_call(calls, lambda c: c[0] == "run" and "validate" in c)
    assert "--privileged" not in val and "--network=none" in val and mount in val
    i_run, run = the_call(calls, lambda c: c[0] == "run" and "-d" in c)
    assert i_build < i_val < i_run
    image_at = run.index("ramfw-local")
    flags, command = run[:image_at], run[image_at + 1:]
    for flag in ("--privileged", "--net=host", "--pid=host", "--restart=always", "--cgroupns=host"):
        assert flag in flags
    assert flags[flags.index("--name") + 1] == "ramfw"
    assert mount in flags and "ramfw-state:/run/ramfw" in flags
    assert command == ["ramfw", "run", "--policy", "/etc/ramfw/policy.toml"]
    # waited for the controller through `ramfw status --json` inside the container, then showed status
    assert any(c[:3] == ["exec", "-i", "ramfw"] for c in calls[i_run:])
    assert "ramfw is enforcing in Docker Desktop's VM" in r.stdout

    # Running it again replaces the container (stop, rm) before starting the new one.
    r, calls = fake_docker(INSTALL)
    assert r.returncode == 0, r.stdout + r.stderr
    i_rm, _ = the_call(calls, lambda c: c[0] == "rm")
    i_run, run = the_call(calls, lambda c: c[0] == "run" and "-d" in c)
    assert i_rm < i_run
    # without a policy file: the embedded default, no policy mount
    assert run[-3:] == ["ramfw-local", "ramfw", "run"]
    assert not any(a.endswith(":/etc/ramfw/policy.toml:ro") for a in run)


def test_install_refuses_a_bad_policy_without_touching_the_running_container(fake_docker, tmp_path):
    fake_docker(INSTALL)  # something is running
    policy = tmp_path / "bad.toml"
    policy.write_text('allow = ["*.cloudfront.net"]\n')
    r, calls = fake_docker(INSTALL, str(policy), FAKE_VALIDATE_RC=2)
    assert r.returncode == 2 and "not a valid policy; nothing was changed" in r.stderr
    assert not any(c[0] in ("rm", "stop") or (c[0] == "run" and "-d" in c) for c in calls), calls


def test_install_refuses_an_engine_that_is_not_docker_desktop(fake_docker):
    r, calls = fake_docker(INSTALL, FAKE_OS="Debian GNU/Linux 12 (bookworm)")
    assert r.returncode == 1 and "not Docker Desktop" in r.stderr and "sudo ramfw install" in r.stderr
    assert not any(c[0] in ("build", "run") for c in calls)
    r, calls = fake_docker(INSTALL, FAKE_NO_ENGINE=1)
    assert r.returncode == 1 and "cannot reach an engine" in r.stderr
    r, _ = fake_docker(INSTALL, "/no/such/policy.toml")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_install_build_context_is_the_package_and_builds(fake_docker, tmp_path):
    """The tar that install streams to `docker build` holds what the Dockerfile COPYs, nothing
    from the developer's work tree besides, and builds a complete ramfw wheel (offline)."""
    r, _ = fake_docker(INSTALL)
    assert r.returncode == 0, r.stdout + r.stderr
    with tarfile.open(fake_docker.dir / "context.tar") as tar:
        names = tar.getnames()
        # our own tar, but check anyway (Debian 12's Python 3.11.2 has no extraction filters)
        assert all(not n.startswith("/") and ".." not in Path(n).parts for n in names)
        ctx = tmp_path / "ctx"
        tar.extractall(ctx)
    assert not [n for n in names if "__pycache__" in n or n.startswith((".venv", ".git")) or "egg-info" in n]
    assert "scripts/docker-desktop/Dockerfile" in names and "ramfw/data/registries.toml" in names
    for ln in logical_lines(DOCKERFILE.read_text()):
        words = ln.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            for src in words[1:-1]:
                assert (ctx / src).exists(), f"Dockerfile copies {src}, which the build context lacks"
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(ctx)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("ramfw-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("ramfw/cli/app.py", "ramfw/data/registries.toml", "ramfw/data/default-policy.toml", "ramfw/data/ramfw.service"):
        assert needed in members


def test_uninstall_stops_then_runs_ramfw_down_in_the_vm_namespace(fake_docker):
    fake_docker(INSTALL)
    r, calls = fake_docker(UNINSTALL)
    assert r.returncode == 0, r.stdout + r.stderr
    i_rm, _ = the_call(calls, lambda c: c[0] == "rm")
    i_down, down = the_call(calls, lambda c: c[0] == "run" and c[-2:] == ["ramfw", "down"])
    i_vol, _ = the_call(calls, lambda c: c[:2] == ["volume", "rm"])
    i_img, _ = the_call(calls, lambda c: c[:2] == ["image", "rm"])
    assert i_rm < i_down < i_vol < i_img
    for flag in ("--rm", "--privileged", "--net=host", "--pid=host", "ramfw-state:/run/ramfw"):
        assert flag in down
    assert not any(c[0] == "build" for c in calls)

    # Already removed container, image gone: still runs `ramfw down` (rebuilding the image), keeps it.
    r, calls = fake_docker(UNINSTALL, "--keep-image", FAKE_NO_IMAGE=1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(c[0] in ("rm", "stop") for c in calls)
    i_build, _ = the_call(calls, lambda c: c[0] == "build")
    i_down, _ = the_call(calls, lambda c: c[0] == "run" and c[-2:] == ["ramfw", "down"])
    assert i_build < i_down and not any(c[:2] == ["image", "rm"] for c in calls)


def test_scripts_have_help_and_refuse_unknown_options(fake_docker):
    for script in (INSTALL, UNINSTALL):
        r, calls = fake_docker(script, "--help")
        assert r.returncode == 0 and "docker-desktop/" in r.stdout and not calls
        r, calls = fake_docker(script, "--bogus")
        assert r.returncode == 2 and not calls
