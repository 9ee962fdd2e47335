"""Fused ADS weight updates (Triton on GPU, vectorised torch on CPU).

- :mod:`adsrt.kernels.ads_layout`: :func:`build_ads_layout` moves a model's conv weights into one arena
  and builds the CSR table of a bundle's deltas (:class:`AdsLayout`), once;
- :mod:`adsrt.kernels.ads_update`: :func:`ads_update` (coefficients) and :func:`ads_update_from_logits`
  (classifier logits, softmax, EMA), one launch per frame, Triton or torch backend.

Its benchmark is :mod:`adsrt.bench.ads_update` (``adsrt bench ads-update``). The reference semantics are
:func:`adsrt.ads.apply_ads`; kernels here must match it. Submodules are not imported here, so
``import adsrt.kernels`` never imports Triton. Kernels use the core only.
"""
