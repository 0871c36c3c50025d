"""Models: Llama-3.1 presets, loading under ZeRO-3, the LoRA run's base weights, gathered safetensors writes.

Two ways in, both partitioned by ZeRO-3 as they are built (a live ``HfDeepSpeedConfig`` makes
transformers construct the model inside ``deepspeed.zero.Init``):

* ``model.path``: ``from_pretrained`` on a local folder. Rank 0 copies each tensor into its gathered
  layer and the layer is re-partitioned at once, so no rank holds the whole 70B;
* ``model.preset``: a config-built model with random weights (``tiny`` for tests and the demo, the real
  Llama-3.1 8B / 70B shapes for planning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from data_recipes.tokenizer import BOS_ID, END_OF_TEXT_ID, EOM_ID, EOT_ID, PAD_ID, VOCAB_SIZE
from train.attention import register_backends
from train.config import LoraConfig, ModelConfig
from train.safetensors_io import save_tensors, write_index
from train.tiled import enable_tiled_mlp

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_PRESETS: dict[str, dict[str, Any]] = {
    # 16.5M parameters, almost all in the 128,256-row embedding and head: real Llama-3.1 token ids.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131_072,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131_072,
    ),
    "llama-3.1-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=131_072,
    ),
}
# Keys of a config dict that do not change the function the weights compute.
_NON_ARCH_KEYS = {
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "_name_or_path",
    "architectures",
    "_attn_implementation_autoset",
    "attn_implementation",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
}


def preset_config(name: str, overrides: dict[str, Any] | None = None) -> LlamaConfig:
    """The LlamaConfig of a preset (Llama-3.1 vocabulary, RoPE scaling and special ids), with overrides."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(_PRESETS)}")
    fields = dict(
        vocab_size=VOCAB_SIZE,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters=dict(_LLAMA31_ROPE),
        bos_token_id=BOS_ID,
        eos_token_id=[END_OF_TEXT_ID, EOM_ID, EOT_ID],
        pad_token_id=PAD_ID,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
    )
    fields.update(_PRESETS[name])
    fields.update(overrides or {})
    try:
        config = LlamaConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.overrides: {err}") from err
    config.architectures = ["LlamaForCausalLM"]
    return config


# Shape fields compared between a preset and a checkpoint's config.json.
_SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


def load_model_config(cfg: ModelConfig, allow_missing_path: bool = False) -> PretrainedConfig:
    """The HF config of the model to train: ``model.path/config.json`` (checked against ``model.preset``
    when both are set) or the preset. ``allow_missing_path``: fall back to the preset (planning)."""
    if cfg.path is None or (allow_missing_path and cfg.preset and not Path(cfg.path).is_dir()):
        return preset_config(cfg.preset, cfg.overrides)
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model.path={cfg.path}: no config.json; pass a local Hugging Face checkpoint folder"
        )
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if cfg.preset:
        expected = preset_config(cfg.preset)
        diff = {
            k: (getattr(config, k, None), getattr(expected, k))
            for k in _SHAPE_KEYS
            if getattr(config, k, None) != getattr(expected, k)
        }
        if diff:
            raise ValueError(
                f"model.path={cfg.path} is not a {cfg.preset} checkpoint ({', '.join(f'{k}: {a} != {b}' for k, (a, b) in diff.items())}); "
                "fix model.path or model.preset"
            )
    return config


def resolve_dtype(cfg: ModelConfig, on_gpu: bool) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]


def build_model(
    cfg: ModelConfig, hf_config: PretrainedConfig, dtype: torch.dtype, attn: str
) -> torch.nn.Module:
    """Instantiate the model. Call with a live ``HfDeepSpeedConfig`` (ZeRO-3): parameters are partitioned
    as each layer is built, and ``from_pretrained`` loads into the partitions."""
    register_backends()
    if cfg.path:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path, config=hf_config, dtype=dtype, attn_implementation=attn, local_files_only=True
        )
    else:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False  # a KV cache turns off packed-sequence masking in transformers
    if cfg.tiled_mlp:
        enable_tiled_mlp(model, LlamaMLP)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors"))


def replace_model_source(model_cfg: ModelConfig, path: Path) -> ModelConfig:
    """The same model settings, loading weights from ``path`` instead of building a preset."""
    return dataclasses.replace(model_cfg, preset=None, path=str(path), overrides={})


def write_base_model(
    model: torch.nn.Module, hf_config, out: Path, rank: int, barrier: Callable[[], None]
) -> None:
    """RUN_DIR/base_model/: the initial weights of a config-built model (safetensors + config.json),
    so a LoRA run's frozen base can be restored on resume and merged at export (collective)."""
    tmp = out.with_name(out.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write_safetensors(gather_to_rank0(model.named_parameters(), rank), tmp, rank)
    if rank == 0:
        hf_config.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    barrier()


def check_model_fits_data(hf_config: PretrainedConfig, num_ids: int, rows_max: int) -> None:
    """The model must embed every tokenizer id and position every token of the longest packed row."""
    vocab = hf_config.vocab_size
    if vocab < num_ids:
        raise ValueError(f"the model's vocab_size {vocab} is smaller than the tokenizer's {num_ids} ids")
    positions = getattr(hf_config, "max_position_embeddings", rows_max)
    if rows_max > positions:
        raise ValueError(f"rows are up to {rows_max} tokens but the model supports {positions} positions")


def architecture_dict(hf_config: PretrainedConfig) -> dict[str, Any]:
    return {k: v for k, v in sorted(hf_config.to_dict().items()) if k not in _NON_ARCH_KEYS}


def model_fingerprint(hf_config: PretrainedConfig, lora: LoraConfig) -> str:
    """Identity of what is trained (architecture + LoRA shape); a checkpoint resumes only into the same."""
    payload: dict[str, Any] = {"architecture": architecture_dict(hf_config)}
    if lora.enabled:
        payload["lora"] = {"r": lora.r, "alpha": lora.alpha, "target_modules": sorted(lora.target_modules)}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def meta_model(hf_config: PretrainedConfig) -> torch.nn.Module:
    """The model on the meta device: exact shapes and counts, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def param_counts(hf_config: PretrainedConfig) -> dict[str, int]:
    """Total / embedding / lm_head / largest-tensor parameter counts, from a meta-device instance."""
    model = meta_model(hf_config)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    head_n = 0 if head is None or hf_config.tie_word_embeddings else head.weight.numel()
    largest = max(p.numel() for p in model.parameters())
    return {"total": total, "embedding": emb, "lm_head": head_n, "largest_tensor": largest}


def count_trainable(model: torch.nn.Module) -> int:
    """Trainable parameters of a (possibly ZeRO-3 partitioned) model: full sizes, not this rank's share."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def gather_to_rank0(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], rank: int, dtype: torch.dtype | None = None
) -> Iterable[tuple[str, torch.Tensor | None]]:
    """Yield ``(name, full CPU tensor)`` on rank 0 (None elsewhere), gathering one ZeRO-3 parameter at a
    time. Every rank must iterate to the end: each gather is a collective."""
    import deepspeed

    for name, p in named_params:
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            value = p.detach().to("cpu", dtype=dtype or p.dtype, copy=True) if rank == 0 else None
        yield name, value


def write_safetensors(
    tensors: Iterable[tuple[str, torch.Tensor | None]],
    out_dir: Path,
    rank: int,
    stem: str = "model",
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Write tensors as ``{stem}.safetensors`` (or shards + ``{stem}.safetensors.index.json``) on rank 0,
    streaming so rank 0 holds at most one shard. The shapes are known only as the gathers arrive, so
    shards are cut here and each is written by the one safetensors writer (``train.safetensors_io``)."""
    shard: dict[str, torch.Tensor] = {}
    written: list[str] = []
    size = total = 0
    index: dict[str, int] = {}

    def flush() -> None:
        nonlocal shard, size
        path = out_dir / f"{stem}-tmp-{len(written):05d}.safetensors"
        save_tensors(path, shard)
        written.append(path.name)
        shard, size = {}, 0

    for name, tensor in tensors:
        if rank != 0 or tensor is None:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor.contiguous()
        index[name] = len(written)
        size += nbytes
        total += nbytes
    if rank != 0:
        return
    flush()
    if len(written) == 1:
        os.replace(out_dir / written[0], out_dir / f"{stem}.safetensors")
        return
    names = [f"{stem}-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
    for old, new in zip(written, names, strict=True):
        os.replace(out_dir / old, out_dir / new)
    write_index(out_dir, stem, {k: names[i] for k, i in index.items()}, total)
