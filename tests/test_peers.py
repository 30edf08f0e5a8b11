"""The guard that keeps peer oracles from skipping under scripts/test (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import peer_modules

ROOT = Path(__file__).resolve().parents[1]


def test_the_guard_checks_every_oracle_the_tests_import():
    modules = set(peer_modules(ROOT / "pyproject.toml").values())
    assert {"diffusers", "ot", "torchmetrics", "prdc"} <= modules, modules


def test_a_missing_peer_stops_a_required_run_with_one_line(tmp_path):
    """diffusers shadowed by a module that is not there: with GENMODELS_REQUIRE_PEERS=1 the run
    stops before collecting, exit code 4, naming the package and the install command."""
    (tmp_path / "diffusers.py").write_text("raise ModuleNotFoundError(\"No module named 'diffusers'\", name='diffusers')\n")
    env = {**os.environ, "GENMODELS_REQUIRE_PEERS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
                          "tests/test_samplers_diffusers.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 4, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "test oracle(s) missing: diffusers;" in lines[0] and "scripts/setup test" in lines[0], lines[0]
    assert "passed" not in run.stdout and "skipped" not in run.stdout, run.stdout
