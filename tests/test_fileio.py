"""adsrt.fileio: atomic writes leave either the old file or the whole new one, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from adsrt.errors import OutputError
from adsrt.fileio import atomic_write_bytes, upsert_csv, write_json


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left behind


def test_atomic_write_refuses_a_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "x.bin", b"")


def test_json_and_csv_upsert(tmp_path):
    write_json(tmp_path / "a.json", {"psnr": float("inf"), "x": [1.5]})
    assert (tmp_path / "a.json").read_text().replace(" ", "").replace("\n", "") == '{"psnr":null,"x":[1.5]}'
    path = tmp_path / "r.csv"
    upsert_csv(path, [{"k": "a", "v": "1"}, {"k": "b", "v": "2"}], key=("k",), columns=("k", "v"))
    upsert_csv(path, [{"k": "a", "v": "3"}], key=("k",), columns=("k", "v"))
    assert path.read_text().splitlines() == ["k,v", "b,2", "a,3"]
