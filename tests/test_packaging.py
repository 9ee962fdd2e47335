"""The wheel ships exactly the adsrt package (all four source folders) and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"sdk": "adsrt", "kernels": "adsrt/kernels", "export": "adsrt/export", "train": "adsrt/train"}  # and sdk/*/


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: an in-tree build leaves build/ and adsrt.egg-info/ in the checkout,
    # and that egg-info would shadow the installed metadata (version, entry points) for Python run from there.
    src = tmp_path_factory.mktemp("src") / "adsrt"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".ruff_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        cwd=tmp_path_factory.mktemp("cwd"),
    )
    (path,) = out.glob("adsrt-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_top_level_contents(wheel_names):
    top = {name.split("/")[0] for name in wheel_names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"adsrt"}
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in wheel_names)


def test_every_source_module_is_shipped(wheel_names):
    # Guards the explicit package list in pyproject.toml: a new subfolder or module must be listed.
    expected = {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in FOLDERS.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected <= wheel_names, sorted(expected - wheel_names)
    assert "adsrt/py.typed" in wheel_names
    assert "adsrt/models/default.safetensors" in wheel_names  # the bundled default model (package data)


def test_console_script_is_declared(wheel, wheel_names):
    entry = next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry).decode()
    assert "[console_scripts]" in text and "adsrt = adsrt.cli:main" in text
    # the runtime's one door into the exporter (adsrt.runtime.artifacts) is this entry point
    assert "[adsrt.artifacts]" in text and "export = adsrt.export.artifacts:provide" in text
