"""The weight formats of an export: BF16 (also the copy step FP8 uses for the layers it keeps) and FP8.


BF16 export: every tensor cast to bfloat16 (non-floating buffers keep their dtype), row chunk by chunk.

FP8 (W8A8 ``FP8_DYNAMIC``) export in the compressed-tensors format, streamed row block by row block.

Scheme (compressed-tensors preset ``FP8_DYNAMIC``, what llm-compressor's ``QuantizationModifier(
scheme="FP8_DYNAMIC", targets="Linear", ignore=["lm_head"])`` produces): every ``nn.Linear`` weight
except ``lm_head`` as ``float8_e4m3fn`` with one scale per output channel (``weight_scale`` [out, 1],
symmetric, static) and activations quantized per token at run time (nothing stored). Embeddings,
norms and ``lm_head`` stay BF16. The folder's ``config.json`` carries the ``quantization_config``
(``quant_method: compressed-tensors``, ``format: float-quantized``) that vLLM, SGLang and
transformers read.

The library does the numerics and the format: which modules are targeted is decided by
``compressed_tensors.utils.is_match`` on a meta-device model (the same matching its loaders use);
scales come from ``calculate_qparams`` on per-row min/max of the BF16 weight (= amax / 448, computed
in BF16 like llm-compressor's observer); the FP8 bytes from ``FloatQuantizationCompressor.compress``;
the config block from ``QuantizationConfig`` + ``ModelCompressor.update_config``. Per-output-channel
scales make every row independent, so rows are quantized in chunks and nothing larger than one chunk
is held.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from train.export.reading.source import build_config
from train.export.reading.tensors import DEFAULT_CHUNK_BYTES, LazyTensor, row_chunks
from train.export.writing.folder import Output
from train.safetensors_io import ShardedWriter, TensorSpec


def copy_rows(name: str, t: LazyTensor, dtype: torch.dtype, chunk_bytes: int, writer: ShardedWriter) -> None:
    """Stream ``t`` into ``writer`` as ``dtype`` (round to nearest even for fp32 → bf16)."""
    for start, stop in row_chunks(t, chunk_bytes):
        writer.write(name, t.rows(start, stop).to(dtype), start)


def out_dtype(t: LazyTensor) -> torch.dtype:
    return torch.bfloat16 if t.dtype.is_floating_point else t.dtype


def bf16_outputs(tensors: dict[str, LazyTensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Output]:
    outputs = []
    for name, t in tensors.items():
        dtype = out_dtype(t)
        spec = TensorSpec(name, tuple(t.shape), dtype)
        outputs.append(Output([spec], partial(copy_rows, name, t, dtype, chunk_bytes), name))
    return outputs


SCHEME = "FP8_DYNAMIC"
DEFAULT_IGNORE = ("lm_head",)
FP8_DIM_MULTIPLE = 16
"""vLLM's FP8 GEMMs (CUTLASS ``scaled_mm``) need both weight dimensions to be multiples of 16."""
_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Shards vLLM fuses into one layer (``qkv_proj``, ``gate_up_proj``): all quantized or none."""


@dataclass
class Fp8Plan:
    quantize: list[str]
    """Module names whose weight becomes FP8."""
    ignore: list[str]
    kept_bf16: list[str] = field(default_factory=list)


def scheme():
    """The FP8_DYNAMIC preset, with its on-disk format named (as llm-compressor's output has it)."""
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import preset_name_to_scheme

    s = preset_name_to_scheme(SCHEME, ["Linear"])
    s.format = CompressionFormat.float_quantized
    return s


def quantization_config(ignore: list[str]):
    from compressed_tensors.quantization import QuantizationConfig

    return QuantizationConfig(
        config_groups={"group_0": scheme()},
        ignore=list(ignore),
        format="float-quantized",
        quantization_status="compressed",
    )


def plan_fp8(config_dict: dict, tensors: dict[str, LazyTensor], extra_ignore: list[str] = ()) -> Fp8Plan:
    """Which modules to quantize; raises ValueError naming every layer that cannot be quantized."""
    from compressed_tensors.utils import is_match
    from transformers import AutoModelForCausalLM

    ignore = [*DEFAULT_IGNORE, *extra_ignore]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(config_dict))
    targets = [n for n, m in model.named_modules() if n and is_match(n, m, ["Linear"], ignore)]
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    problems = []
    for name in targets:
        shape = tensors[f"{name}.weight"].shape
        if len(shape) != 2 or any(d % FP8_DIM_MULTIPLE for d in shape):
            problems.append(f"{name} {list(shape)} (dimensions must be multiples of {FP8_DIM_MULTIPLE})")
        elif not tensors[f"{name}.weight"].dtype.is_floating_point:
            problems.append(f"{name} (weight is {tensors[f'{name}.weight'].dtype}, not floating point)")
    blocks = _decoder_matrices(model, linears)
    for name in blocks:
        if not any(_ignored(name, ign) for ign in ignore):
            problems.append(
                f"{name} (a {list(tensors[name].shape)} weight in a decoder block that is not an nn.Linear)"
            )
    problems += _split_fusions(targets, linears)
    if problems:
        raise ValueError(
            "cannot export FP8 (FP8_DYNAMIC): these layers cannot be quantized: "
            + "; ".join(problems[:12])
            + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
            + ". Keep them in BF16 with --fp8-ignore NAME (or re:REGEX), or export --format bf16"
        )
    kept = sorted(linears - set(targets))
    return Fp8Plan(targets, ignore, kept)


def _ignored(param_name: str, pattern: str) -> bool:
    module = param_name.rpartition(".")[0]
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None or re.match(pattern[3:], param_name) is not None
    return pattern in (module, param_name)


def _decoder_matrices(model: torch.nn.Module, linears: set[str]) -> list[str]:
    """≥2-D weights inside numbered blocks that are not Linear (e.g. fused MoE experts)."""
    out = []
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        if p.dim() >= 2 and module not in linears and re.search(r"\.\d+\.", name):
            out.append(name)
    return out


def _split_fusions(targets: list[str], linears: set[str]) -> list[str]:
    chosen = set(targets)
    out = []
    for group in _FUSED:
        parents = {n.rsplit(".", 1)[0] for n in linears if n.rsplit(".", 1)[-1] in group}
        for parent in sorted(parents):
            members = [f"{parent}.{g}" for g in group if f"{parent}.{g}" in linears]
            picked = [m for m in members if m in chosen]
            if picked and len(picked) != len(members):
                out.append(f"{parent}: {', '.join(members)} are fused by vLLM; quantize all of them or none")
    return out


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BF16 rows ``[n, in]`` → (float8_e4m3fn ``[n, in]``, BF16 scale ``[n, 1]``) via compressed-tensors.

    Raises ValueError if a row holds NaN or an infinity (min/max propagate them)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    s = _scheme_cached()
    w = weight.to(torch.bfloat16)
    lo, hi = torch.aminmax(w, dim=1, keepdim=True)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        bad = int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0, 0])
        raise ValueError(f"row {bad} has NaN or infinite values")
    scale, _ = calculate_qparams(lo, hi, s.weights)
    compressor = BaseCompressor.get_value_from_registry("float-quantized")
    packed = compressor.compress({"weight": w, "weight_scale": scale}, s)
    return packed["weight"], packed["weight_scale"]


_SCHEME = None


def _scheme_cached():
    global _SCHEME
    if _SCHEME is None:
        _SCHEME = scheme()
    return _SCHEME


def _quantize_module(name: str, t: LazyTensor, chunk_bytes: int, writer: ShardedWriter) -> None:
    for start, stop in row_chunks(t, chunk_bytes):
        try:
            q, scale = quantize_rows(t.rows(start, stop))
        except ValueError as err:
            raise ValueError(f"cannot quantize {name}: {err} (chunk from row {start})") from err
        writer.write(f"{name}.weight", q, start)
        writer.write(f"{name}.weight_scale", scale.to(torch.bfloat16), start)


def fp8_outputs(
    tensors: dict[str, LazyTensor], plan: Fp8Plan, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[Output]:
    quantized = {f"{m}.weight": m for m in plan.quantize}
    outputs = []
    for name, t in tensors.items():
        if name in quantized:
            module = quantized[name]
            specs = [
                TensorSpec(name, tuple(t.shape), torch.float8_e4m3fn),
                TensorSpec(f"{module}.weight_scale", (t.shape[0], 1), torch.bfloat16),
            ]
            outputs.append(Output(specs, partial(_quantize_module, module, t, chunk_bytes), name))
        else:
            dtype = torch.bfloat16 if t.dtype.is_floating_point else t.dtype
            spec = TensorSpec(name, tuple(t.shape), dtype)
            outputs.append(Output([spec], partial(copy_rows, name, t, dtype, chunk_bytes), name))
    return outputs


def write_quantization_config(folder: Path, plan: Fp8Plan) -> dict:
    """Add the ``quantization_config`` block to ``folder/config.json`` with compressed-tensors itself."""
    from compressed_tensors.compressors import ModelCompressor

    ModelCompressor(quantization_config=quantization_config(plan.ignore)).update_config(str(folder))
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))["quantization_config"]
