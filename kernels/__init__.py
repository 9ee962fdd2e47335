"""Fused ADS weight updates (Triton on GPU, vectorised torch on CPU).

The reference semantics are :func:`adsrt.ads.apply_ads`; kernels here must match it.
"""
