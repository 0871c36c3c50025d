"""What an export reads: the user's input resolved to a :class:`Source`, the model layout its config
implies, and its weights opened as lazy tensors.


Resolve what the user passed to ``export`` / ``verify --reference`` into one :class:`Source`.

Accepted (docs/architecture.md):

* a run directory (``RUN_DIR/checkpoints/latest`` → ``step-N/``),
* a checkpoint ``step-N/`` (a DeepSpeed save_dir plus ``hermes_state.json`` and ``model_config.json``),
* a raw DeepSpeed save_dir (``latest`` + ``<tag>/``) or its tag folder (needs ``--model-config``
  unless a ``model_config.json`` / ``config.json`` sits beside it),
* a Hugging Face folder: a BF16 export, a gathered 16-bit save (safetensors or ``pytorch_model.bin``),
  or a PEFT adapter folder (``adapter_config.json``; the base comes from it or ``--base-model``).

Completeness rules: a checkpoint inside a run must have ``hermes_state.json`` (the trainer writes it
last); temporary names are refused; every rank's files must be present (checked when opened).

What a model config says the weights must be: names, shapes, Linear layers (a meta-device model).

Building the model on the ``meta`` device allocates nothing, so a 70B config is checked in
milliseconds. Only architectures that ship with transformers are accepted (no remote code).

Open a :class:`~train.export.reading.source.Source`'s weights as lazy tensors under Hugging Face names.

For a full model the result is the model's tensors; for a LoRA source it is the base plus the adapter
(and the merged view, built on demand). Every path checks names and shapes against the model config
(a meta-device model) before any data is read, so a checkpoint from another config fails at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.export.reading.tensors import (
    LazyTensor,
    LoraAdapter,
    MmapTensor,
    merged_view,
    read_safetensors_folder,
    split_peft,
)
from train.export.reading.zero3 import open_zero3

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


@dataclass(frozen=True)
class ModelLayout:
    architecture: str
    tensors: dict[str, tuple[int, ...]]
    """Every tensor the saved model must hold (tied duplicates removed), in module order."""
    linear_weights: list[str]
    """``<module>.weight`` of every ``nn.Linear``."""
    decoder_prefix: str
    """Name prefix of the decoder blocks (``model.layers.``)."""


def build_config(config_dict: dict):
    from transformers import AutoConfig

    model_type = config_dict.get("model_type")
    if not model_type:
        raise ValueError("the model config has no model_type; pass the model's config.json")
    kwargs = {k: v for k, v in config_dict.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except ValueError as err:
        raise ValueError(f"model_type {model_type!r} is not a transformers architecture: {err}") from err


def model_layout(config_dict: dict) -> ModelLayout:
    from transformers import AutoModelForCausalLM

    config = build_config(config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():  # remove_duplicate=True drops tied aliases
        tensors[name] = tuple(p.shape)
    for name, b in model.named_buffers():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if leaf not in module._non_persistent_buffers_set:
            tensors[name] = tuple(b.shape)
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    linears = [n for n in linears if n in tensors]
    prefix = _decoder_prefix(list(tensors))
    return ModelLayout(type(model).__name__, tensors, linears, prefix)


def _decoder_prefix(names: list[str]) -> str:
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                return ".".join(parts[:i]) + "."
    return ""


def shape_mismatches(
    have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], limit: int = 6
) -> list[str]:
    """Human-readable differences between two name → shape maps (empty when they agree)."""
    out = []
    for name in [n for n in want if n not in have][:limit]:
        out.append(f"missing {name} {list(want[name])}")
    for name in [n for n in have if n not in want][:limit]:
        out.append(f"unexpected {name} {list(have[name])}")
    for name in [n for n in want if n in have and tuple(have[n]) != tuple(want[n])][:limit]:
        out.append(f"{name}: checkpoint {list(have[name])} vs config {list(want[name])}")
    return out


def check_weights_match(
    have: dict[str, tuple[int, ...]], layout: ModelLayout, what: str, config_src: str
) -> None:
    diffs = shape_mismatches(have, layout.tensors)
    if diffs:
        raise ValueError(
            f"{what} does not match the model config ({config_src}): "
            + "; ".join(diffs)
            + ". The checkpoint "
            "comes from a different model config; pass the right one with --model-config"
        )


_WRAPPERS = ("module.", "_orig_mod.")


@dataclass
class Weights:
    layout: ModelLayout
    base: dict[str, LazyTensor]
    """Full model tensors (HF names); for LoRA, the base model's."""
    adapter: LoraAdapter | None = None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    """The model config (Hugging Face dict) the layout was built from."""

    def model(self) -> dict[str, LazyTensor]:
        """The tensors of the model to export: the merged model for LoRA sources. In layout order."""
        tensors = merged_view(self.base, self.adapter) if self.adapter else self.base
        return {name: tensors[name] for name in self.layout.tensors}


def _unwrap(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.replace("._orig_mod.", ".")


def _shapes(tensors: dict[str, LazyTensor]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in tensors.items()}


def _restrict(tensors: dict[str, LazyTensor], layout: ModelLayout) -> dict[str, LazyTensor]:
    """Drop tied aliases the layout does not save (``lm_head.weight`` of a tied model)."""
    return {n: t for n, t in tensors.items() if n in layout.tensors}


def open_weights(src: Source) -> Weights:
    weights = _open(src)
    weights.config = src.model_config
    return weights


def _open(src: Source) -> Weights:
    layout = model_layout(src.model_config)
    if src.kind == "zero3":
        ckpt = open_zero3(src.ds_dir)
        tensors = {_unwrap(n): t for n, t in ckpt.tensors.items()}
        notes = [f"ZeRO-3 checkpoint, {ckpt.world_size} ranks, DeepSpeed {ckpt.ds_version}"]
        if src.is_lora:
            return _lora_weights(src, layout, tensors, adapter_file=False, notes=notes)
        tensors = _restrict(tensors, layout)
        check_weights_match(_shapes(tensors), layout, f"checkpoint {src.ds_dir}", src.config_origin)
        return Weights(layout, tensors, notes=notes)
    folder = src.hf_dir
    assert folder is not None
    if src.is_lora:
        tensors = read_safetensors_folder(folder, stem="adapter_model")
        return _lora_weights(src, layout, tensors, adapter_file=True, notes=[f"PEFT adapter folder {folder}"])
    tensors = _restrict(_read_hf(folder), layout)
    check_weights_match(_shapes(tensors), layout, f"model folder {folder}", src.config_origin)
    return Weights(layout, tensors, notes=[f"Hugging Face folder {folder}"])


def _lora_weights(
    src: Source, layout: ModelLayout, tensors: dict[str, LazyTensor], adapter_file: bool, notes: list[str]
) -> Weights:
    assert src.adapter_config is not None
    base, adapter = split_peft(tensors, src.adapter_config, adapter_file=adapter_file)
    base = _restrict(base, layout)
    if len(base) < len(layout.tensors):  # the base is not in the checkpoint (exclude_frozen_parameters)
        if src.base_model_dir is None:
            raise ValueError(
                "the LoRA checkpoint does not contain the base weights and no base model was found; "
                "pass --base-model PATH (the model folder the adapter was trained on)"
            )
        base = _restrict(_read_hf(src.base_model_dir), layout)
        notes.append(f"base weights from {src.base_model_dir}")
        what = f"base model {src.base_model_dir}"
    else:
        what = f"base weights in {src.ds_dir}"
    check_weights_match(_shapes(base), layout, what, src.config_origin)
    return Weights(layout, base, adapter, notes)


def _read_hf(folder: Path) -> dict[str, LazyTensor]:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return {_unwrap(n): t for n, t in read_safetensors_folder(folder).items()}
    return _read_torch_bins(folder)


def _read_torch_bins(folder: Path) -> dict[str, LazyTensor]:
    """A ``pytorch_model.bin`` (or an index of them), memory-mapped, tensors only (``weights_only``)."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "pytorch_model.bin").is_file():
        files = ["pytorch_model.bin"]
    else:
        raise ValueError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")
    out: dict[str, LazyTensor] = {}
    for file in files:
        try:
            state = torch.load(str(folder / file), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise ValueError(f"{folder / file}: unreadable weights file ({err})") from err
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                out[_unwrap(name)] = MmapTensor(tensor)
    return out
