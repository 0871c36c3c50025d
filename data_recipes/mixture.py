"""The mixture config (``hermes-sft data build CONFIG.yaml``) and seeded sampling by weight or count.

Example (``configs/data/sample.yaml`` is a complete one)::

    max_seq_len: 16384
    seed: 0
    history: last
    validation_fraction: 0.01
    sources:
      - path: data/reasoning.jsonl      # relative to this file's folder
        recipe: reasoning
        weight: 1.0                     # or `count: N`
      - hub: NousResearch/hermes-function-calling-v1
        split: train
        format: hermes_fc
        recipe: tool_use
      - path: data/long.jsonl
        recipe: length_control
        options: {budget: 12000}

Loaded with :func:`data_recipes.config_io.load_config`: unknown keys and wrong types fail at load time
with the file and the dotted key.

Mixing semantics. Each source first yields its *kept* samples (those that pass every check; dedup is
global, first occurrence wins in config order). ``weight`` scales that pool: ``1.0`` takes every kept
sample once, ``0.5`` a seeded random half, ``2.5`` every sample twice plus a seeded random half once
more. ``count: N`` asks for exactly ``N`` samples the same way (down- or up-sampling). The validation
split is drawn per source from the *distinct* selected samples, so a repeated sample never sits in
both splits: a validation sample appears once in validation and never in train.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data_recipes.config_io import load_config, to_dict
from data_recipes.formats.detect import FORMAT_NAMES
from data_recipes.recipes import RecipeName
from data_recipes.recipes.common import RecipeOptions

# The config field type, derived from the one list of formats (config_io checks a Literal's values).
FormatName = Literal[FORMAT_NAMES]  # type: ignore[valid-type]


@dataclass
class SourceConfig:
    """One input of the mixture: where the rows are, their format, and the recipe that checks them."""

    path: str | None = None
    """A local ``.jsonl`` / ``.json`` / ``.parquet`` file or a folder written by ``datasets``'
    ``save_to_disk``. Relative paths are resolved against the config file's folder."""
    hub: str | None = None
    """A Hugging Face Hub dataset name, read with streaming (needs network). Exactly one of
    ``path`` / ``hub``."""
    split: str = "train"
    """Split to read from a ``datasets`` folder or a Hub dataset."""
    subset: str | None = None
    """Hub dataset configuration name, if it has several."""
    format: FormatName = "auto"
    """``openai`` | ``sharegpt`` | ``hermes_fc`` | ``toolace`` | ``prompt_completion`` | ``alpaca``;
    ``auto`` detects it per row (see :mod:`data_recipes.formats.detect`)."""
    recipe: RecipeName | None = None
    """``reasoning`` | ``plain`` | ``tool_use`` | ``json_schema`` | ``length_control`` (required)."""
    weight: float | None = None
    """Multiplier on the source's kept samples (default 1.0); see the module docstring."""
    count: int | None = None
    """An absolute number of samples instead of ``weight``."""
    name: str | None = None
    """Label in the manifest and tables (default: the path or ``hub:NAME``)."""
    options: RecipeOptions = field(default_factory=RecipeOptions)
    """Per-recipe options (``thinking``, ``budget`` for length_control, ``require_call`` for tool_use)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ValueError("each source needs exactly one of 'path' or 'hub'")
        if self.recipe is None:
            raise ValueError(f"source {self.label}: 'recipe' is required")
        if self.weight is not None and self.count is not None:
            raise ValueError(f"source {self.label}: give 'weight' or 'count', not both")
        if self.weight is not None and self.weight < 0:
            raise ValueError(f"source {self.label}: weight must be >= 0, got {self.weight}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"source {self.label}: count must be >= 0, got {self.count}")
        if (self.recipe == "length_control") != (self.options.budget is not None):
            raise ValueError(
                f"source {self.label}: options.budget is required for length_control and only there"
            )

    @property
    def label(self) -> str:
        return self.name or self.path or f"hub:{self.hub}"


@dataclass
class MixtureConfig:
    """A data build: sources, how each is checked and mixed, and how samples are packed."""

    sources: list[SourceConfig]
    """The inputs, in priority order (dedup keeps the first occurrence)."""
    kind: Literal["sft", "preference"] = "sft"
    """``sft``: conversations, one sample each. ``preference``: chosen / rejected pairs for
    ``objective: dpo`` (see :mod:`data_recipes.preference`); a pair counts as one sample, is packed as
    one item, and both its sides must fit ``max_seq_len`` together."""
    max_seq_len: int = 16384
    """Packed row length in tokens; no sample is ever longer (see ``overlong``)."""
    seed: int = 0
    """Seeds sampling, the validation split and the row order; the same seed gives the same dataset."""
    history: Literal["last", "expand", "keep"] = "last"
    """Multi-turn policy: ``last`` trains the final reply with inference-time history, ``expand``
    makes one sample per reply, ``keep`` trains every reply with all reasoning kept."""
    validation_fraction: float = 0.01
    """Share of each source's distinct selected samples held out (packed separately)."""
    tokenizer: str | None = None
    """A local Llama-3.1 tokenizer folder or ``tokenizer.json``; default: built offline."""
    dedup: bool = True
    """Drop exact duplicates (same token ids and labels) after the first occurrence."""
    min_tokens: int = 1
    """Drop samples shorter than this (``too_short``)."""
    max_tokens: int | None = None
    """Drop samples longer than this (``too_long``); default and upper bound: ``max_seq_len``."""
    min_trained_tokens: int = 1
    """Drop samples with fewer trained tokens (``no_trained_tokens`` when zero, else ``too_few_trained``)."""
    overlong: Literal["drop", "error"] = "drop"
    """What to do with a sample longer than ``max_tokens``: drop and count it, or stop the build. A
    sample is never truncated."""
    check: bool | Literal["sample", "full"] = "sample"
    """``sample``: cheap invariants on every sample (single BOS, trained text == assistant body +
    ``<|eot_id|>``) and the full audit (whole-text ids and labels, decoded labels, inference-prompt
    prefix parity) on a deterministic ``check_rate`` share; ``full`` (or ``true``): the audit on every
    sample; ``false``: no checks. An audit failure stops the build (see ``data_recipes/checks.py``)."""
    check_rate: float = 0.01
    """Share of samples the ``check: sample`` audit covers (chosen by a hash of the rendered text)."""
    max_repeat: float = 1000.0
    """Largest multiple of a source's kept samples that its ``weight`` / ``count`` may ask for: a guard
    against a typo such as ``count: 100000000`` on a 60-row source writing without bound."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("'sources' must list at least one source")
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {self.max_seq_len}")
        if self.max_tokens is None:
            self.max_tokens = self.max_seq_len
        if not 1 <= self.max_tokens <= self.max_seq_len:
            raise ValueError(
                f"max_tokens must be in [1, max_seq_len={self.max_seq_len}], got {self.max_tokens}"
            )
        if not 0.0 < self.check_rate <= 1.0:
            raise ValueError(f"check_rate must be in (0, 1], got {self.check_rate}")
        if not self.max_repeat >= 1.0:
            raise ValueError(f"max_repeat must be at least 1, got {self.max_repeat}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        for src in self.sources:
            if src.weight is not None and src.weight > self.max_repeat:
                raise ValueError(
                    f"source {src.label}: weight {src.weight:g} is over max_repeat: {self.max_repeat:g} "
                    "(each kept sample that many times): lower it, or raise max_repeat if you mean it"
                )
        if self.kind == "preference":
            self._check_preference()
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"source labels must be unique (set 'name'): {dupes}")

    @property
    def check_mode(self) -> Literal["sample", "full", "off"]:
        if isinstance(self.check, bool):
            return "full" if self.check else "off"
        return self.check

    def _check_preference(self) -> None:
        if self.history == "expand":
            raise ValueError(
                "history: expand makes one sample per reply, but a preference pair compares one reply; "
                "use history: last (or keep) with kind: preference"
            )
        for src in self.sources:
            if src.format not in ("auto", "openai"):
                raise ValueError(
                    f"source {src.label}: kind: preference reads pairs of OpenAI-style messages "
                    f"(TRL's prompt/chosen/rejected or full chosen/rejected conversations); format "
                    f"{src.format!r} is for SFT conversations (use format: auto)"
                )
            if src.recipe == "length_control":
                raise ValueError(f"source {src.label}: recipe length_control is not supported for pairs")


def load_mixture(path: str | Path, overrides: list[str] | None = None) -> MixtureConfig:
    """Load and validate a mixture config; relative source paths become relative to its folder."""
    cfg = load_config(MixtureConfig, path, overrides)
    base = Path(path).resolve().parent
    for src in cfg.sources:
        if src.path is not None:
            src.name = src.name or src.path  # the label stays as written, whatever the checkout folder
            src.path = str((base / src.path).resolve())
    if cfg.tokenizer is not None and not Path(cfg.tokenizer).is_absolute():
        cfg.tokenizer = str((base / cfg.tokenizer).resolve())
    return cfg


def config_hash(cfg: MixtureConfig) -> str:
    """A hash of the config as written (resolved absolute paths left out, so the hash does not depend
    on where the repository is checked out; the manifest also hashes each source's content)."""
    data = to_dict(cfg)
    for src in data["sources"]:
        src.pop("path", None)
    if data.get("kind") == "sft":
        data.pop("kind")  # the default: SFT builds keep the hash they had before pairs existed
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_counts(
    pool_size: int, source: SourceConfig, rng: np.random.Generator, max_repeat: float = 1000.0
) -> np.ndarray:
    """How many times each of the pool's samples is taken (0, 1 or more), seeded.

    ``target = count`` or ``round(weight x pool_size)``: every sample ``target // pool_size`` times,
    plus a random subset of ``target % pool_size`` samples once more. A target over ``max_repeat`` x
    the pool, or a ``count`` from a source with no kept sample, is a ``ValueError`` with the numbers.
    """
    weight = 1.0 if source.weight is None else source.weight
    target = source.count if source.count is not None else round(weight * pool_size)
    asked = f"count: {source.count}" if source.count is not None else f"weight: {weight:g}"
    if target > max_repeat * max(pool_size, 1):
        raise ValueError(
            f"source {source.label}: {asked} asks for {target:,} samples from {pool_size:,} kept "
            f"({target / max(pool_size, 1):,.0f}x, over max_repeat: {max_repeat:g}): lower it, or raise "
            "max_repeat if you mean it"
        )
    if pool_size == 0:
        if target > 0:
            raise ValueError(f"source {source.label}: {asked} asks for {target:,} samples but none was kept")
        return np.zeros(0, dtype=np.int64)
    full, extra = divmod(target, pool_size)
    counts = np.full(pool_size, full, dtype=np.int64)
    counts[rng.choice(pool_size, size=extra, replace=False)] += 1
    return counts


def check_inputs(cfg: MixtureConfig, num_inputs: list[int]) -> None:
    """Checked right after reading, before any rendering: every source yielded rows (an empty file is
    an error naming it, not an empty dataset), and no ``count`` is over ``max_repeat`` x its rows."""
    for src, n in zip(cfg.sources, num_inputs, strict=True):
        if src.count is not None and n and src.count > cfg.max_repeat * n:  # kept <= read: refuse now
            raise ValueError(
                f"source {src.label}: count: {src.count} asks for {src.count:,} samples from {n:,} rows "
                f"({src.count / n:,.0f}x, over max_repeat: {cfg.max_repeat:g}): lower it, or raise "
                "max_repeat if you mean it"
            )
    empty = [src.label for src, n in zip(cfg.sources, num_inputs, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"source(s) with no rows: {', '.join(empty)} (empty file, split or folder): fix the file or "
            "remove the source from the mixture"
        )


def split_validation(
    selected: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) over ``selected`` distinct samples: ``round(fraction x n)``
    held out."""
    n_val = round(fraction * len(selected))
    val = np.zeros(len(selected), dtype=bool)
    val[rng.choice(len(selected), size=n_val, replace=False)] = True
    return ~val, val
