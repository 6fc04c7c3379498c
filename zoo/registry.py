"""The model registry: families, their named sizes, building and loading models by name or directory."""

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from zoo import checkpoint
from zoo.config import ModelConfig
from zoo.errors import CheckpointError, UnknownModelError, ZooError
from zoo.models.dmc import config as dmc_config
from zoo.models.dynpool import config as dynpool_config
from zoo.models.dynpool.model import DynPoolLM
from zoo.models.gpt import config as gpt_config
from zoo.models.gpt import convert as gpt_convert
from zoo.models.hourglass import config as hourglass_config
from zoo.models.hourglass.model import HourglassLM
from zoo.models.llama import config as llama_config
from zoo.models.llama import convert as llama_convert
from zoo.models.mamba2 import config as mamba2_config
from zoo.models.mamba2 import convert_hf as mamba2_convert
from zoo.models.mamba2 import convert_mamba_ssm as mamba_ssm_convert
from zoo.models.mamba2 import convert_nemotron_h as nemotron_h_convert
from zoo.models.mamba2.model import Mamba2LM
from zoo.models.moe import config as moe_config
from zoo.models.moe import convert as moe_convert
from zoo.models.revilm import config as revilm_config
from zoo.models.revilm.model import RevilmLM
from zoo.models.t5 import config as t5_config
from zoo.models.t5 import convert as t5_convert
from zoo.models.t5.model import T5LM
from zoo.nn.transformer import DecoderLM
from zoo.parallel import megatron


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type[ModelConfig]
    model_cls: type[torch.nn.Module]
    sizes: dict[str, ModelConfig]
    # checkpoint formats the family imports; each module has FORMAT (a description), accepts(raw_config),
    # config_from_hf(raw_config), state_dict_from_hf(tensors, config), and may have load_tensors(path)
    # (default: safetensors) and hf_config_from(config) (the HF twin's config, for tests and benchmarks)
    converters: tuple[ModuleType, ...] = ()

    @property
    def hf_twin_converter(self) -> ModuleType | None:
        return next((c for c in self.converters if hasattr(c, "hf_config_from")), None)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    clash = set(family.sizes) & set(model_names())
    if family.name in FAMILIES or clash:
        raise ValueError(f"family {family.name!r} or sizes {sorted(clash)} already registered")
    FAMILIES[family.name] = family


def model_names() -> list[str]:
    return [name for family in FAMILIES.values() for name in family.sizes]


register(Family("llama", llama_config.LlamaConfig, DecoderLM, llama_config.SIZES, (llama_convert,)))
register(Family("gpt", gpt_config.GPTConfig, DecoderLM, gpt_config.SIZES, (gpt_convert,)))
register(Family("dmc", dmc_config.DMCConfig, DecoderLM, dmc_config.SIZES))
register(Family("moe", moe_config.MoEConfig, DecoderLM, moe_config.SIZES, (moe_convert,)))
register(
    Family(
        "mamba2", mamba2_config.Mamba2Config, Mamba2LM, mamba2_config.MAMBA2_SIZES, (mamba2_convert, mamba_ssm_convert)
    )
)
register(
    Family("mamba2-hybrid", mamba2_config.HybridConfig, Mamba2LM, mamba2_config.HYBRID_SIZES, (nemotron_h_convert,))
)
register(Family("t5", t5_config.T5Config, T5LM, t5_config.SIZES, (t5_convert,)))
register(Family("hourglass", hourglass_config.HourglassConfig, HourglassLM, hourglass_config.SIZES))
register(Family("dynpool", dynpool_config.DynPoolConfig, DynPoolLM, dynpool_config.SIZES))
register(Family("revilm", revilm_config.RevilmConfig, RevilmLM, revilm_config.SIZES))


def get_config(name: str) -> ModelConfig:
    """The config of a named size (a fresh copy), or an error listing close names."""
    for family in FAMILIES.values():
        if name in family.sizes:
            return family.config_cls.from_dict(family.sizes[name].to_dict())
    names = model_names()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    close += [n for n in names if name and (n.startswith(name) or name in n) and n not in close]
    hint = f"; did you mean: {', '.join(close[:5])}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`zoo list` shows all {len(names)} names)")


def family_of(config: ModelConfig) -> Family:
    return FAMILIES[config.family]


def build_from_config(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """A model of `config` with random weights drawn from `seed` (the same seed gives the same weights)."""
    model = _allocate(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_parameters()
    return model.to(device=device, dtype=dtype).eval()


def _allocate(config: ModelConfig) -> torch.nn.Module:
    """The model of `config` with uninitialised CPU weights (built on meta: no wasted random init)."""
    with torch.device("meta"):
        model = family_of(config).model_cls(config)
    return model.to_empty(device="cpu")


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """zoo.build("llama-tiny"): the named config with seeded random weights, in eval mode."""
    return build_from_config(get_config(name), seed=seed, dtype=dtype, device=device)


def looks_like_path(name_or_path: str | os.PathLike) -> bool:
    """Whether a command-line argument names a path rather than a registered model (model names have no
    path separator and do not start with '.' or '~')."""
    text = str(name_or_path)
    return os.sep in text or text.startswith((".", "~")) or (os.altsep is not None and os.altsep in text)


def is_checkpoint_dir(name_or_path: str | os.PathLike) -> bool:
    """True for an existing directory; an error for a path that is missing or is a file (a model name is
    neither: False)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return True
    if path.exists():
        raise CheckpointError(f"{name_or_path} is a file; expected a checkpoint directory or a model name")
    if looks_like_path(name_or_path):
        raise CheckpointError(f"no such directory: {name_or_path}")
    return False


def load_config(path: str | os.PathLike) -> tuple[ModelConfig, ModuleType | None]:
    """(config, HF converter or None for a zoo-format directory) from `path`/config.json, or from the args
    inside a Megatron-Core checkpoint of any tensor-parallel degree (GPT, Llama-style or DMC; converter:
    zoo.parallel.megatron, which merges the mp_rank_* shards)."""
    if megatron.checkpoint_dir(path) is not None:
        return megatron.read_config(path), megatron
    raw = checkpoint.read_config_json(path)
    if "zoo_family" in raw:
        family = FAMILIES.get(raw["zoo_family"])
        if family is None:
            raise CheckpointError(f"{path}: unknown zoo_family {raw['zoo_family']!r}; known: {', '.join(FAMILIES)}")
        try:
            return family.config_cls.from_dict(raw["config"]), None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad {family.name} config: {exc}") from exc
    for family in FAMILIES.values():
        for converter in family.converters:
            if converter.accepts(raw):
                try:
                    return converter.config_from_hf(raw), converter
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(f"{path}: cannot read {converter.FORMAT} config: {exc}") from exc
    known = [c.FORMAT for f in FAMILIES.values() for c in f.converters]
    raise CheckpointError(
        f"{path}: config.json (model_type {raw.get('model_type')!r}) matches no format the zoo imports; "
        f"supported: {'; '.join(known)}; or a zoo checkpoint with 'zoo_family'"
    )


def from_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None, device="cpu"):
    """Load a checkpoint directory in a format some family imports (HF LlamaForCausalLM, GPT2LMHeadModel,
    Mamba2ForCausalLM, NemotronHForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM, mamba_ssm, Megatron-Core
    GPT / Llama / DMC at any tensor-parallel degree) or in the zoo format."""
    config, converter = load_config(path)
    load_tensors = getattr(converter, "load_tensors", checkpoint.load_safetensors_dir)
    tensors = load_tensors(path)
    unexpected: list[str] = []
    if converter is not None:
        tensors, unexpected = converter.state_dict_from_hf(tensors, config)
    checkpoint_dtype = next(iter(tensors.values())).dtype
    model = _allocate(config).to(checkpoint_dtype)
    checkpoint.load_state_dict_strict(model, tensors, str(path), unexpected)
    return model.to(device=device, dtype=dtype or checkpoint_dtype).eval()


def save_pretrained(model: torch.nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `model` as a zoo-format directory (config.json + model.safetensors), atomically. An existing
    zoo checkpoint at `path` is replaced only with `overwrite`; any other non-empty directory is refused."""
    config = model.config
    return checkpoint.save_zoo_checkpoint(path, config.family, config.to_dict(), model.state_dict(), overwrite)


def load_model(name_or_path: str, dtype: torch.dtype | None = None, seed: int = 0, device="cpu"):
    """A checkpoint directory if `name_or_path` is one, else a registered name with seeded random weights."""
    if is_checkpoint_dir(name_or_path):
        return from_pretrained(name_or_path, dtype=dtype, device=device)
    return build(name_or_path, seed=seed, dtype=dtype or torch.float32, device=device)


def list_models() -> list[dict]:
    rows = []
    for family in FAMILIES.values():
        for name, config in family.sizes.items():
            rows.append(
                dict(
                    name=name,
                    family=family.name,
                    params=config.num_params(),
                    layers=config.n_layers,
                    d_model=config.d_model,
                    context=config.max_seq_len,
                )
            )
    return rows


def build_hf_twin(config: ModelConfig, seed: int = 0):
    """The HF transformers model of `config`'s architecture (the family's HF twin, through its converter's
    hf_config_from), with HF's random init from `seed`: the oracle of parity tests and the peer of `zoo bench`."""
    from zoo.errors import require

    transformers = require("transformers", "hf")
    converter = family_of(config).hf_twin_converter
    if converter is None:
        raise ZooError(f"HF has no twin of the {config.family} family")
    kwargs = converter.hf_config_from(config)
    model_type = kwargs.pop("model_type")
    hf_config = transformers.AutoConfig.for_model(
        model_type, **kwargs, bos_token_id=None, eos_token_id=None, pad_token_id=None
    )
    auto = transformers.AutoModelForSeq2SeqLM if hf_config.is_encoder_decoder else transformers.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return auto.from_config(hf_config).eval()
