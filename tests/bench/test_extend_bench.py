"""The extension benchmark's byte-for-byte check: the classifier may differ, nothing else."""

from __future__ import annotations

import torch

from adsrt.arch import ClassifierConfig
from adsrt.bench.extend import identical_tensors
from adsrt.bundle import save_bundle, synthetic_bundle


def test_identical_tensors_ignores_only_the_classifier(tmp_path):
    dc = ClassifierConfig(num_classes=3, input_size=32, width=4, depth=2)
    a = synthetic_bundle("nafnet-tiny", ("noise", "rain"), classifier=dc, seed=0)
    save_bundle(a, tmp_path / "a.safetensors")
    torch.manual_seed(5)
    b = synthetic_bundle("nafnet-tiny", ("noise", "rain"), classifier=dc, seed=0)
    b.classifier_state = {k: v + 1 for k, v in b.classifier_state.items()}  # another classifier
    save_bundle(b, tmp_path / "b.safetensors")
    same, compared = identical_tensors(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert same and compared == len(a.um_state) + 2 * sum(len(d) for d in a.deltas.values())
    name = next(iter(b.um_state))
    b.um_state[name] = b.um_state[name] + 1e-3
    save_bundle(b, tmp_path / "c.safetensors")
    assert identical_tensors(tmp_path / "a.safetensors", tmp_path / "c.safetensors") == (False, compared)
