"""Export: artifact directories (export.artifact: manifest, sha256, checks on load), ONNX (export.onnx, with
the zoo ops' ONNX face in export.onnx_ops), TensorRT-ready graphs and engines (export.tensorrt) and
quantization with nvidia-modelopt (export.quantize). `zoo.checkpoint.write_directory_atomically` is the
atomic-write primitive."""
