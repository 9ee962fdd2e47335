"""The runtime: restore frames with a bundle on the torch, ONNX Runtime or TensorRT backend.

- :mod:`adsrt.runtime.restorer`: :func:`load` and :class:`Restorer` (decode -> classify -> c -> update ->
  restore -> encode, once, for every caller);
- :mod:`adsrt.runtime.backends`: the backend interface, the registry, ``auto``, the torch backend and
  CUDA-graph capture; :mod:`adsrt.runtime.onnxruntime_backend`, :mod:`adsrt.runtime.tensorrt_backend`;
- :mod:`adsrt.runtime.branch` (branch mode), :mod:`adsrt.runtime.refit` (the refit plan of swap graphs),
  :mod:`adsrt.runtime.tiling`, :mod:`adsrt.runtime.loop` (the frame loop over a source and a sink);
- :mod:`adsrt.runtime.artifacts`: the one door to the exporter, for graphs and engines.

The runtime uses the core and the kernels; it never imports training, export or CLI code.
"""
