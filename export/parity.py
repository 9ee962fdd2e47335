"""Does an exported graph compute what the bundle computes? ONNX Runtime against the torch reference.

:func:`check_parity` runs an exported file (any mode, any precision) under ONNX Runtime on real
images and the fp32 torch reference on the same inputs, and reports the worst max abs error and the
lowest PSNR between the two outputs over the images. The references are independent of the export
wrappers: the UM from the bundle; swap = :func:`adsrt.ads.apply_ads` (the graph's ``ads.*`` initializers
are overridden with the rows of those ADS weights, exactly what a refit writes); branch = the UM with
the ADS weights for each frame's own ``c`` (a batch of two frames with different ``c`` checks the
per-frame coefficients); fused = the classifier's softmax, then the same; classifier = the logits.

Pass thresholds: PSNR > 50 dB in fp32 and > 40 dB in fp16 (ONNX Runtime and torch differ only by rounding).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from adsrt.ads import apply_ads
from adsrt.errors import AdsrtError
from adsrt.metrics import batch_psnr
from adsrt.runtime.onnx_graph import expose_initializers, graph_metadata, load_onnx

__all__ = ["PSNR_THRESHOLDS", "ParityReport", "check_parity", "default_coefficients"]

PSNR_THRESHOLDS = {"fp32": 50.0, "fp16": 40.0}


def default_coefficients(k: int) -> Tensor:
    """A c that exercises every delta with a different weight: ``[k, k-1, ..., 1] / sum``, float32 [1, k]."""
    c = torch.arange(k, 0, -1, dtype=torch.float32)
    return (c / c.sum())[None]


@dataclass
class ParityReport:
    mode: str
    precision: str
    images: int
    max_abs: float  # worst over images and pixels
    psnr: float  # lowest over images (dB); nan for the classifier (logits are not an image)
    threshold: float
    per_image: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.mode == "classifier":
            return self.max_abs < (1e-3 if self.precision == "fp32" else 5e-2)
        return self.psnr > self.threshold

    def describe(self) -> str:
        what = f"max abs {self.max_abs:.2e}"
        if self.mode != "classifier":
            what += f", PSNR {self.psnr:.1f} dB (min over {self.images} images; needs > {self.threshold:g})"
        return f"ONNX Runtime vs torch, {self.mode} {self.precision}: {what} -> {'ok' if self.passed else 'FAILED'}"


def _to_tensor(image: np.ndarray, bundle) -> Tensor:
    lo, hi = bundle.input.value_range
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if bundle.input.channel_order == "BGR":
        x = x.flip(0)
    return (x * (hi - lo) + lo)[None]


def _session(path: os.PathLike, proto, refit: dict[str, str]):
    import onnxruntime as ort

    if refit:
        proto = expose_initializers(proto, list(refit.values()))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ramp_map(left: Tensor, right: Tensor, h: int, w: int) -> Tensor:
    """A coefficient map ``[1, k, h, w]`` going linearly from ``left`` to ``right`` (``[1, k]`` each) across
    the width: the map the parity check of ``local`` graphs feeds."""
    t = torch.linspace(0.0, 1.0, w).view(1, 1, 1, w)
    return ((1 - t) * left.view(1, -1, 1, 1) + t * right.view(1, -1, 1, 1)).expand(1, -1, h, w).contiguous()


def check_parity(bundle, onnx_path: str | os.PathLike, images: list[np.ndarray],
                 c: Tensor | None = None) -> ParityReport:
    """Compare the exported graph at ``onnx_path`` with the torch reference on ``images`` (RGB uint8)."""
    from adsrt.runtime.refit import gather_refit_weights, swap_rows

    if not images:
        raise AdsrtError("parity check: no images")
    proto = load_onnx(onnx_path)
    meta = graph_metadata(proto)
    mode, precision = meta.get("adsrt.mode"), meta.get("adsrt.precision", "fp32")
    fused = meta.get("adsrt.fused_classifier") == "true"
    if meta.get("adsrt.bundle_digest") != bundle.digest():
        raise AdsrtError(f"{onnx_path} was not exported from this bundle")
    refit: dict[str, str] = json.loads(meta.get("adsrt.refit", "{}"))
    k = len(bundle.degradations)
    c = default_coefficients(k) if c is None else c.float().reshape(1, k)
    session = _session(onnx_path, proto, refit)
    np_dtype = np.float16 if precision == "fp16" else np.float32
    lo, hi = bundle.input.value_range
    peak = float(hi - lo)

    feeds_extra: dict[str, np.ndarray] = {}
    if mode == "swap":
        model = apply_ads(bundle.build_um(), bundle, c[0])
        split_max = json.loads(meta.get("adsrt.split_max", "0.5"))
        rows = swap_rows(bundle, model, split_max)
        weights = dict(model.named_parameters())
        refit_tensors = gather_refit_weights({layer: weights[layer].detach() for layer in rows}, rows)
        feeds_extra = {name: t.numpy().astype(np_dtype) for name, t in refit_tensors.items()}

    def reference(x: Tensor, cs: Tensor) -> Tensor:
        if mode == "um":
            return bundle.build_um()(x)
        if mode == "swap":
            return model(x)
        if mode == "local":  # the torch branch model with the same map
            from adsrt.runtime.branch import to_branch

            return to_branch(bundle.build_um(), bundle)(x, cs)
        outs = [apply_ads(bundle.build_um(), bundle, cs[i])(x[i : i + 1]) for i in range(x.shape[0])]
        return torch.cat(outs)

    max_abs, per_image = 0.0, []
    with torch.no_grad():
        for image in images:
            x = _to_tensor(image, bundle)
            if mode == "classifier":
                (logits,) = session.run(None, {"x": x.numpy()})
                ref = bundle.build_classifier()(x).numpy()
                max_abs = max(max_abs, float(np.abs(logits - ref).max()))
                continue
            if mode == "branch" and not fused:
                # two frames, two coefficient vectors: the per-frame c of branch mode
                x = torch.cat([x, x.flip(3)])
                cs = torch.cat([c, c.flip(1)])
                (y,) = session.run(None, {"x": x.numpy(), "c": cs.numpy()})
            elif mode == "local":
                # a map that turns c into its reverse from left to right, at 1/8 of the frame
                cs = ramp_map(c, c.flip(1), max(1, x.shape[2] // 8), max(1, x.shape[3] // 8))
                (y,) = session.run(None, {"x": x.numpy(), "c": cs.numpy()})
            elif fused:
                y, probs = session.run(None, {"x": x.numpy()})
                temperature = json.loads(meta.get("adsrt.temperature", "1.0"))
                cs = torch.softmax(bundle.build_classifier()(x) / temperature, dim=1)[:, :k]
                max_abs = max(max_abs, float(np.abs(probs[:, :k] - cs.numpy()).max()))
            else:
                cs = c
                (y,) = session.run(None, {"x": x.numpy(), **feeds_extra})
            ref = reference(x, cs).numpy()
            max_abs = max(max_abs, float(np.abs(y - ref).max()))
            # One PSNR over every frame of the call: branch mode runs two frames with different c rows.
            both = batch_psnr(torch.from_numpy(y).reshape(1, -1), torch.from_numpy(ref).reshape(1, -1),
                              data_range=peak, clamp=False)
            per_image.append(float(both[0]))
    psnr = min(per_image) if per_image else math.nan
    return ParityReport(mode=str(mode), precision=precision, images=len(images), max_abs=max_abs, psnr=psnr,
                        threshold=PSNR_THRESHOLDS.get(precision, 50.0), per_image=per_image)
