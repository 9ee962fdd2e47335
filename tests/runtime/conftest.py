"""Fixtures of the runtime tests: a tiny bundle trained on real photos (session-wide, seconds), odd
convolution stacks with random masks, noisy frames and short videos synthesised from real photos."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from adsrt.ads import LayerDelta, unit_layouts

NOISE_SIGMA = 25.0


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The machines that run these tests are small and often shared: with two busy cores, two torch threads
    make a tiny model's step ~100x slower than one (threads spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def add_noise(image: np.ndarray, sigma: float = NOISE_SIGMA, seed: int = 0) -> np.ndarray:
    """Gaussian noise on the 0-255 scale, clipped and rounded to uint8 (the peers' protocol)."""
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(np.float64) + rng.normal(0.0, sigma, image.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def noisy():
    return add_noise


def _photo(name: str, width: int, height: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(getattr(data, name)(), (width, height), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def clean_photo() -> np.ndarray:
    """scikit-image's chelsea (a cat, few clipped pixels) at 144x96."""
    return _photo("chelsea", 144, 96)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory) -> Path:
    """A nafnet-tiny bundle for noise and blur that really denoises: the UM trains 250 steps on crops of
    six real photos (~10 s on one core), then ``train_all --preset tiny`` adds targets, masks, deltas and
    the classifier around it (the tiny preset alone learns too little to improve PSNR)."""
    from adsrt.train.pipeline import PipelineConfig, train_all
    from adsrt.train.um import UMConfig, train_um

    root = tmp_path_factory.mktemp("trained")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat"):
        cv2.imwrite(str(photos / f"{name}.png"), _photo(name, 128, 96)[:, :, ::-1])
    steps = 250
    train_um(UMConfig(data=str(photos), out=str(root / "work" / "um"), degradations=("noise", "blur"),
                      backbone="nafnet-tiny", steps=steps, lr=4e-3, batch_size=8, crop_size=48, val_every=steps,
                      val_samples=8, ckpt_every=steps, samples_per_epoch=256, workers=0, progress=False))
    out = root / "tiny.safetensors"
    train_all(PipelineConfig(data=str(photos), out=str(out), work=str(root / "work"), degradations=("noise", "blur"),
                             preset="tiny", progress=False))
    return out


# ----------------------------------------------------------------------------------- odd conv stacks

class OddConvs(nn.Module):
    """Every kind of eligible layer, with odd sizes: plain, strided + dilated, reflect padding, depthwise,
    grouped, 1x1, transposed with output padding."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 7, 3, padding=1),
            nn.Conv2d(7, 6, 3, stride=2, padding=2, dilation=2),
            nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"),
            nn.Conv2d(6, 12, 3, padding=1, groups=6),  # depthwise with multiplier 2
            nn.Conv2d(12, 8, (3, 1), padding=(1, 0), groups=4),  # grouped
            nn.Conv2d(8, 5, 1),
            nn.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1),
            nn.Conv2d(4, 3, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return self.layers(x)


def _odd_case(granularity: str, k: int = 3, seed: int = 0, fraction: float = 0.3):
    """OddConvs with random weights and k random, overlapping masks (a bundle-like namespace)."""
    gen = torch.Generator().manual_seed(seed)
    model = OddConvs()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    layouts = unit_layouts(model, granularity)
    degradations = [f"d{i}" for i in range(k)]
    deltas = {}
    for d_index, d in enumerate(degradations):
        per_layer = {}
        for i, (name, layout) in enumerate(layouts.items()):
            if (i + d_index) % 4 == 3:  # some layers have no delta for some degradations
                continue
            chosen = torch.nonzero(torch.rand(layout.n_units, generator=gen) < fraction).reshape(-1)
            if not len(chosen):
                chosen = torch.randint(layout.n_units, (1,), generator=gen)
            per_layer[name] = LayerDelta(chosen, 0.3 * torch.randn(len(chosen), layout.unit_numel, generator=gen))
        deltas[d] = per_layer
    source = SimpleNamespace(um_state={k_: v.detach().clone() for k_, v in model.state_dict().items()}, deltas=deltas,
                             degradations=degradations, granularity=granularity)
    return model, source


@pytest.fixture
def odd_case():
    return _odd_case


# ------------------------------------------------------------------------------------------ videos

def write_video(path: Path, frames: list[np.ndarray], fps: float = 12.0, codec: str = "MJPG") -> Path:
    """Write RGB frames with OpenCV (the file the tests then read back through adsrt)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {codec} into {path.suffix}"
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def pan_frames(photo: np.ndarray, n: int, width: int, height: int, step: int = 2) -> list[np.ndarray]:
    """``n`` crops of ``photo`` moving right by ``step`` pixels per frame: a slow pan."""
    return [np.ascontiguousarray(photo[:height, i * step : i * step + width]) for i in range(n)]


@pytest.fixture(scope="session")
def video_frames(clean_photo) -> SimpleNamespace:
    """12 clean frames (96x64, a pan over chelsea) and the same frames with sigma-25 noise."""
    clean = pan_frames(clean_photo, 12, 96, 64)
    return SimpleNamespace(clean=clean, noisy=[add_noise(f, seed=i) for i, f in enumerate(clean)])


@pytest.fixture
def make_video():
    return write_video


@pytest.fixture
def pan():
    return pan_frames
