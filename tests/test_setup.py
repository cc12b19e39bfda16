"""A fresh machine gets what ``make test`` and ``make demo`` need, or one line saying what to install.

``scripts/provision.sh`` is run here under a PATH that holds only fakes made by the test: nothing is ever
installed for real. Installing is forbidden with ``PROVISION_NO_INSTALL=1`` (the same answer a user without
root gets); the installing branch runs only as root, against a fake ``apt-get``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "provision.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _program(bin_dir: Path, name: str, body: str = "exit 0\n") -> Path:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return path


def _provision(bin_dir: Path, *packages: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(SCRIPT), "make test", *packages],
        env={"PATH": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_services_stop_with_one_line_naming_them(tmp_path: Path) -> None:
    proc = _provision(tmp_path, "redis-server", "chromium", PROVISION_NO_INSTALL="1")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: make test needs redis-server and chromium; install them "
        "(Debian: apt-get install redis-server chromium)"
    ]


def test_only_what_is_missing_is_named(tmp_path: Path) -> None:
    _program(tmp_path, "chromium-browser")  # Ubuntu's name for the browser counts
    proc = _provision(tmp_path, "redis-server", "chromium", PROVISION_NO_INSTALL="1")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: make test needs redis-server; install it (Debian: apt-get install redis-server)"
    ]


def test_nothing_to_do_is_silent(tmp_path: Path) -> None:
    _program(tmp_path, "redis-server")
    _program(tmp_path, "chromium")
    proc = _provision(tmp_path, "redis-server", "chromium", PROVISION_NO_INSTALL="1")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_postgresql_counts_when_its_server_tools_are_there(tmp_path: Path) -> None:
    proc = _provision(tmp_path, "postgresql", PROVISION_NO_INSTALL="1")
    assert proc.stderr.splitlines() == [
        "error: make test needs postgresql; install it (Debian: apt-get install postgresql)"
    ]
    _program(tmp_path, "pg_ctlcluster")  # Debian: the server binaries are off PATH, this wrapper is on it
    assert _provision(tmp_path, "postgresql", PROVISION_NO_INSTALL="1").returncode == 0
    (tmp_path / "pg_ctlcluster").unlink()
    _program(tmp_path, "initdb")  # other systems put the server binaries on PATH
    assert _provision(tmp_path, "postgresql", PROVISION_NO_INSTALL="1").returncode == 0


def test_python_venv_is_checked_only_until_the_venv_exists(tmp_path: Path) -> None:
    no_venv = {"PYTHON": str(tmp_path / "no-python"), "VENV": str(tmp_path / "venv")}
    proc = _provision(tmp_path, "python3-venv", PROVISION_NO_INSTALL="1", **no_venv)
    assert proc.returncode == 1 and "apt-get install python3-venv" in proc.stderr
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    _program(tmp_path / "venv" / "bin", "python")
    proc = _provision(tmp_path, "python3-venv", PROVISION_NO_INSTALL="1", **no_venv)
    assert proc.returncode == 0, proc.stderr
    proc = _provision(tmp_path, "python3-venv", PYTHON=sys.executable, VENV=str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr


FAKE_APT = """#!{python}
import os, sys
from pathlib import Path
bin_dir = Path(sys.argv[0]).parent
with open(bin_dir / "apt.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if "install" in sys.argv:
    for pkg in sys.argv[sys.argv.index("install") + 1 :]:
        if not pkg.startswith("-") and pkg != "{broken}":
            (bin_dir / pkg).write_text("#!/bin/sh\\nexit 0\\n")
            os.chmod(bin_dir / pkg, 0o755)
"""


def _fake_apt(bin_dir: Path, broken: str = "") -> Path:
    path = bin_dir / "apt-get"
    path.write_text(FAKE_APT.format(python=sys.executable, broken=broken))
    path.chmod(0o755)
    return bin_dir / "apt.log"


@pytest.mark.skipif(os.geteuid() != 0, reason="the installing branch runs only as root")
def test_as_root_apt_get_updates_once_and_installs_the_missing(tmp_path: Path) -> None:
    log = _fake_apt(tmp_path)
    _program(tmp_path, "redis-server")
    proc = _provision(tmp_path, "redis-server", "chromium")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and calls[0].startswith("update")
    assert calls[1].split()[0] == "install" and "-y" in calls[1].split()
    assert calls[1].split()[-1] == "chromium" and "redis-server" not in calls[1]
    # once done, a second run finds everything and calls nothing
    assert _provision(tmp_path, "redis-server", "chromium").returncode == 0
    assert log.read_text().splitlines() == calls
    # PROVISION_NO_INSTALL keeps root's hands off apt-get
    (tmp_path / "chromium").unlink()
    proc = _provision(tmp_path, "redis-server", "chromium", PROVISION_NO_INSTALL="1")
    assert proc.returncode == 1 and log.read_text().splitlines() == calls


@pytest.mark.skipif(os.geteuid() != 0, reason="the installing branch runs only as root")
def test_as_root_a_package_that_installs_no_program_still_fails_in_one_line(tmp_path: Path) -> None:
    _fake_apt(tmp_path, broken="chromium")
    proc = _provision(tmp_path, "redis-server", "chromium")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "error: make test needs chromium; install it (Debian: apt-get install chromium)"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_and_demo_provision_first() -> None:
    for target, packages in (("test", "redis-server chromium postgresql"), ("demo", "python3-venv")):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        lines = subprocess.run(  # a clean make: under `make test` the inner one would print its directory
            ["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=True, env=env,
        ).stdout.splitlines()  # fmt: skip
        assert "scripts/provision.sh" in lines[0] and f'"make {target}"' in lines[0], lines
        assert packages in lines[0]


def test_ci_only_runs_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    commands = [ln for ln in script.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_stops_before_anything_else_when_a_service_is_missing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "env", "bash"):  # what make needs to run the script, and nothing else
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    stamp = tmp_path / "installed"
    stamp.touch()  # an up-to-date venv stamp, and a BIN where nothing runs: only provisioning can happen
    venv_python = tmp_path / "venv" / "bin" / "python"  # a venv that exists, as after `make install`, so the
    venv_python.parent.mkdir(parents=True)  # line does not depend on whether this checkout has its .venv yet
    venv_python.touch(mode=0o755)
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "test",
            f"VENV={tmp_path / 'venv'}",
            f"STAMP={stamp}",
            f"BIN={tmp_path / 'nothing'}",
        ],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "PROVISION_NO_INSTALL": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if not ln.startswith("make")]
    assert ours == [
        "error: make test needs redis-server, chromium and postgresql; install them "
        "(Debian: apt-get install redis-server chromium postgresql)"
    ], proc.stderr
    assert "nothing" not in proc.stdout + proc.stderr  # the test command never started
