from zoo.models.llama.config import SIZES, LlamaConfig

__all__ = ["LlamaConfig", "SIZES"]
