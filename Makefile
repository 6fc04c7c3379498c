# `make demo` and `make test` each create their own virtual environment (.venv) and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench gpu-check clean

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.core-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.onnx-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[onnx]'
	touch $@ $(VENV)/.core-installed

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.core-installed $(VENV)/.onnx-installed

# The main job on the embedded default (llama-small, seeded random weights, no downloads): generate on the
# eager and compiled backends, then export with fused ops, run the artifact on ONNX Runtime and compare.
demo: $(VENV)/.onnx-installed
	$(BIN)/zoo list
	$(BIN)/zoo info llama-small
	$(BIN)/zoo generate llama-small --prompt-ids 1,15,29,7,400 --prompt-ids 9,3 --max-new-tokens 24
	$(BIN)/zoo generate llama-small --prompt-ids 1,15,29,7,400 --prompt-ids 9,3 --max-new-tokens 24 --backend compiled
	$(BIN)/python -m runtime.demo --model llama-small --out bench-out/demo-artifact --max-new-tokens 24
	$(BIN)/zoo run bench-out/demo-artifact --prompt-ids 1,15,29,7,400 --prompt-ids 9,3 --max-new-tokens 24

# Two pytest-xdist workers (one torch thread each, tests/conftest.py), each file on one worker (its module
# fixtures built once); the exported tiny families are shared by the workers (tests/export/conftest.py).
# The slowest tests are listed at the end.
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.decode_vs_hf

# On a machine with an NVIDIA GPU: TensorRT, torch-tensorrt and onnxruntime-gpu, then export, run and time every
# family's tiny and small model on TensorRT, ONNX Runtime (CUDA) and torch (benchmarks/gpu_check.py). onnxruntime
# (CPU) and onnxruntime-gpu install the same package directory, so the CPU one goes first.
GPU_CHECK_OUT ?= bench-out/gpu-check
gpu-check: $(VENV)/.dev-installed
	$(BIN)/pip uninstall -q -y onnxruntime
	$(BIN)/pip install -q -e '.[tensorrt,gpu]'
	$(BIN)/python -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV)
