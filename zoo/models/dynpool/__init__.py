"""The dynamic-pooling transformer family (docs/algorithms.md §6): see README.md beside this file."""

from zoo.models.dynpool.config import SIZES, DynPoolConfig
from zoo.models.dynpool.model import DynPoolLM

__all__ = ["SIZES", "DynPoolConfig", "DynPoolLM"]
