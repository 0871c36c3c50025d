"""DeepSpeed JSON: load a template from configs/deepspeed/ (or a path) and fill its "auto" values.

The train config is the single source of truth for batch sizes, optimizer and precision; a template
states only the ZeRO layout (stage 3, offload, buckets). A value written explicitly in the JSON must
agree with the train config, otherwise setup fails before any rank allocates memory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from train.config import BatchLayout, TrainConfig

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
AUTO = "auto"


def template_path(spec: str, base_dir: Path | None = None) -> Path:
    """``zero3`` → configs/deepspeed/zero3.json; a ``.json`` path is taken relative to the CWD, then to
    the train YAML's folder."""
    if not spec.endswith(".json"):
        path = CONFIG_ROOT / "deepspeed" / f"{spec}.json"
        if not path.is_file():
            names = sorted(p.stem for p in (CONFIG_ROOT / "deepspeed").glob("*.json"))
            raise ValueError(
                f"distributed.deepspeed={spec!r}: no such template; choose one of {names} or a .json"
            )
        return path
    for candidate in (Path(spec), (base_dir or Path.cwd()) / spec):
        if candidate.is_file():
            return candidate
    raise ValueError(f"distributed.deepspeed={spec}: file not found")


def load_template(spec: str, base_dir: Path | None = None) -> dict[str, Any]:
    path = template_path(spec, base_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def offloads_params(ds: dict[str, Any]) -> bool:
    device = ds.get("zero_optimization", {}).get("offload_param", {}).get("device", "none")
    return device not in (None, "none")


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    """Fill ``path`` if it is "auto" or absent; refuse an explicit value that disagrees."""
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    current = node.get(leaf, AUTO)
    if current == AUTO:
        node[leaf] = value
    elif current != value and not (
        isinstance(value, float)
        and isinstance(current, int | float)
        and abs(current - value) <= 1e-12 * max(1.0, abs(value))
    ):
        raise ValueError(
            f"DeepSpeed config sets {path}={current!r} but the train config implies {value!r}; "
            f'set it to "auto" in the JSON (the train config is the source of truth)'
        )


def _leftover_autos(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _leftover_autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if tree == AUTO else []


def build_ds_config(
    template: dict[str, Any], cfg: TrainConfig, layout: BatchLayout, hidden_size: int, bf16: bool
) -> dict[str, Any]:
    """A complete DeepSpeed config for this run (no "auto" left)."""
    ds = copy.deepcopy(template)
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        raise ValueError(
            f"DeepSpeed config: zero_optimization.stage is {zero.get('stage')!r}; this trainer is ZeRO-3"
        )
    if ds.get("fp16", {}).get("enabled") not in (None, False):
        raise ValueError("DeepSpeed config: fp16 is not supported (no loss scaling here); use bf16")
    optim = cfg.optim
    torch_adam = optim.torch_adam if optim.torch_adam is not None else not offloads_optimizer(ds)
    values: dict[str, Any] = {
        # DeepSpeed is not told about sequence parallelism (train/sequence_parallel.py): to it every rank is
        # data-parallel, so its batch bookkeeping counts each row once per SP rank.
        "train_batch_size": layout.global_batch_size * layout.sequence_parallel,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.grad_accum,
        "gradient_clipping": float(optim.grad_clip),
        "bf16.enabled": bool(bf16),
        "optimizer.type": "AdamW",
        "optimizer.params.lr": float(optim.lr),
        "optimizer.params.betas": [float(b) for b in optim.betas],
        "optimizer.params.eps": float(optim.eps),
        "optimizer.params.weight_decay": float(optim.weight_decay),
        "optimizer.params.torch_adam": bool(torch_adam),
        # DeepSpeed / HF rules of thumb, scaled by the hidden size.
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for path, value in values.items():
        _set(ds, path, value)
    if "scheduler" in ds:
        raise ValueError("DeepSpeed config: remove the 'scheduler' block; the schedule comes from schedule.*")
    leftover = _leftover_autos(ds)
    if leftover:
        raise ValueError(f"DeepSpeed config: no value known for 'auto' at {leftover}")
    return ds
