"""The runtime's one door into the exporter (adsrt.runtime.artifacts): the entry point, its errors, and
``backend="auto"`` passing over ONNX Runtime when no exporter is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from adsrt.errors import BackendError
from adsrt.runtime import artifacts
from adsrt.runtime.backends import available_backends


def test_the_installed_exporter_is_found_and_unknown_kinds_are_refused(bundle):
    assert artifacts.exporter_unavailable_reason() is None
    with pytest.raises(BackendError, match="unknown artifact kind 'pdf'"):
        artifacts.exported("pdf", bundle)


def test_cache_root_expands_home_and_honours_the_environment(monkeypatch, tmp_path):
    assert artifacts.cache_root("~/x") == Path.home() / "x"
    monkeypatch.setenv("ADSRT_CACHE_DIR", str(tmp_path))
    assert artifacts.cache_root() == tmp_path


def test_without_an_exporter_the_error_is_clear_and_auto_passes_over_onnxruntime(monkeypatch, bundle):
    monkeypatch.setattr(artifacts, "entry_points", lambda group: [])
    artifacts._provider.cache_clear()
    try:
        assert "no exporter is installed" in artifacts.exporter_unavailable_reason()
        with pytest.raises(BackendError, match="no exporter is installed"):
            artifacts.exported("onnx", bundle, mode="um", precision="fp32")
        assert "no exporter is installed" in available_backends()["onnxruntime"]
    finally:
        artifacts._provider.cache_clear()
