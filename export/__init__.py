"""Export of adsrt bundles: ONNX (swap and branch modes), onnxsim, parity checks, TensorRT engines."""
