"""Fused ADS weight updates (Triton on GPU, vectorised torch on CPU).

- :mod:`adsrt.kernels.ads_layout`: :func:`build_ads_layout` moves a model's conv weights into one arena
  and builds the CSR table of a bundle's deltas (:class:`AdsLayout`), once;
- :mod:`adsrt.kernels.ads_update`: :func:`ads_update` (coefficients in, one launch per frame), Triton or
  torch backend. The classifier softmax and the EMA of c run in the runtime before it
  (:func:`adsrt.runtime.backends.smooth_coefficients`).

Its benchmark is :mod:`adsrt.bench.ads_update` (``adsrt bench ads-update``). The reference semantics are
:func:`adsrt.ads.apply_ads`; kernels here must match it. Submodules are not imported here, so
``import adsrt.kernels`` never imports Triton. Kernels use the core only.
"""
