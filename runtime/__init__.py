"""Runtime: load a model or an exported artifact and generate with an explicit cache, over a runner."""

from runtime.engine import BACKENDS, Engine, GenerationResult

__all__ = ["BACKENDS", "Engine", "GenerationResult"]
