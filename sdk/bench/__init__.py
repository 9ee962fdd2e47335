"""Benchmarks: what the scripts in ``benchmarks/`` run (they are thin wrappers), measured side by side.

- :mod:`adsrt.bench.timing`: shared config fields, torch thread pinning, the machine/versions row,
  percentiles, and the scripts' glue (CSV rows upserted with :func:`adsrt.fileio.upsert_csv`);
- :mod:`adsrt.bench.ads_update`: the fused ADS update against the naive per-layer update and
  ``load_state_dict`` (``adsrt bench ads-update``, ``results/ads_update.csv``);
- :mod:`adsrt.bench.latency`: frame latency per backend, mode and size (``adsrt bench latency``);
- :mod:`adsrt.bench.default_report`: the bundled default model's quality report (CBSD68, confusion,
  real photos, cost, peers); :mod:`adsrt.bench.quality`: the small-scale ablation of the paper's tables.
  Both score through the runtime (``adsrt.train.evaluate`` and the Restorer);
- :mod:`adsrt.bench.fuzz_bundle`: mutated bundles against the loader (the fuzz test and its long run);
  :mod:`adsrt.bench.memory`: peak RSS of ``adsrt restore`` on large photos against ``--memory-limit``.
"""
