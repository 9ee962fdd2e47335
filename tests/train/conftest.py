"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """``photo_folder(width, height)``: a folder of four real photos (scikit-image's astronaut, coffee,
    chelsea and rocket) resized to ``width`` x ``height``, written as PNG; one folder per size."""
    from skimage import data

    folders: dict[tuple[int, int], Path] = {}

    def make(width: int, height: int) -> Path:
        if (width, height) not in folders:
            folder = tmp_path_factory.mktemp(f"photos{width}x{height}")
            for name in ("astronaut", "coffee", "chelsea", "rocket"):
                image = cv2.resize(getattr(data, name)(), (width, height), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(folder / f"{name}.png"), image[:, :, ::-1])
            folders[width, height] = folder
        return folders[width, height]

    return make
