"""``adsrt export BUNDLE --to onnx|tensorrt``: write an ONNX graph (checked) or a TensorRT engine.

ONNX: export (see :mod:`adsrt.export.onnx_export`), then the TensorRT-parser compatibility check
(:mod:`adsrt.export.tensorrt_ops`) and the ONNX Runtime vs torch parity check on real photos
(``--check-images DIR``, else scikit-image's samples; :mod:`adsrt.export.parity`). A failed parity check
deletes the file and exits 1: a graph that does not compute the bundle's outputs is never left behind.

TensorRT: the same ONNX (into the engine cache folder), then an engine built with the TensorRT Python
API for one shape profile (``--min-shape/--opt-shape/--max-shape`` as BxHxW), through the engine cache;
``-o`` receives a copy of the engine and ``OUT.json`` its cache key.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from adsrt.errors import AdsrtError, OutputError
from adsrt.fileio import check_writable_folder

log = logging.getLogger(__name__)

__all__ = ["add_export_command"]


def _shape(text: str) -> tuple[int, int, int]:
    try:
        b, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected BxHxW, e.g. 1x720x1280, got {text!r}") from exc
    return b, h, w


def _check_images(folder: str | None, limit: int) -> list:
    from adsrt.imageio import list_images, sample_photos, try_read_image

    if folder is None:
        return list(sample_photos().values())[:limit]
    paths = list_images(folder)
    if not paths:
        raise AdsrtError(f"--check-images {folder}: no images in this folder")
    images = []
    for path in paths:  # unreadable files are skipped (with a warning each) until `limit` images are read
        image = try_read_image(path)
        if image is not None:
            images.append(image)
            if len(images) == limit:
                break
    if not images:
        raise AdsrtError(f"--check-images {folder}: none of its {len(paths)} images could be read")
    return images


def _check_output(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise OutputError(f"-o {out} is a folder; give a file name")
    check_writable_folder(out.parent, out)


def cmd_export(args: argparse.Namespace) -> int:
    from adsrt.export.onnx_export import OnnxExportConfig, export_onnx
    from adsrt.export.parity import check_parity
    from adsrt.export.tensorrt_ops import tensorrt_compatibility
    from adsrt.runtime.onnx_graph import load_onnx
    from adsrt.runtime.restorer import resolve_bundle

    bundle, label = resolve_bundle(args.bundle)
    out = Path(args.output)
    _check_output(out)
    if args.to == "tensorrt":
        return _export_tensorrt(args, bundle, out)

    config = OnnxExportConfig(mode=args.mode, precision=args.precision, fuse_classifier=args.fuse_classifier,
                              split_max=args.split_max, opset=args.opset, simplify=not args.no_simplify)
    config.check()
    images = None if args.no_check else _check_images(args.check_images, args.check_count)
    result = export_onnx(bundle, out, config)
    problems = tensorrt_compatibility(load_onnx(out))
    print(f"{label} -> {out}: {result.mode} graph, {result.precision}, {result.nodes} nodes, "
          f"{result.bytes / 1e6:.2f} MB; inputs {result.inputs}, outputs {result.outputs}")
    if result.refit_names:
        print(f"  refittable weights: {len(result.refit_names)} initializers named ads.<layer>")
    if problems:
        print("  TensorRT parser check: " + f"{len(problems)} problem(s):\n    " + "\n    ".join(problems[:10]))
    else:
        print("  TensorRT parser check: every operator and attribute is on the TensorRT 10 list")
    if images is not None:
        report = check_parity(bundle, out, images)
        print("  " + report.describe())
        if not report.passed:
            out.unlink(missing_ok=True)
            raise AdsrtError(f"parity check failed ({report.describe()}); {out} removed")
    return 0


def _export_tensorrt(args: argparse.Namespace, bundle, out: Path) -> int:
    from adsrt.export.artifacts import tensorrt_engine
    from adsrt.runtime.tensorrt_engine import EngineConfig, import_tensorrt

    if args.fuse_classifier:
        raise AdsrtError("--fuse-classifier is an ONNX option; TensorRT engines run the classifier separately")
    import_tensorrt()  # clear error (exit 1) when TensorRT or CUDA is missing, before any work
    config = EngineConfig(mode=args.mode, precision=args.precision, min_shape=args.min_shape,
                          opt_shape=args.opt_shape, max_shape=args.max_shape, workspace_mb=args.workspace_mb)
    loaded = tensorrt_engine(bundle, config, cache_dir=args.cache_dir, rebuild=args.rebuild)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(loaded.path, tmp)
    tmp.replace(out)
    print(f"{'built' if loaded.built else 'cached'} engine {loaded.path} -> {out} "
          f"({args.mode}, {args.precision}, profile {config.min_shape}..{config.max_shape})")
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a bundle to ONNX (checked against torch) or a TensorRT engine",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle file or bundled model name (e.g. default)")
    p.add_argument("--to", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--mode", choices=("swap", "branch", "local", "um", "classifier"), default="swap",
                   help="swap: refittable ads.<layer> convs; branch: c as input [B, k]; local: a coefficient map "
                        "c [B, k, h, w] as input; um: the UM alone; "
                        "classifier: the degradation classifier alone")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 is expressed in the graph (I/O stays float32)")
    p.add_argument("--fuse-classifier", action="store_true",
                   help="branch: one graph from image to restored image (classifier inside)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .onnx file or engine file")
    g = p.add_argument_group("ONNX options")
    g.add_argument("--split-max", type=float, default=0.5,
                   help="swap: split a layer into constant + refittable convs when at most this share of its "
                        "filters is masked; above it the whole weight is refittable (default 0.5)")
    g.add_argument("--opset", type=int, default=18)
    g.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    g.add_argument("--check-images", metavar="DIR", help="images for the parity check (default: scikit-image samples)")
    g.add_argument("--check-count", type=int, default=3, help="how many images the parity check runs (default 3)")
    g.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    g = p.add_argument_group("TensorRT options")
    g.add_argument("--min-shape", type=_shape, default=(1, 16, 16), metavar="BxHxW")
    g.add_argument("--opt-shape", type=_shape, default=(1, 720, 1280), metavar="BxHxW")
    g.add_argument("--max-shape", type=_shape, default=(1, 1088, 1920), metavar="BxHxW")
    g.add_argument("--workspace-mb", type=int, default=1024)
    g.add_argument("--cache-dir", metavar="DIR", help="engine cache root (default $ADSRT_CACHE_DIR or ~/.cache/adsrt)")
    g.add_argument("--rebuild", action="store_true", help="export the graph and build the engine again even if cached (e.g. corrupt)")
    p.set_defaults(func=cmd_export)
