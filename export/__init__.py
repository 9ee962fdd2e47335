"""Export of adsrt bundles and the engine backends of the runtime.

- :mod:`adsrt.export.onnx_export`: ONNX graphs (um, swap, branch, fused, classifier), onnxsim, checker;
- :mod:`adsrt.export.swap_split`: the refittable ``ads.<layer>`` convolutions of swap graphs;
- :mod:`adsrt.export.parity`: ONNX Runtime against the torch reference on real images;
- :mod:`adsrt.export.tensorrt_ops`: the TensorRT ONNX-parser compatibility check (runs without TensorRT);
- :mod:`adsrt.export.onnxruntime_backend`: the ``onnxruntime`` backend and its graph cache;
- :mod:`adsrt.export.tensorrt_engine`, :mod:`adsrt.export.engine_cache`, :mod:`adsrt.export.tensorrt_backend`:
  TensorRT engines (build, refit), their cache, and the ``tensorrt`` backend;
- :mod:`adsrt.export.cli_export`: ``adsrt export``.

Nothing here is imported by ``import adsrt``: onnx, onnxruntime and tensorrt load when used.
"""
