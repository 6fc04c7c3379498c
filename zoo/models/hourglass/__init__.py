"""The hourglass family (hierarchical transformer): see README.md beside this file."""

from zoo.models.hourglass.config import SIZES, HourglassConfig, parse_hierarchy
from zoo.models.hourglass.model import HourglassLM

__all__ = ["SIZES", "HourglassConfig", "HourglassLM", "parse_hierarchy"]
