"""The non-weight files of an export: config.json, generation_config.json, tokenizer + template.

The tokenizer files are copied byte for byte from the run's ``tokenizer/`` folder (the one training
used), so the exported chat template is the trained one; ``chat_template.jinja`` and
``tokenizer_config.json["chat_template"]`` must agree, or the export stops.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from data_recipes.tokenizer import BOS_ID, END_OF_TEXT_ID, EOT_ID, PAD_ID, VOCAB_SIZE

EOS_TOKEN_IDS = [EOT_ID, END_OF_TEXT_ID]
"""``<|eot_id|>`` first: it ends every assistant turn; ``<|end_of_text|>`` also stops (base-model habit)."""
SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
)


def template_fingerprint(text: str) -> str:
    """Same hash as ``data_recipes.tokenizer.template_fingerprint`` (dataset manifests store it)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_config(model_config: dict[str, Any], architecture: str) -> dict[str, Any]:
    """The model's config for inference: architecture named, BF16, Llama-3.1 special ids, cache on."""
    vocab = int(model_config.get("vocab_size") or 0)
    if vocab < VOCAB_SIZE:
        raise ValueError(
            f"the model's vocab_size is {vocab}, smaller than the Hermes tokenizer's {VOCAB_SIZE}; "
            "the exported folder could not embed every token id"
        )
    cfg = {k: v for k, v in model_config.items() if not k.startswith("_") and k != "quantization_config"}
    cfg["architectures"] = cfg.get("architectures") or [architecture]
    cfg["dtype"] = cfg["torch_dtype"] = "bfloat16"
    cfg.update(bos_token_id=BOS_ID, eos_token_id=list(EOS_TOKEN_IDS), pad_token_id=PAD_ID, use_cache=True)
    return dict(sorted(cfg.items()))


def write_config(folder: Path, model_config: dict[str, Any], architecture: str) -> dict[str, Any]:
    cfg = export_config(model_config, architecture)
    write_json(folder / "config.json", cfg)
    return cfg


def generation_config() -> dict[str, Any]:
    from transformers import GenerationConfig

    gen = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=list(EOS_TOKEN_IDS), pad_token_id=PAD_ID, **SAMPLING
    )
    gen.validate(strict=True)
    return gen.to_diff_dict()


def write_generation_config(folder: Path) -> dict[str, Any]:
    cfg = generation_config()
    write_json(folder / "generation_config.json", cfg)
    return cfg


def write_tokenizer(folder: Path, tokenizer_dir: Path | None) -> tuple[str, list[str]]:
    """Copy the training tokenizer (or write the repository's when none is known).

    Returns the chat template text and notes for the model card.
    """
    notes: list[str] = []
    if tokenizer_dir is None:
        from data_recipes.tokenizer import load_tokenizer, save_tokenizer

        staging = folder / ".tokenizer"
        save_tokenizer(load_tokenizer(), staging)
        tokenizer_dir = staging
        notes.append(
            "no training tokenizer was found next to the checkpoint; the repository's Hermes tokenizer was written"
        )
    copied = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if "tokenizer.json" not in copied or "tokenizer_config.json" not in copied:
        raise ValueError(
            f"{tokenizer_dir}: a tokenizer folder needs tokenizer.json and tokenizer_config.json"
        )
    for name in copied:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    if tokenizer_dir.name == ".tokenizer":
        shutil.rmtree(tokenizer_dir)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if not isinstance(template, str) or not template:
        raise ValueError(
            f"{tokenizer_dir}/tokenizer_config.json has no chat_template; it is not a Hermes tokenizer"
        )
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.read_text(encoding="utf-8") != template:
        raise ValueError(
            f"{tokenizer_dir}: chat_template.jinja and tokenizer_config.json's chat_template differ; "
            "fix the tokenizer folder (hermes-sft tokenizer writes both)"
        )
    if not jinja.is_file():
        jinja.write_text(template, encoding="utf-8")
    return template, notes
