"""What the benchmarks share (adsrt.bench.timing), and the committed results files' columns."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from adsrt.bench import ads_update, latency
from adsrt.bench.timing import BenchConfig, Machine, comma_list, percentiles, torch_threads
from adsrt.errors import AdsrtError

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_torch_threads_sets_and_restores_even_on_errors():
    before = torch.get_num_threads()
    with torch_threads(None) as n:
        assert n == before
    with pytest.raises(RuntimeError), torch_threads(1) as n:
        assert n == torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_percentiles_and_comma_list():
    assert percentiles(range(101)) == (20.0, 50.0, 80.0)
    assert percentiles([1.0, 2.0, 3.0], (50, 100)) == (2.0, 3.0)
    assert comma_list(" a, b,,c ") == ("a", "b", "c")


def test_machine_row_has_the_shared_columns():
    with torch_threads(1):
        machine = Machine.detect(torch.device("cpu"))
    assert machine.threads == 1 and machine.device.endswith("(1 threads)")
    row = machine.row()
    assert set(row) == {"date", "device", "cpu", "threads", "torch", "triton", "onnxruntime"}
    assert row["torch"] == torch.__version__ and row["date"].endswith("Z")
    assert machine.row(("date", "device", "p50_us")) == {"date": machine.date, "device": machine.device}


@pytest.mark.parametrize("bad", [{"backbone": "resnet"}, {"q": 0.0}, {"q": 0.6}, {"threads": 0}])
def test_config_refuses_bad_shared_values(bad):
    with pytest.raises(AdsrtError):
        BenchConfig(**bad)


@pytest.mark.parametrize("module, name", [(ads_update, "ads_update.csv"), (latency, "latency.csv")])
def test_committed_results_keep_their_columns(module, name):
    with (RESULTS / name).open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == list(module.CSV_COLUMNS)
    assert set(module.CSV_KEY) <= set(module.CSV_COLUMNS)
