from zoo.models.gpt.config import SIZES, GPTConfig

__all__ = ["GPTConfig", "SIZES"]
