from zoo.models.dmc.config import SIZES, DMCConfig

__all__ = ["DMCConfig", "SIZES"]
