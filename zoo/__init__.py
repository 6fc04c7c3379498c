"""graph-zoo: efficient LLM architectures in readable PyTorch, and the compiler path to fast inference.

    import zoo
    model = zoo.build("llama-tiny")            # named config, seeded random weights
    model = zoo.from_pretrained("path/to/dir")  # HF-format or zoo-format checkpoint directory
    logits = model(input_ids)                   # (batch, length, vocab)

Importing zoo imports torch only; triton, onnx, onnxruntime, transformers, modelopt and tensorrt are
imported where they are used.
"""

from zoo.errors import CheckpointError, ContextLengthError, UnknownModelError, ZooError
from zoo.registry import build, from_pretrained, get_config, list_models, load_model, model_names, save_pretrained

__all__ = [
    "build",
    "from_pretrained",
    "get_config",
    "list_models",
    "load_model",
    "model_names",
    "save_pretrained",
    "CheckpointError",
    "ContextLengthError",
    "UnknownModelError",
    "ZooError",
]
