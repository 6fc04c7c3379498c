"""Runtime: load a model (later, an exported artifact) and generate with an explicit cache."""

from runtime.engine import BACKENDS, Engine, GenerationResult

__all__ = ["BACKENDS", "Engine", "GenerationResult"]
