"""Packaging: the sdist builds with the oldest setuptools that ``build-system.requires`` admits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_minimum() -> str:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (spec,) = [r for r in requires if re.match(r"setuptools\b", r)]
    match = re.fullmatch(r"setuptools\s*>=\s*([\w.]+)", spec)
    assert match, f"build-system.requires should give setuptools a floor (>=), got {spec!r}"
    return match.group(1)


@pytest.mark.slow
def test_sdist_builds_with_the_declared_minimum_setuptools(tmp_path: Path) -> None:
    minimum = _declared_minimum()
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", f"setuptools=={minimum}"], check=True)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "*.egg-info", "build", "dist", "bench-out"))
    built = subprocess.run(
        [python, "-c", "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"],
        cwd=source,
        check=True,
        capture_output=True,
        text=True,
    )
    sdist = source / "dist" / built.stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith("torch_pconv/pconv.py") for name in names)
    assert any(name.endswith("LICENSE") for name in names)
