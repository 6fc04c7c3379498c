from zoo.models.moe.config import SIZES, MoEConfig

__all__ = ["MoEConfig", "SIZES"]
