"""The wheel: it carries the package, py.typed, and every file of the top-level kernels/ directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling", reason="the packaging test builds with hatchling (pip install gpubp[test])")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True)
    wheels = list(out.glob("gpubp-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_kernels_and_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    kernel_files = [p for p in (ROOT / "kernels").iterdir() if p.is_file()]
    assert len([p for p in kernel_files if p.suffix == ".cu"]) >= 4, "kernels/*.cu missing"
    for path in kernel_files:
        assert f"gpubp/kernels/{path.name}" in names
    for module in ("__init__.py", "mlp.py", "backends/base.py", "backends/cupy_backend.py", "py.typed"):
        assert f"gpubp/{module}" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_wheel_metadata(wheel):
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: numpy" in metadata
    assert "cupy-cuda12x" in metadata and "cupy-cuda13x" in metadata
    entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "gpubp = gpubp.cli:main" in entry_points
