"""``adsrt train ...``: the training stages on the command line (parsers and thin command functions).

Every command builds the stage's dataclass config from its options and calls the stage function;
options left unset keep the config's default. Errors are :class:`adsrt.errors.AdsrtError`, which
``adsrt.cli.main`` turns into one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adsrt.cli.argtypes import positive_int, seed


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. noise,blur,rain")
    return items


def _options(p: argparse.ArgumentParser, kind: type, *flags: str) -> None:
    """Options that take one value of ``kind`` and need no help text beyond the stage's config docs
    (``--seed`` is always a seed: >= 0)."""
    for flag in flags:
        p.add_argument(flag, type=seed if flag == "--seed" else kind)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The options the user set (argparse default None means: keep the config's default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# The restorer trainer's options after --data/--out: (flag, add_argument keywords); TrainerConfig documents
# each field. Unset options keep the config's defaults (see _given).
_TRAINER_OPTIONS = (
    ("--steps", dict(type=int, help="optimizer steps (cosine schedule over them)")),
    ("--batch-size", dict(type=int, help="batch size per process")),
    ("--crop-size", dict(type=int, help="training crop size in px")),
    ("--lr", dict(type=float, help="peak learning rate (AdamW)")),
    ("--min-lr", dict(type=float, help="learning rate at the end of the cosine")),
    ("--warmup-steps", dict(type=int, help="linear warmup steps")),
    ("--weight-decay", dict(type=float)),
    ("--loss", dict(choices=("l1", "psnr"))),
    ("--ema-decay", dict(type=float, help="EMA decay of the weights that are validated and saved")),
    ("--grad-clip", dict(type=float, help="max gradient norm (0: off)")),
    ("--val-every", dict(type=int, help="validate every N steps")),
    ("--val-samples", dict(type=int, help="held-out crops for validation")),
    ("--ckpt-every", dict(type=int, help="checkpoint every N steps")),
    ("--log-every", dict(type=int, help="a row in OUT/log.csv every N steps")),
    ("--samples-per-epoch", dict(type=int)),
    ("--clean-fraction", dict(type=float, help="share of samples left clean (input = target), default 0")),
    ("--workers", dict(type=int, help="data loader workers per process (0: in the training process)")),
    ("--threads", dict(type=int, help="torch threads per process (default: its share of the cores)")),
    ("--snapshot-every", dict(type=int, help="keep the EMA weights every N steps under OUT/snapshots/")),
    ("--seed", dict(type=seed)),
)


def _add_trainer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="folder of clean training photos")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model.safetensors, checkpoint.safetensors, log.csv)")
    for flag, keywords in _TRAINER_OPTIONS:
        p.add_argument(flag, **keywords)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)")
    _add_compute_flags(p)
    _add_no_resume(p, "OUT/checkpoint.safetensors")


_COMPUTE_FLAGS = ("amp", "cpu_bf16", "channels_last", "compile")


def _add_no_resume(p: argparse.ArgumentParser, checkpoint: str) -> None:
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None,
                   help=f"start over even if {checkpoint} exists")


def _add_compute_flags(p: argparse.ArgumentParser) -> None:
    """How the restorer stages use the machine (adsrt.train.compute; `adsrt bench train` measures each)."""
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="no mixed precision on CUDA")
    p.add_argument("--cpu-bf16", action="store_true", default=None, help="bf16 autocast on a CPU")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="train in NCHW instead of channels_last")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (falls back to eager if compiling fails; default: "
                        "off for `train um/target`, the preset's choice for `train all`: on but for tiny)")


def _trainer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = tuple(flag[2:].replace("-", "_") for flag, _ in _TRAINER_OPTIONS)
    kw = _given(args, (*names, "device", *_COMPUTE_FLAGS, "resume"))
    return {**kw, "data": args.data, "out": args.out, "progress": not args.quiet}


def _print_val(metrics: dict[str, Any]) -> None:
    print(f"val PSNR {metrics['psnr']:.2f} dB (input {metrics['input_psnr']:.2f} dB) after step {metrics['step']}")
    for name, m in metrics["per_degradation"].items():
        print(f"  {name:<12} input {m['input']:6.2f}  output {m['output']:6.2f}  (n={m['n']})")


def _run_stage(train, config) -> int:
    """Run a restorer-training stage (``train(config)``), print its validation, always leave torch.distributed."""
    from adsrt.train import distributed

    try:
        metrics = train(config)
        if metrics:
            _print_val(metrics)
    finally:
        distributed.shutdown()
    return 0


def cmd_um(args: argparse.Namespace) -> int:
    from adsrt.train.um import UMConfig, train_um

    return _run_stage(train_um, UMConfig(**_trainer_kwargs(args), **_given(args, ("degradations", "backbone"))))


def cmd_target(args: argparse.Namespace) -> int:
    from adsrt.train.um import TargetConfig, train_target

    return _run_stage(train_target, TargetConfig(um=args.um, degradation=args.degradation, **_trainer_kwargs(args)))


def cmd_select(args: argparse.Namespace) -> int:
    from adsrt.train.select import SelectConfig, run_select

    kw = _given(args, ("data", "selector", "q", "granularity", "budget", "path_steps", "n_images", "batch_size", "crop_size",
                       "loss", "seed", "threads", "resume", "device"))
    header = run_select(SelectConfig(um=args.um, target=args.target, degradation=args.degradation, out=args.out, **kw))
    print(f"{header['degradation']}: {header['selector']} selected {header['selected_units']} of "
          f"{header['eligible_units']} {header['granularity']} units (q = {header['q']:g}) -> {args.out}")
    return 0


def cmd_deltas(args: argparse.Namespace) -> int:
    from adsrt.train.deltas import DeltasConfig, build_deltas

    kw = _given(args, ("data", "refine_steps", "batch_size", "crop_size", "lr", "loss", "val_samples", "ckpt_every",
                       "seed", "threads", "resume", "device"))
    header = build_deltas(DeltasConfig(um=args.um, target=args.target, masks=args.masks, out=args.out, **kw))
    print(f"{header['degradation']}: delta on {header['masked_units']} units, {header['delta_params']} values "
          f"(refined: {header['refined']}) -> {args.out}")
    if "val" in header:
        print("  val PSNR " + ", ".join(f"{k} {v:.2f}" for k, v in header["val"].items()))
    return 0


def cmd_classifier(args: argparse.Namespace) -> int:
    from adsrt.fileio import write_json
    from adsrt.train.classifier import ClassifierTrainConfig, format_confusion, train_classifier

    kw = _given(args, ("degradations", "input_size", "width", "depth", "convs", "crop_size", "steps", "batch_size",
                       "lr", "clean_fraction", "val_samples", "ckpt_every", "log_every", "workers", "seed", "threads",
                       "resume", "device", "nuisance", "dim_weather"))
    report = train_classifier(ClassifierTrainConfig(data=args.data, out=args.out, progress=not args.quiet, **kw))
    print(f"held-out accuracy {report['accuracy']:.3f} on {report['n']} crops")
    print(format_confusion(report))
    if args.json:
        write_json(args.json, report)
    return 0


def cmd_context(args: argparse.Namespace) -> int:
    from adsrt.fileio import write_json
    from adsrt.train.context import ContextTrainConfig, train_context

    kw = _given(args, ("context_width", "frames", "window_share", "steps", "batch_size", "lr", "val_frames",
                       "ckpt_every", "log_every", "workers", "seed", "threads", "resume", "device", "nuisance",
                       "dim_weather"))
    report = train_context(ContextTrainConfig(data=args.data, classifier=args.classifier, out=args.out,
                                              progress=not args.quiet, **kw))
    for part in ("frames", "windows"):
        if part in report:
            r = report[part]
            print(f"held-out {part}: accuracy {r['windows_only']['accuracy']:.3f} windows only, "
                  f"{r['with_context']['accuracy']:.3f} with context ({r['with_context']['n']} samples)")
    if args.json:
        write_json(args.json, report)
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    from adsrt.train import distributed
    from adsrt.train.pipeline import PipelineConfig, train_all

    kw = _given(args, ("degradations", "preset", "selector", "q", "granularity", "budget", "refine_steps", "seed", "device",
                       "threads", *_COMPUTE_FLAGS))
    try:
        metrics = train_all(PipelineConfig(data=args.data, out=args.out, work=args.work, progress=not args.quiet, **kw))
    finally:
        distributed.shutdown()
    if metrics:
        print(json.dumps(metrics, indent=2))
        print(f"bundle -> {args.out}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from adsrt.train import distributed
    from adsrt.train.extend import ExtendConfig, extend_bundle

    kw = _given(args, ("preset", "refine_steps", "seed", "device", "threads", *_COMPUTE_FLAGS))
    try:
        metrics = extend_bundle(ExtendConfig(bundle=args.bundle, degradation=args.degradation, data=args.data,
                                             work=args.work, out=args.out, progress=not args.quiet, **kw))
    finally:
        distributed.shutdown()
    if metrics:
        added = metrics["added"]
        m = metrics["per_degradation"][added["name"]]
        psnr = ", ".join(f"{k} {m[k]:.2f}" for k in ("input", "um", "ads", "im") if isinstance(m.get(k), (int, float)))
        print(f"added {added['degradation']}: delta on {added['params']['delta']} values"
              + (f" (val PSNR {psnr})" if psnr else "") + f", classifier +{added['params']['classifier_added']} "
              f"parameters (held-out accuracy {metrics['classifier_accuracy']:.3f} on all classes), "
              f"temperature {metrics['temperature_calibration']['temperature']:g}")
        print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in added["seconds"].items()))
        print(f"bundle -> {args.out}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from adsrt.train.data import split_holdout

    record = split_holdout(args.data, args.out, args.heldout, seed=args.seed)
    print(f"{len(record['train'])} photos for training -> {args.out}/train, "
          f"{len(record['heldout'])} held out -> {args.out}/heldout")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from adsrt.fileio import check_not_overwriting, write_json
    from adsrt.train.evaluate import EvalConfig, evaluate, format_report

    if args.json:  # checked before the evaluation's minutes, not after
        check_not_overwriting(args.json, {"bundle": args.bundle if Path(args.bundle).exists() else None})
    kw = _given(args, ("degradations", "seed", "label", "targets", "max_images", "device"))
    report = evaluate(EvalConfig(bundle=args.bundle, clean=args.clean, pairs=tuple(args.pairs) if args.pairs else None,
                                 protocol=args.protocol, progress=not args.quiet, **kw))
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``adsrt eval``."""
    p = subparsers.add_parser("eval", help="PSNR/SSIM of input, UM, ADS, oracle ADS and IM per degradation")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle file (.safetensors) or bundled model name (default)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--clean", metavar="DIR", help="clean photos, degraded on the fly with --degradations")
    data.add_argument("--pairs", nargs=2, metavar=("DEGRADED_DIR", "CLEAN_DIR"),
                      help="degraded images and their references, matched by file name stem")
    p.add_argument("--degradations", type=_csv,
                   help="with --clean: comma-separated name[:level], one row each (default noise:25,blur,rain); "
                        "a+b is a mixture row (noise:15+rain:2: top-1 ADS, blended oracle, best component IM)")
    p.add_argument("--seed", type=seed, help="with --clean: seed of the degradations (default 0)")
    p.add_argument("--label", metavar="NAME[:LEVEL]", help="with --pairs: their degradation (enables oracle, IM, DC accuracy)")
    p.add_argument("--protocol", choices=("adsrt", "peers"), default="adsrt",
                   help="adsrt: RGB in [0,1], Gaussian SSIM; peers: scikit-image conventions, centre crop to 16")
    p.add_argument("--targets", metavar="WORKDIR", help="training work folder: adds the individual models (IM)")
    p.add_argument("--max-images", type=int, help="only the first N images (quick looks)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_train_calibrate(args: argparse.Namespace) -> int:
    from adsrt.train.calibrate import CalibrateConfig, run_calibrate

    kw = _given(args, ("out", "images", "seed", "clean_recall", "prior_frames"))
    if args.no_clean_prior:
        kw["clean_recall"] = None
    if args.candidates:
        kw["candidates"] = tuple(float(t) for t in _csv(args.candidates))
    best, table = run_calibrate(CalibrateConfig(bundle=args.bundle, data=args.data, progress=not args.quiet, **kw))
    print("T        " + "  ".join(f"{d:>9}" for d in next(iter(table.values()))))
    for t, row in table.items():
        print(f"{t:<8} " + "  ".join(f"{v:>9.2f}" for v in row.values()) + ("   <- chosen" if float(t) == best else ""))
    if not args.no_clean_prior:
        from adsrt.bundle import load_bundle

        prior = load_bundle(args.out or args.bundle).metrics["clean_prior"]
        print(f"clean prior {prior['bias']:+g}: clean frames called clean {100 * prior['after']['clean']:.1f}% "
              f"(was {100 * prior['before']['clean']:.1f}%), degraded frames right {100 * prior['after']['degraded']:.1f}% "
              f"(was {100 * prior['before']['degraded']:.1f}%) on {prior['frames']} held-out training frames")
    print(f"temperature {best:g} -> {args.out or args.bundle}")
    return 0


def cmd_train_status(args: argparse.Namespace) -> int:
    from adsrt.fileio import write_json
    from adsrt.train.status import format_status, status_json, work_status

    stages = work_status(args.work)
    print(format_status(stages))
    if args.json:
        write_json(args.json, status_json(stages))
    return 0


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``adsrt train {um,target,select,deltas,classifier,context,calibrate,status,split,all,add}`` and ``adsrt eval``."""
    add_eval_command(subparsers)
    train = subparsers.add_parser("train", help="train the UM, targets, masks, deltas, classifier, or all into a bundle")
    sub = train.add_subparsers(dest="stage", metavar="STAGE", required=True)

    p = sub.add_parser("um", help="train the unified model on a mix of degradations (works under torchrun)")
    _add_trainer_options(p)
    p.add_argument("--degradations", type=_csv, help="comma-separated name[:level] (default noise,blur,rain)")
    p.add_argument("--backbone", help="nafnet-tiny, nafnet-small or nafnet-edge (default)")
    p.set_defaults(func=cmd_um)

    p = sub.add_parser("target", help="fine-tune a copy of the UM on one degradation (the IM upper bound)")
    _add_trainer_options(p)
    p.add_argument("--um", required=True, metavar="WEIGHTS", help="the UM's model.safetensors")
    p.add_argument("--degradation", required=True, metavar="NAME[:LEVEL]")
    p.set_defaults(func=cmd_target)

    p = sub.add_parser("select", help="score units (FAIG-SD or an ablation selector) and keep the top q")
    p.add_argument("--um", required=True, metavar="WEIGHTS")
    p.add_argument("--target", required=True, metavar="WEIGHTS", help="the target (IM) of the degradation")
    p.add_argument("--degradation", required=True, metavar="NAME[:LEVEL]")
    p.add_argument("--out", required=True, metavar="FILE", help="scores and masks (.safetensors)")
    p.add_argument("--data", metavar="DIR", help="clean photos (faig and encoder selectors)")
    p.add_argument("--selector", choices=("faig", "random", "encoder", "absdiff"))
    p.add_argument("--q", type=float, help="fraction of the eligible weights (or units), in (0, 0.5] (default 0.03)")
    p.add_argument("--granularity", choices=("kernel", "filter"))
    p.add_argument("--budget", choices=("units", "params"),
                   help="params: at most q of the eligible weight values (default); units: round(q * eligible units)")
    p.add_argument("--path-steps", type=int, help="N, the integration steps from target to UM (default 50)")
    p.add_argument("--n-images", type=int, help="degraded crops the gradients are taken on")
    _options(p, int, "--batch-size", "--crop-size")
    p.add_argument("--loss", choices=("l1", "psnr"))
    _options(p, int, "--seed", "--threads")
    _options(p, str, "--device")
    _add_no_resume(p, "OUT's .checkpoint.safetensors")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("deltas", help="sparse delta of one degradation on its masked units (optionally refined)")
    p.add_argument("--um", required=True, metavar="WEIGHTS")
    p.add_argument("--target", required=True, metavar="WEIGHTS")
    p.add_argument("--masks", required=True, metavar="FILE", help="output of `adsrt train select`")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--data", metavar="DIR", help="clean photos: validation PSNR, and needed by --refine-steps")
    p.add_argument("--refine-steps", type=int, help="train only the masked units for N steps (UM frozen)")
    _options(p, int, "--batch-size", "--crop-size")
    _options(p, float, "--lr")
    p.add_argument("--loss", choices=("l1", "psnr"))
    _options(p, int, "--val-samples", "--ckpt-every", "--seed", "--threads")
    _options(p, str, "--device")
    _add_no_resume(p, "OUT's .checkpoint.safetensors")
    p.set_defaults(func=cmd_deltas)

    p = sub.add_parser("classifier", help="train the degradation classifier (k + 1 classes, last = clean)")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--degradations", type=_csv)
    _options(p, int, "--input-size", "--width", "--depth", "--convs", "--crop-size", "--steps", "--batch-size")
    _options(p, float, "--lr", "--clean-fraction")
    p.add_argument("--no-nuisance", dest="nuisance", action="store_false", default=None,
                   help="train on the degradations alone, without camera processing on every sample")
    p.add_argument("--dim-weather", type=float, help="share of rain and snow samples at dusk or night (default 0.3)")
    _options(p, int, "--val-samples", "--ckpt-every", "--log-every", "--workers", "--seed", "--threads")
    _options(p, str, "--device")
    _add_no_resume(p, "OUT/checkpoint.safetensors")
    p.add_argument("--json", metavar="FILE", help="also write the report (accuracy, confusion matrix) here")
    p.set_defaults(func=cmd_classifier)

    p = sub.add_parser("context", help="train the classifier's context trunk on whole frames (windows frozen)")
    p.add_argument("--data", required=True, metavar="DIR", help="clean training photos (never the evaluation set)")
    p.add_argument("--classifier", required=True, metavar="FILE",
                   help="the window classifier's model.safetensors (adsrt train classifier)")
    p.add_argument("--out", required=True, metavar="DIR")
    _options(p, int, "--context-width", "--frames", "--steps", "--batch-size", "--val-frames")
    _options(p, float, "--lr", "--window-share", "--dim-weather")
    p.add_argument("--no-nuisance", dest="nuisance", action="store_false", default=None,
                   help="frames without camera processing (as the window classifier's --no-nuisance)")
    _options(p, int, "--ckpt-every", "--log-every", "--workers", "--seed", "--threads")
    _options(p, str, "--device")
    _add_no_resume(p, "OUT/checkpoint.safetensors")
    p.add_argument("--json", metavar="FILE", help="also write the report here")
    p.set_defaults(func=cmd_context)

    p = sub.add_parser("calibrate", help="set the classifier's clean prior and softmax temperature from training photos")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle file (rewritten unless --out) or bundled model name")
    p.add_argument("--data", required=True, metavar="DIR", help="training photos (never the evaluation set)")
    p.add_argument("--out", metavar="BUNDLE", help="write the calibrated bundle here instead")
    p.add_argument("--images", type=int, help="photos to use (default 16)")
    p.add_argument("--candidates", help="comma-separated temperatures to try (default 1,0.5,0.25,0.1)")
    p.add_argument("--clean-recall", type=float, metavar="R",
                   help="share of held-out clean training frames the clean prior makes the classifier call clean "
                        "(default 0.9)")
    p.add_argument("--prior-frames", type=int, metavar="N", help="held-out training frames for the prior (default 600)")
    p.add_argument("--no-clean-prior", action="store_true", help="set the temperature only, leave the prior as it is")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_train_calibrate)

    p = sub.add_parser("status", help="progress, quality so far and ETA of each stage of a `train all` work folder")
    p.add_argument("work", metavar="WORK", help="the --work folder of `adsrt train all`")
    p.add_argument("--json", metavar="FILE", help="also write the stages as JSON")
    p.set_defaults(func=cmd_train_status)

    p = sub.add_parser("split", help="hold photos out of a training folder, for a report on photos no stage has seen")
    p.add_argument("data", metavar="DATA", help="folder of clean photos")
    p.add_argument("--out", required=True, metavar="DIR", help="gets train/ and heldout/ (links) and split.json")
    p.add_argument("--heldout", required=True, type=positive_int, metavar="N", help="photos to hold out")
    p.add_argument("--seed", type=seed, default=0, help="which photos (default 0)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("all", help="run every stage into a work folder and write the bundle")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle file (.safetensors)")
    p.add_argument("--work", required=True, metavar="DIR", help="work folder (stages with outputs there are skipped)")
    p.add_argument("--degradations", type=_csv)
    p.add_argument("--preset", choices=("tiny", "small", "bundled", "bundled-v2", "default"))
    p.add_argument("--selector", choices=("faig", "random", "encoder", "absdiff"))
    p.add_argument("--q", type=float)
    p.add_argument("--granularity", choices=("kernel", "filter"))
    p.add_argument("--budget", choices=("units", "params"), help="selection budget (see `train select`)")
    _options(p, int, "--refine-steps", "--seed", "--threads")
    _options(p, str, "--device")
    _add_compute_flags(p)
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("add", help="extend a trained bundle by one degradation (UM and old deltas unchanged)")
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle file to extend (not modified)")
    p.add_argument("--degradation", required=True, metavar="NAME[:LEVEL]", help="the new degradation")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of clean training photos")
    p.add_argument("--work", required=True, metavar="DIR",
                   help="work folder of this extension (stages with outputs there are skipped)")
    p.add_argument("-o", "--out", required=True, metavar="NEW_BUNDLE", help="the new bundle file (.safetensors)")
    p.add_argument("--preset", choices=("tiny", "small", "bundled", "bundled-v2", "default"), default="small",
                   help="stage sizes and budgets (default small; the backbone and classifier shape are the bundle's)")
    _options(p, int, "--refine-steps", "--seed", "--threads")
    _options(p, str, "--device")
    _add_compute_flags(p)
    p.set_defaults(func=cmd_add)

