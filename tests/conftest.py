"""Shared fixtures: tiny bundles with random sparse deltas, real photos from scikit-image, noisy frames and
short videos synthesised from real photos, fake cameras, and the TensorRT fixtures of tests/runtime and
tests/export. Fixtures used by one folder only live in that folder's conftest.py."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from adsrt.arch import ClassifierConfig
from adsrt.bundle import Bundle, save_bundle, synthetic_bundle

NOISE_SIGMA = 25.0


def _make_bundle(
    *,
    degradations: tuple[str, ...] = ("noise", "blur", "rain"),
    granularity: str = "kernel",
    q: float = 0.05,
    seed: int = 0,
    with_classifier: bool = True,
) -> Bundle:
    """A valid bundle of the tiny backbone whose deltas mark a random q of the eligible units."""
    classifier = ClassifierConfig(num_classes=len(degradations) + 1, input_size=32, width=4, depth=2)
    bundle = synthetic_bundle(
        "nafnet-tiny",
        degradations,
        q=q,
        granularity=granularity,
        seed=seed,
        delta_scale=0.1,
        perturb_um=0.05,  # NAFNet zero-initialises its layer scales; make every layer matter
        classifier=classifier if with_classifier else None,
    )
    bundle.metrics = {"psnr": {"noise": 30.0}}
    return bundle


@pytest.fixture
def make_bundle():
    return _make_bundle


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    """A tiny bundle (nafnet-tiny, noise/blur/rain) with random deltas on 5% of the units and a small
    classifier: ``make_bundle()``, built once per module (the TensorRT tests of runtime and export)."""
    return _make_bundle()


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    """A tiny bundle file (seed 2, a windowed classifier) behind the onnxruntime backend and the graph cache."""
    b = synthetic_bundle("nafnet-tiny", ("noise", "blur", "rain"), q=0.05, seed=2, delta_scale=0.1, perturb_um=0.05,
                         classifier=ClassifierConfig(num_classes=4, input_size=32, width=4, depth=2, window=64))
    return save_bundle(b, tmp_path_factory.mktemp("b") / "b.safetensors")


@pytest.fixture(scope="session")
def to_image():
    """``to_image(tensor)``: float 3xHxW in [0, 1] -> RGB uint8 HxWx3, rounded and clipped (how an output is
    saved), for references computed in plain torch."""

    def convert(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    return convert


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (scikit-image's astronaut, 512x512) cropped to 192x256 to keep tests fast."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[64:256, 128:384])


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Exported graphs and engines go to a per-session folder, never ~/.cache/adsrt."""
    folder = tmp_path_factory.mktemp("adsrt-cache")
    previous = os.environ.get("ADSRT_CACHE_DIR")
    os.environ["ADSRT_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ADSRT_CACHE_DIR", None)
    else:
        os.environ["ADSRT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def one_torch_thread():
    """The machines that run these tests are small and often shared: with two busy cores, two torch threads
    make a tiny model's step ~100x slower than one (threads spin waiting for each other). Autouse in
    tests/runtime, tests/io and tests/cli (their conftest.py); ``trained_bundle`` trains under it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ photos and a trained bundle


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
def trained_bundle(tmp_path_factory, one_torch_thread) -> Path:
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
    """``pan_frames`` (here, next to ``video_frames``, which pans too)."""
    return pan_frames


# ------------------------------------------------------------------------------ cameras and streams


class FakeCapture:
    """Plays a list of read results (an array: a frame; None: a failed read), then fails forever."""

    def __init__(self, reads, opened: bool = True, fps: float = 30.0) -> None:
        self.reads, self.opened, self.fps = list(reads), opened, fps
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        if self.reads:
            item = self.reads.pop(0)
            return (item is not None), item
        return False, None

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value) -> bool:
        return True

    def release(self) -> None:
        self.released = True


def _openers(*captures):
    """An opener that returns the given captures in turn, then closed ones."""
    queue = list(captures)
    return lambda: queue.pop(0) if queue else FakeCapture([], opened=False)


@pytest.fixture
def fake_capture():
    """``FakeCapture``: the cv2.VideoCapture a camera or stream source gets from its injectable opener
    (cameras and RTSP servers cannot run here; the code under test is the reconnect and stop logic)."""
    return FakeCapture


@pytest.fixture
def openers():
    """``openers(*captures)``: an opener that returns the given captures in turn, then closed ones."""
    return _openers


# ------------------------------------------------------------------------------------------ TensorRT


@pytest.fixture(scope="module")
def trt_cache(tmp_path_factory) -> Path:
    """One engine cache folder per module: the real-GPU tests share their engines."""
    return tmp_path_factory.mktemp("trt-cache")


@pytest.fixture(scope="session")
def trt_profile():
    """The shape profile (and workspace) of the real-GPU engines: frames up to 2 x 192 x 256."""
    from adsrt.runtime.tensorrt_engine import EngineConfig

    return EngineConfig(min_shape=(1, 16, 16), opt_shape=(1, 64, 64), max_shape=(2, 192, 256), workspace_mb=256)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder nobody can create files in: a read-only folder, or /sys for root (who writes into read-only
    folders; sysfs refuses new files even to root)."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys"):
            pytest.skip("running as root without /sys: no unwritable folder to test with")
        yield Path("/sys")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


@pytest.fixture(autouse=True)
def _no_tf32_in_gpu_tests(request):
    """GPU tests compare CUDA fp32 with the CPU at fp32 tolerances, but cuDNN convolutions run in TF32 by default
    (10 mantissa bits): off for every test marked ``gpu``, unless it is also marked ``tf32`` (it then runs with
    TF32 on, at a tolerance that fits it) or ``ADSRT_TEST_TF32=1`` is set. Both flags are restored afterwards."""
    if request.node.get_closest_marker("gpu") is None:
        yield
        return
    keep = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    # ADSRT_TEST_TF32=1: every gpu test with TF32 on (the GPU check's second, informational pass)
    tf32 = request.node.get_closest_marker("tf32") is not None or os.environ.get("ADSRT_TEST_TF32") == "1"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = keep


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
