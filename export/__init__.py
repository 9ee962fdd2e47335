"""Export: writes the artifacts the runtime loads, and nothing else.

- :mod:`adsrt.export.onnx_export`: ONNX graphs (um, swap, branch, fused, classifier), onnxsim, checker;
- :mod:`adsrt.export.swap_split`: the refittable ``ads.<layer>`` convolutions of swap graphs;
- :mod:`adsrt.export.parity`: ONNX Runtime against the torch reference on real images;
- :mod:`adsrt.export.tensorrt_ops`: the TensorRT ONNX-parser compatibility check (runs without TensorRT);
- :mod:`adsrt.export.tensorrt_build`: TensorRT engines from the graphs (builder flags, refit names);
- :mod:`adsrt.export.graph_cache`, :mod:`adsrt.export.engine_cache`: the caches of graphs and engines;
- :mod:`adsrt.export.artifacts`: the provider behind the runtime's one door
  (:func:`adsrt.runtime.artifacts.exported`).

The backends that run these artifacts are the runtime's (:mod:`adsrt.runtime`). Nothing here is
imported by ``import adsrt``: onnx, onnxsim and tensorrt load when used.
"""
