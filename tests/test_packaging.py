"""What the wheel installs: the library's packages and the runner, never the repository's tools."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_library_and_not_the_tools() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(where=str(ROOT), include=config["packages"]["find"]["include"])
    top = {p.split(".")[0] for p in packages}
    assert top == {"core", "transport", "emulator"}, top
    assert config["py-modules"] == ["runner"]


def test_benchmarks_run_as_a_module_from_a_checkout() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "usage: python -m benchmarks" in done.stdout, done.stderr
