"""Export: artifact directories (export.artifact: manifest, sha256, checks on load), ONNX (export.onnx, with
the zoo ops' ONNX face in export.onnx_ops); TensorRT engines and plugins and quantization are to come.
`zoo.checkpoint.write_directory_atomically` is the atomic-write primitive."""
