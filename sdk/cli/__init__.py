"""The ``adsrt`` command line.

Each subcommand is a small function that parses nothing itself: argparse does that, strictly, so a
typo in an option is an error rather than silently ignored. Errors that adsrt
reports for bad input (:class:`adsrt.errors.AdsrtError`) become one line on stderr and exit code 1;
argparse usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import adsrt
from adsrt.cli.argtypes import add_max_pixels_option, int_in, seed
from adsrt.cli.bench import add_bench_commands
from adsrt.cli.export import add_export_command
from adsrt.cli.runtime import add_runtime_commands
from adsrt.cli.train import add_train_commands
from adsrt.errors import AdsrtError, ImageReadError, OutputError

log = logging.getLogger("adsrt")


# ------------------------------------------------------------------------------------------------ degrade


def cmd_degrade(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adsrt.fileio import resolved
    from adsrt.imageio import IMAGE_EXTENSIONS, list_images, read_image, try_read_image, write_image
    from adsrt.train.degradations import degrade, keyed_rng, parse_specs

    specs = parse_specs(args.kind)  # validates names and levels before any file is touched
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        paths = list_images(src)
        if not paths:
            raise ImageReadError(f"{src}: no images in this folder")
        if dst.exists() and not dst.is_dir():
            raise OutputError(f"{dst}: input is a folder, so the output must be a folder")
        suffix = args.ext if args.ext.startswith(".") else f".{args.ext}"
        if suffix.lower() not in IMAGE_EXTENSIONS:
            raise OutputError(f"unsupported --ext {args.ext!r}")
        if resolved(dst) == resolved(src):
            raise OutputError(f"{dst}: the output folder is the input folder; choose another")
        written = skipped = 0
        for path in tqdm(paths, desc=f"degrade {args.kind}", unit="img", disable=args.quiet):
            image = try_read_image(path, max_pixels=args.max_pixels)  # a bad file is skipped and counted
            if image is None:
                skipped += 1
                continue
            dst.mkdir(parents=True, exist_ok=True)  # created with the first image: no empty folder on failure
            write_image(dst / f"{path.stem}{suffix}", degrade(image, specs, keyed_rng(args.seed, path.name)))
            written += 1
        if not written:
            raise ImageReadError(f"{src}: none of its {len(paths)} images could be read")
        note = f", {skipped} unreadable skipped" if skipped else ""
        print(f"{written} images degraded with {args.kind}{note} -> {dst}")
    else:
        if resolved(dst) == resolved(src):
            raise OutputError(f"{dst}: the output is the input image; choose another name")
        image = read_image(src, max_pixels=args.max_pixels)
        write_image(dst, degrade(image, specs, keyed_rng(args.seed, src.name)))
        print(f"{src} degraded with {args.kind} -> {dst}")
    return 0


# ------------------------------------------------------------------------------------------------ metrics


def _metric_pairs(restored: Path, reference: Path) -> list[tuple[str, Path, Path]]:
    from adsrt.train.data import find_pairs

    if restored.is_dir() != reference.is_dir():
        raise AdsrtError("RESTORED and REFERENCE must both be files or both be folders")
    if restored.is_dir():
        return [(r.name, r, c) for r, c in find_pairs(restored, reference)]
    return [(restored.name, restored, reference)]


def cmd_metrics(args: argparse.Namespace) -> int:
    from adsrt.fileio import check_not_overwriting, write_json
    from adsrt.imageio import read_image
    from adsrt.metrics import score_pair

    if args.json:
        check_not_overwriting(args.json, {"RESTORED": args.restored, "REFERENCE": args.reference})
    files = []
    for name, restored_path, reference_path in _metric_pairs(Path(args.restored), Path(args.reference)):
        restored = read_image(restored_path, max_pixels=args.max_pixels)
        reference = read_image(reference_path, max_pixels=args.max_pixels)
        if restored.shape != reference.shape:
            raise AdsrtError(f"{name}: size {restored.shape[:2]} differs from its reference {reference.shape[:2]}")
        psnr, ssim = score_pair(restored, reference, protocol=args.protocol)
        files.append({"name": name, "psnr": psnr, "ssim": ssim})
    mean = {key: float(np.mean([f[key] for f in files])) for key in ("psnr", "ssim")}
    width = max(len(f["name"]) for f in files + [{"name": "mean"}])
    print(f"{'file':<{width}}  {'PSNR':>8}  {'SSIM':>7}   (protocol {args.protocol})")
    for f in files + [{"name": "mean", **mean}]:
        print(f"{f['name']:<{width}}  {f['psnr']:8.3f}  {f['ssim']:7.4f}")
    if args.json:
        write_json(args.json, {"protocol": args.protocol, "files": files, "mean": mean})
    return 0


# --------------------------------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from adsrt.arch import model_cost
    from adsrt.bundle import summarize
    from adsrt.runtime.restorer import resolve_bundle

    bundle, _ = resolve_bundle(args.bundle)
    summary = summarize(bundle)
    cost = model_cost(bundle.build_um(), args.height, args.width)
    print(f"bundle        {args.bundle}")
    print(f"backbone      nafnet {json.dumps(bundle.backbone.to_dict())}")
    print(f"UM params     {summary.um_params:,}  ({cost.gmacs:.2f} GMACs at {args.width}x{args.height})")
    print(f"classifier    {summary.classifier_params:,} params" if bundle.classifier else "classifier    none")
    print(f"ADS           granularity {bundle.granularity}, q = {bundle.q:g}, {summary.eligible_units:,} eligible units")
    print(f"input         {bundle.input.channel_order} {bundle.input.layout} in {list(bundle.input.value_range)}, "
          f"padded to a multiple of {bundle.input.pad_multiple}")
    print(f"{'degradation':<12}  {'units':>8}  {'of eligible':>11}  {'delta params':>12}  {'overhead':>8}")
    for d in bundle.degradations:
        units = summary.masked_units[d]
        print(f"{d:<12}  {units:>8,}  {units / summary.eligible_units:>10.2%}  "
              f"{summary.delta_params[d]:>12,}  {summary.overhead(d):>8.2%}")
    print(f"{'all':<12}  {sum(summary.masked_units.values()):>8,}  {'':>11}  "
          f"{summary.total_delta_params:>12,}  {summary.overhead():>8.2%}")
    if bundle.metrics:
        print(f"metrics       {json.dumps(bundle.metrics)}")
    return 0


# --------------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from adsrt.cli.demo import DemoConfig, run_demo

    config = DemoConfig(bundle=args.bundle, backend=args.backend, out=args.out, seed=args.seed,
                        progress=not args.quiet)
    result = run_demo(config)
    print(result.table())
    print(f"grids and demo.json -> {Path(args.out)}")
    return 0


# ------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adsrt", description="All-in-one image and video restoration for edge devices.")
    parser.add_argument("--version", action="version", version=f"adsrt {adsrt.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("degrade", help="degrade an image or a folder of images (synthetic test data)")
    p.add_argument("input", metavar="IN", help="image file or folder of images")
    p.add_argument("output", metavar="OUT", help="output file, or folder when IN is a folder")
    p.add_argument("--kind", required=True, metavar="NAME[/STYLE][:LEVEL]",
                   help="noise, blur, rain, haze, snow, lowlight or mix, with an optional level (noise:25) and "
                        "style (noise/awgn:25, blur/defocus:2); '+' composes (noise:15+blur:2); without a level "
                        "one is drawn from the training range, without a style one from the family")
    p.add_argument("--seed", type=seed, default=0, help="random seed (each file draws from seed and its name)")
    p.add_argument("--ext", default=".png", help="output format for folders (default .png: lossless)")
    add_max_pixels_option(p)
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("metrics", help="PSNR/SSIM of restored images against references")
    p.add_argument("restored", metavar="RESTORED", help="image file or folder")
    p.add_argument("reference", metavar="REFERENCE", help="image file or folder (matched by file name stem)")
    p.add_argument("--protocol", choices=("adsrt", "peers"), default="adsrt",
                   help="adsrt: RGB in [0,1], Gaussian SSIM, no crop; peers: scikit-image conventions, "
                        "centre crop to a multiple of 16 (AirNet/PromptIR/IDR tables)")
    p.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    add_max_pixels_option(p)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("info", help="describe a bundle: degradations, parameters, ADS overhead")
    p.add_argument("bundle", metavar="BUNDLE", nargs="?", default="default",
                   help="bundle file (.safetensors) or bundled model name (default: default)")
    p.add_argument("--height", type=int_in(1, 65536), default=720, help="frame height for the FLOP count (default 720)")
    p.add_argument("--width", type=int_in(1, 65536), default=1280, help="frame width for the FLOP count (default 1280)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="restore degraded sample photos with the bundled default model")
    p.add_argument("--out", metavar="DIR", default="adsrt-demo",
                   help="folder for the result grids and demo.json (default adsrt-demo, created if missing)")
    p.add_argument("--bundle", default="default", help="bundle file or bundled model name (default: default)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="inference backend (default auto: the best available, logged)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the degradations (default 0)")
    p.set_defaults(func=cmd_demo)

    add_bench_commands(sub)  # bench ads-update (alias swap), bench latency
    add_runtime_commands(sub)  # restore, classify
    add_export_command(sub)
    add_train_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except AdsrtError as exc:
        print(f"adsrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adsrt {args.command}: interrupted", file=sys.stderr)
        code = 130
    if code == 130 and argv is None:
        _ignore_signals_until_exit()
    return code


def _ignore_signals_until_exit() -> None:
    """The ``adsrt`` process was interrupted and has only to exit 130; the interpreter's shutdown after that
    (threads, torch's finalizers) takes long enough for another Ctrl-C to land there, print a traceback or
    kill the process by the signal. So SIGINT and SIGTERM stay ignored from here on. Only for the command
    itself (``argv`` None): a program calling ``main([...])`` in-process keeps its handlers."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
