"""Resolve what the user passed to ``export`` / ``verify --reference`` into one :class:`Source`.

Accepted (docs/architecture.md):

* a run directory (``RUN_DIR/checkpoints/latest`` → ``step-N/``),
* a checkpoint ``step-N/`` (a DeepSpeed save_dir plus ``hermes_state.json`` and ``model_config.json``),
* a raw DeepSpeed save_dir (``latest`` + ``<tag>/``) or its tag folder (needs ``--model-config``
  unless a ``model_config.json`` / ``config.json`` sits beside it),
* a Hugging Face folder: a BF16 export, a gathered 16-bit save (safetensors or ``pytorch_model.bin``),
  or a PEFT adapter folder (``adapter_config.json``; the base comes from it or ``--base-model``).

Completeness rules: a checkpoint inside a run must have ``hermes_state.json`` (the trainer writes it
last); temporary names are refused; every rank's files must be present (checked when opened).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STATES_RE = re.compile(r"zero_pp_rank_\d+_mp_rank_\d+_(model|optim)_states\.pt$")
_STEP_RE = re.compile(r"^step-\d+$")
BASE_KEYS = ("base_model", "base_model_path", "base_model_dir", "base_model_name_or_path")


@dataclass
class Source:
    path: Path
    kind: str  # "zero3" | "hf"
    model_config: dict[str, Any]
    config_origin: str
    run_dir: Path | None = None
    checkpoint_dir: Path | None = None
    ds_dir: Path | None = None
    hf_dir: Path | None = None
    tokenizer_dir: Path | None = None
    manifest: dict[str, Any] | None = None
    run_yaml: str | None = None
    hermes_state: dict[str, Any] | None = None
    adapter_config: dict[str, Any] | None = None
    base_model_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_lora(self) -> bool:
        return self.adapter_config is not None

    @property
    def step(self) -> int | None:
        state = self.hermes_state or {}
        return state.get("step") if isinstance(state.get("step"), int) else None

    def describe(self) -> str:
        where = self.checkpoint_dir or self.hf_dir or self.path
        what = {"zero3": "ZeRO-3 checkpoint", "hf": "Hugging Face folder"}[self.kind]
        lora = " (LoRA adapter)" if self.is_lora else ""
        return f"{what}{lora} {where}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _has_states(folder: Path) -> bool:
    return folder.is_dir() and any(_STATES_RE.search(p.name) for p in folder.iterdir())


def _is_hf_folder(folder: Path) -> bool:
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    weights += ("pytorch_model.bin.index.json", "adapter_model.safetensors")
    return any((folder / w).is_file() for w in weights)


def resolve_source(
    path: str | Path, model_config: str | Path | None = None, base_model: str | Path | None = None
) -> Source:
    """Classify ``path`` and gather everything an export needs from around it."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ValueError(f"{path}: no such file or directory")
    if not p.is_dir():
        raise ValueError(f"{path}: pass a run directory, a checkpoint folder or a model folder, not a file")
    if (p / "checkpoints").is_dir():
        src = _from_step(_latest_step(p / "checkpoints"), model_config)
    elif (p / "hermes_state.json").is_file() or (p / "latest").is_file() or _STEP_RE.match(p.name):
        src = _from_step(p, model_config)
    elif _has_states(p):
        src = _from_step(p.parent, model_config, tag=p.name)
    elif _is_hf_folder(p):
        src = _from_hf(p, model_config)
    else:
        raise ValueError(
            f"{path}: not a run directory, a checkpoint (step-N/), a DeepSpeed save folder or a Hugging Face "
            "model folder"
        )
    src.path = p
    if src.is_lora:
        src.base_model_dir = _base_dir(src, base_model)
    elif base_model is not None:
        src.notes.append("--base-model ignored: the source is not a LoRA adapter")
    return src


def _latest_step(ckpts: Path) -> Path:
    latest = ckpts / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        step = ckpts / name
        if name and step.is_dir():
            return step
    complete = sorted(
        d for d in ckpts.iterdir() if _STEP_RE.match(d.name) and (d / "hermes_state.json").is_file()
    )
    if not complete:
        raise ValueError(f"{ckpts}: no complete checkpoint (a step-N/ folder with hermes_state.json)")
    return complete[-1]


def _from_step(step: Path, model_config: str | Path | None, tag: str | None = None) -> Source:
    if re.search(r"\.(tmp|partial)", step.name):
        raise ValueError(f"{step}: a temporary (unfinished) checkpoint folder; use a complete step-N/ folder")
    in_run = step.parent.name == "checkpoints"
    state_file = step / "hermes_state.json"
    if (in_run or _STEP_RE.match(step.name)) and not state_file.is_file():
        raise ValueError(
            f"{step}: incomplete checkpoint (no hermes_state.json, which the trainer writes last); "
            "use an earlier checkpoint or let the save finish"
        )
    if tag is None:
        tag = _tag(step)
    ds_dir = step / tag
    if not _has_states(ds_dir):
        raise ValueError(f"{ds_dir}: no DeepSpeed *_states.pt files; the checkpoint is incomplete")
    run_dir = step.parent.parent if in_run else None
    config, origin = _model_config(model_config, [step / "model_config.json", step / "config.json"], run_dir)
    src = Source(step, "zero3", config, origin, run_dir=run_dir, checkpoint_dir=step, ds_dir=ds_dir)
    src.hermes_state = read_json(state_file) if state_file.is_file() else None
    if (step / "adapter_config.json").is_file():
        src.adapter_config = read_json(step / "adapter_config.json")
    if run_dir is not None:
        _run_files(src, run_dir)
    return src


def _tag(step: Path) -> str:
    latest = step / "latest"
    if latest.is_file():
        return latest.read_text(encoding="utf-8").strip()
    tags = [d.name for d in step.iterdir() if _has_states(d)]
    if len(tags) == 1:
        return tags[0]
    raise ValueError(
        f"{step}: no DeepSpeed 'latest' file and {len(tags)} tag folders; the save is incomplete"
    )


def _model_config(
    explicit: str | Path | None, candidates: list[Path], run_dir: Path | None
) -> tuple[dict, str]:
    if explicit is not None:
        path = Path(explicit)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"--model-config {explicit}: no such file")
        return read_json(path), str(path)
    if run_dir is not None:
        candidates = [*candidates, run_dir / "model_config.json"]
    for path in candidates:
        if path.is_file():
            return read_json(path), str(path)
    raise ValueError(
        f"no model config next to the checkpoint (looked for {', '.join(c.name for c in candidates)}); "
        "pass --model-config PATH (a config.json or model folder)"
    )


def _run_files(src: Source, run_dir: Path) -> None:
    if (run_dir / "tokenizer" / "tokenizer.json").is_file():
        src.tokenizer_dir = run_dir / "tokenizer"
    if (run_dir / "data_manifest.json").is_file():
        src.manifest = read_json(run_dir / "data_manifest.json")
    if (run_dir / "run.yaml").is_file():
        src.run_yaml = (run_dir / "run.yaml").read_text(encoding="utf-8")


def _from_hf(folder: Path, model_config: str | Path | None) -> Source:
    adapter = folder / "adapter_config.json"
    src_cfg = [folder / "config.json"]
    adapter_config = read_json(adapter) if adapter.is_file() else None
    if adapter_config is not None and model_config is None and not (folder / "config.json").is_file():
        base = adapter_config.get("base_model_name_or_path")
        if base and (Path(base) / "config.json").is_file():
            src_cfg = [Path(base) / "config.json"]
    config, origin = _model_config(model_config, src_cfg, None)
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "?")
        raise ValueError(
            f"{folder}: already quantized ({method}); export from the BF16 folder or the training checkpoint"
        )
    src = Source(folder, "hf", config, origin, hf_dir=folder, adapter_config=adapter_config)
    if (folder / "tokenizer.json").is_file():
        src.tokenizer_dir = folder
    for name, attr in (("data_manifest.json", "manifest"), ("hermes_state.json", "hermes_state")):
        if (folder / name).is_file():
            setattr(src, attr, read_json(folder / name))
    return src


def _base_dir(src: Source, explicit: str | Path | None) -> Path | None:
    """Where a LoRA source's base weights live, when the checkpoint does not hold them."""
    candidates: list[tuple[str, Any]] = [("--base-model", explicit)]
    for key in BASE_KEYS:
        candidates.append((f"hermes_state.json {key}", (src.hermes_state or {}).get(key)))
    if src.run_dir is not None:
        candidates.append(("RUN_DIR/base_model", src.run_dir / "base_model"))
    candidates.append(
        ("adapter_config base_model_name_or_path", (src.adapter_config or {}).get(BASE_KEYS[-1]))
    )
    for origin, value in candidates:
        if isinstance(value, str | Path) and value and Path(value).is_dir() and _is_hf_folder(Path(value)):
            return Path(value).resolve()
        if origin == "--base-model" and value is not None:
            raise ValueError(f"--base-model {value}: not a model folder with safetensors weights")
    return None
