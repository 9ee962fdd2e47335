"""Benchmarks: shared timing, machine and version rows and CSV upserts (:mod:`adsrt.bench.timing`), the
fused-update benchmark (:mod:`adsrt.bench.ads_update`) and the frame-latency benchmark
(:mod:`adsrt.bench.latency`). The scripts in ``benchmarks/`` are thin wrappers around these."""
