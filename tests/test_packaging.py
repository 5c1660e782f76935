"""methods/ and tasks/ install as xbench.methods / xbench.tasks only; an outside plugin installs and runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["methods", "tasks"])
def test_not_importable_top_level(name):
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"must be imported as 'xbench.{name}'" in proc.stderr


def test_installed_under_xbench():
    import xbench.methods.rollout
    import xbench.tasks.easyvqa

    assert Path(xbench.methods.rollout.__file__).parent.name == "methods"
    assert Path(xbench.tasks.easyvqa.__file__).parent.name == "tasks"


def test_example_outside_plugin_installs_and_runs(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT / "examples" / "xbench-example-plugin")],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    cli = [sys.executable, "-m", "xbench.cli"]
    # cwd outside the checkout, so the installed xbench is imported, not the source folder
    listed = subprocess.run(cli + ["plugins"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if "center_prior" in l)
    assert "plugin 'center_prior' (xbench-center-prior 0.1.0)" in line
    out = tmp_path / "run"
    ran = subprocess.run(
        cli + ["run", "--method", "center_prior", "--model", "tiny-random-llava", "--limit", "2", "--out", str(out),
               "--no-progress", "--warmup", "0"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "2 samples explained, 0 errors" in ran.stdout
