from zoo.models.mamba2.config import HYBRID_SIZES, MAMBA2_SIZES, HybridConfig, Mamba2Config

__all__ = ["HYBRID_SIZES", "MAMBA2_SIZES", "HybridConfig", "Mamba2Config"]
