"""The runtime commands of the ``adsrt`` CLI: ``restore`` and ``classify`` (``bench latency`` is in
:mod:`adsrt.cli.bench`).

    adsrt restore INPUT [OUTPUT] [--bundle B] [--backend auto|torch|...] [--mode swap|branch|local|um]
                  [--device D] [--precision fp32|fp16|bf16] [--tile N] [--force DEGRADATION]
                  [--side-by-side] [--stats JSON] [--input-* ...] [--output-* ...]
    adsrt classify INPUT [--bundle B] [--json]

INPUT and OUTPUT follow the jetson-inference grammar (see :mod:`adsrt.io.sources` and :mod:`adsrt.io.sinks`). Progress bars show
frames of files, and frames and FPS of live streams; ``-q`` turns them off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from adsrt.cli.argtypes import add_max_pixels_option, finite_float, int_in, nonnegative_int, positive_int


def _restorer(args: argparse.Namespace, **overrides: Any):
    from adsrt.runtime.restorer import Restorer, RestorerConfig, resolve_bundle

    bundle, label = resolve_bundle(args.bundle)
    options = dict(backend=args.backend, device=args.device, precision=getattr(args, "precision", "fp32"),
                   mode=getattr(args, "mode", "swap"))
    for name in ("force", "tile", "tile_overlap", "memory_limit_mb", "ema", "temperature", "scene_threshold",
                 "cuda_graph", "graph", "cache_dir"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    options.update(overrides)
    return Restorer(bundle, RestorerConfig(**options), source=label)


def _source_options(args: argparse.Namespace):
    from adsrt.io.sources import SourceOptions

    return SourceOptions(width=args.input_width, height=args.input_height, rate=args.input_rate,
                         max_frames=args.input_frames, retries=args.input_retries, backoff_s=args.input_backoff,
                         max_pixels=args.max_pixels)


# ------------------------------------------------------------------------------------------------ restore


def cmd_restore(args: argparse.Namespace) -> int:
    from adsrt.fileio import check_not_overwriting, check_writable_folder, write_json
    from adsrt.io.sinks import SinkOptions, open_sink
    from adsrt.io.sources import open_source
    from adsrt.runtime.loop import handle_interrupts, process

    source = open_source(args.input, _source_options(args))  # bad input fails before the model loads
    try:
        # The output next, also before the model: a bad OUTPUT is one line, without the restorer's log.
        sink = open_sink(args.output, source, SinkOptions(codec=args.output_codec, rate=args.output_rate,
                                                          ext=args.output_ext, suffix=args.output_suffix,
                                                          overwrite=args.overwrite))
        if args.stats:
            stats = Path(args.stats)
            check_not_overwriting(stats, {"input": getattr(source, "path", None), "output": sink.path,
                                          "bundle": args.bundle if Path(args.bundle).exists() else None})
            check_writable_folder(stats.parent, stats)
        restorer = _restorer(args)
    except BaseException:
        source.close()
        raise
    if not args.quiet:
        print(f"adsrt restore: {source.describe()} -> {sink.path}", file=sys.stderr)
    # The report is written inside too: once the output is being finished, more signals wait for adsrt to
    # say what it kept, and to exit, instead of killing it halfway.
    with handle_interrupts() as interrupts, _sigterm_as_interrupt(interrupts):
        report = process(source, sink, restorer, side_by_side=args.side_by_side, collect_stats=bool(args.stats),
                         progress=not args.quiet, interrupts=interrupts)
        if args.stats:
            write_json(args.stats, _stats(report, restorer))
        if report.interrupted:
            kept = "kept the playable part" if report.kept_partial else "nothing playable was kept"
            # the sink's count: the frames in the file, whatever the report's bookkeeping
            print(f"adsrt restore: interrupted after {sink.written} frames; {kept} ({sink.path})", file=sys.stderr)
            return 130
        print(f"{report.summary()} -> {sink.path}")
        return 0


@contextlib.contextmanager
def _sigterm_as_interrupt(interrupts):
    """SIGTERM (``kill``, a service manager stopping us) ends a run like Ctrl-C, by the same handler
    (:class:`adsrt.runtime.loop.Interrupts`): the output is closed and its playable part kept, instead of
    dying with a temporary file left behind, and signals after the first wait for that."""
    try:
        previous = signal.signal(signal.SIGTERM, interrupts)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is interrupts:  # not replaced meanwhile
            signal.signal(signal.SIGTERM, previous)


def _stats(report, restorer) -> dict[str, Any]:
    frames = report.frames
    mean = {}
    if frames:
        for key in frames[0]["timings_ms"]:
            mean[key] = sum(f["timings_ms"][key] for f in frames) / len(frames)
    return {
        **{k: v for k, v in report.to_json().items() if k != "frames"},
        "bundle": restorer.source,
        "backend": restorer.backend_name,
        "mode": restorer.mode,
        "device": str(restorer.device),
        "degradations": restorer.degradations,
        "mean_timings_ms": mean,
        "frames": frames,
    }


# ----------------------------------------------------------------------------------------------- classify


def cmd_classify(args: argparse.Namespace) -> int:
    from adsrt.io.sources import open_source

    source = open_source(args.input, _source_options(args))
    try:
        restorer = _restorer(args, mode="um")  # no layout or branch modules: the classifier is all it needs
        classes = [*restorer.degradations, "clean"]
        items = []
        for frame in source:
            name = frame.name or f"frame {frame.index}"
            if frame.image is None:
                items.append({"name": name, "index": frame.index, "error": frame.error or "unreadable"})
                continue
            probs = restorer.classify(frame.image)
            items.append({"name": name, "index": frame.index, "probabilities": probs, "top": max(probs, key=probs.get)})
    finally:
        source.close()
    if items and all("error" in item for item in items):
        from adsrt.errors import InputError

        raise InputError(f"{args.input}: no frame could be read ({len(items)} skipped)")
    if args.json:
        print(json.dumps({"input": source.uri, "bundle": restorer.source, "classes": classes, "items": items},
                         indent=2, allow_nan=False))
        return 0
    width = max(8, *(len(item["name"]) for item in items))
    print(f"{'input':<{width}}  " + "  ".join(f"{c:>8}" for c in classes) + "  top")
    for item in items:
        if "error" in item:
            print(f"{item['name']:<{width}}  skipped: {item['error']}")
            continue
        p = item["probabilities"]
        print(f"{item['name']:<{width}}  " + "  ".join(f"{p[c]:>8.3f}" for c in classes) + f"  {item['top']}")
    return 0


# ------------------------------------------------------------------------------------------------- parser


def _suffix(text: str) -> str:
    """The default output name's suffix: it names a file beside the input, never a path elsewhere (empty is
    the input's own name, refused later unless --overwrite)."""
    if "/" in text or "\\" in text or text in (".", "..") or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a file-name suffix without path separators, got {text!r}")
    return text


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="default",
                   help="bundle file (.safetensors) or bundled model name (default: the shipped 'default')")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="inference backend (default auto: the best available, logged)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--graph", metavar="FILE",
                   help="onnxruntime/tensorrt: run this exported ONNX file or engine (default: export from the "
                        "bundle once and cache it)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache of exported graphs and engines (default $ADSRT_CACHE_DIR or ~/.cache/adsrt)")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input options")
    g.add_argument("--input-width", type=positive_int, help="cameras: requested capture width")
    g.add_argument("--input-height", type=positive_int, help="cameras: requested capture height")
    g.add_argument("--input-rate", type=finite_float(0, lo_open=True), help="cameras: requested frame rate")
    g.add_argument("--input-frames", type=positive_int, metavar="N", help="stop after N frames")
    g.add_argument("--input-retries", type=nonnegative_int, default=5, metavar="N",
                   help="network streams: reconnect attempts before stopping (default 5)")
    g.add_argument("--input-backoff", type=finite_float(0, 3600), default=0.5, metavar="S",
                   help="network streams: first reconnect delay in seconds, doubled per attempt (default 0.5)")
    add_max_pixels_option(g)


def add_runtime_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``restore`` and ``classify`` on the top-level subparsers."""
    p = sub.add_parser("restore", help="restore an image, folder, video, camera or stream",
                       description="Restore INPUT into OUTPUT. INPUT: image, folder, video file, file://..., "
                                   "v4l2:///dev/videoN or a camera index, rtsp://... OUTPUT: image (for an image), "
                                   "folder, or video file; omitted: next to the input with --output-suffix.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT", nargs="?")
    _add_model_options(p)
    p.add_argument("--mode", default="swap", choices=("swap", "branch", "local", "um"),
                   help="swap: fused in-place weight update; branch: constant weights, c as an input (same output "
                        "to fp32 rounding); local: a coefficient map from the classifier's windows, for frames whose "
                        "degradation varies across the image (torch and onnxruntime); um: the unified model only "
                        "(baseline)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="torch and tensorrt: fp16/bf16 on CUDA only; onnxruntime: fp32 or fp16 graphs, on the CPU too")
    p.add_argument("--tile", type=int_in(16), metavar="N", help="restore in N x N tiles (overlapping, blended)")
    p.add_argument("--tile-overlap", type=int_in(0, 4096), metavar="N", help="tile overlap in pixels (default 32)")
    p.add_argument("--memory-limit", dest="memory_limit_mb", type=finite_float(0), metavar="MB",
                   help="tile frames whose estimated memory (uint8 frame buffers + activations) exceeds MB "
                        "(default 4096; 0 = never)")
    p.add_argument("--force", metavar="DEGRADATION",
                   help="skip the classifier: apply this degradation's delta fully ('clean': the UM alone)")
    p.add_argument("--ema", type=finite_float(0, 1, hi_open=True), help="video: weight of the previous frame's c (default 0.8; 0 = none)")
    p.add_argument("--temperature", type=finite_float(1e-3, 1e3), help="classifier softmax temperature (default: the bundle's calibrated one)")
    p.add_argument("--scene-threshold", type=finite_float(0, lo_open=True),
                   help="video: thumbnail difference that restarts the smoothing of c (default 0.1)")
    p.add_argument("--cuda-graph", action="store_true", default=None,
                   help="CUDA: capture classify -> update -> restore as one graph per frame size")
    p.add_argument("--side-by-side", action="store_true", help="write original | restored side by side")
    p.add_argument("--stats", metavar="JSON", help="write per-frame c, probabilities and stage timings as JSON")
    _add_input_options(p)
    g = p.add_argument_group("output options")
    g.add_argument("--output-codec", metavar="FOURCC",
                   help="video codec (default by extension: .mp4 mp4v, .avi MJPG, .mkv FFV1)")
    g.add_argument("--output-rate", type=finite_float(0, 1000, lo_open=True), metavar="FPS", help="video frame rate (default: the input's, else 30)")
    g.add_argument("--output-ext", metavar="EXT", help="image format of folder outputs (default: the input's, else .png)")
    g.add_argument("--output-suffix", type=_suffix, default="_restored",
                   help="suffix of the default output name next to the input (default _restored)")
    g.add_argument("--overwrite", action="store_true",
                   help="allow OUTPUT to be the input (or inside the input folder): replaced once the output is complete")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("classify", help="degradation probabilities of an image, folder, video or stream")
    p.add_argument("input", metavar="INPUT")
    _add_model_options(p)
    p.add_argument("--temperature", type=finite_float(1e-3, 1e3), help="softmax temperature (default: the bundle's calibrated one)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_input_options(p)
    p.set_defaults(func=cmd_classify)

