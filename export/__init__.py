"""Export: artifacts (manifest, atomic write, hashes), ONNX, TensorRT engines and plugins, quantization.
Populated by the export issues; `zoo.checkpoint.write_directory_atomically` is the atomic-write primitive."""
