"""The t5 family (T5 v1.1 / nanoT5): see README.md beside this file."""

from zoo.models.t5.config import SIZES, T5Config
from zoo.models.t5.model import T5LM

__all__ = ["SIZES", "T5Config", "T5LM"]
