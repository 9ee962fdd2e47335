"""A bundle extended by one degradation (``adsrt train add``) against one trained on all of them from scratch.

The code of ``benchmarks/bench_extend.py`` (a thin wrapper around :func:`main`):

    adsrt eval SOURCE   --clean CBSD68 --degradations noise:25,...,clean --json source.json    (and EXTENDED, SCRATCH)
    .venv/bin/python benchmarks/bench_extend.py --source SOURCE --extended EXTENDED --scratch SCRATCH \
        --evals source.json extended.json scratch.json

Checks that the extended bundle's UM and the source's deltas are the source's tensors byte for byte, and
writes ``extend.csv`` (one row per bundle and evaluated degradation: UM, ADS and oracle PSNR, the
classifier's accuracy) and ``extend_cost.csv`` (per bundle: parameters, delta parameters added, seconds
of the extension's stages from its provenance) into --results.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from adsrt.bench.timing import Machine
from adsrt.bundle import load_bundle, summarize
from adsrt.fileio import upsert_csv

log = logging.getLogger(__name__)

COLUMNS = ("bundle", "role", "degradations", "row", "n", "input", "um", "ads", "ads_oracle", "dc_accuracy", "date",
           "device", "torch")
KEY = ("role", "row")
COST_COLUMNS = ("role", "bundle", "degradations", "um_params", "delta_params", "classifier_params",
                "identical_to_source", "tensors_compared", "stage_seconds", "date", "device", "torch")
COST_KEY = ("role",)


def identical_tensors(source: Path, extended: Path) -> tuple[bool, int]:
    """Whether every tensor of ``source`` except the classifier's (``dc/*``) is in ``extended`` with the same
    dtype, shape and bytes; and how many were compared."""
    a, b = load_file(str(source)), load_file(str(extended))
    names = [n for n in a if not n.startswith("dc/")]
    same = all(n in b and a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and torch.equal(a[n], b[n])
               for n in names)
    return same, len(names)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None, *, default_results: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, type=Path, help="the bundle that was extended")
    p.add_argument("--extended", required=True, type=Path, help="the output of adsrt train add")
    p.add_argument("--scratch", required=True, type=Path, help="a bundle trained on all degradations at the same budget")
    p.add_argument("--evals", nargs=3, type=Path, required=True, metavar=("SOURCE", "EXTENDED", "SCRATCH"),
                   help="adsrt eval --json reports of the three bundles (same data, degradations and seed)")
    p.add_argument("--results", type=Path, default=default_results)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    machine = Machine.detect(torch.device("cpu")).row(COLUMNS)
    same, compared = identical_tensors(args.source, args.extended)
    log.info("UM and old deltas identical: %s (%d tensors compared)", same, compared)
    rows, costs = [], []
    extended = load_bundle(args.extended)
    added = extended.provenance.get("added", {})
    for role, path, report_path in zip(("source", "extended", "scratch"), (args.source, args.extended, args.scratch),
                                       args.evals, strict=True):
        bundle = load_bundle(path)
        summary = summarize(bundle)
        report = json.loads(report_path.read_text())
        for row, r in {**report["results"], "mean": {**report["mean"], "n": ""}}.items():
            psnr = r["psnr"]
            rows.append({"bundle": str(path), "role": role, "degradations": "+".join(bundle.degradations), "row": row,
                         "n": str(r["n"]), **{m: _fmt(psnr.get(m)) for m in ("input", "um", "ads", "ads_oracle")},
                         "dc_accuracy": _fmt(r.get("dc_accuracy"), 3), **machine})
        costs.append({"role": role, "bundle": str(path), "degradations": "+".join(bundle.degradations),
                      "um_params": str(summary.um_params), "delta_params": json.dumps(summary.delta_params),
                      "classifier_params": str(summary.classifier_params),
                      "identical_to_source": str(same) if role == "extended" else "",
                      "tensors_compared": str(compared) if role == "extended" else "",
                      "stage_seconds": json.dumps(added.get("seconds", {})) if role == "extended" else "",
                      **{k: machine[k] for k in ("date", "device", "torch")}})
    upsert_csv(args.results / "extend.csv", rows, key=KEY, columns=COLUMNS)
    upsert_csv(args.results / "extend_cost.csv", costs, key=COST_KEY, columns=COST_COLUMNS)
    names = [k for k in json.loads(args.evals[2].read_text())["results"]]
    print("| row | " + " | ".join(f"{role} UM / ADS" for role in ("source", "extended", "scratch")) + " |")
    print("|---|---|---|---|")
    for name in [*names, "mean"]:
        cells = []
        for role in ("source", "extended", "scratch"):
            r = next((x for x in rows if x["role"] == role and x["row"] == name), None)
            cells.append("-" if r is None else f"{r['um'] or '-'} / {r['ads'] or '-'}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"UM and the source's deltas byte-identical in the extended bundle: {same} ({compared} tensors)")
    return 0
