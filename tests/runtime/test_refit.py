"""Refit names and rows (:mod:`adsrt.runtime.refit`): one ``ads.*`` name per swapped layer, rows that fit
the UM's weights (the weights a tensorrt swap engine refits; ``bundle``: tests/conftest.py)."""

from __future__ import annotations

from adsrt.runtime.refit import refit_name, swap_rows


def test_refit_names_follow_swap_rows(bundle):
    rows = swap_rows(bundle)
    names = [r.name for r in rows.values()]
    assert names == [refit_name(layer) for layer in rows]
    assert all(n.startswith("ads.") and n.removeprefix("ads.") in bundle.um_state for n in names)
    assert len(set(names)) == len(names) > 0
    for layer, r in rows.items():
        full = bundle.um_state[layer].shape
        assert r.shape[:r.dim] == full[:r.dim] and r.shape[r.dim + 1:] == full[r.dim + 1:]
        assert r.shape[r.dim] == len(r.rows) <= full[r.dim]
