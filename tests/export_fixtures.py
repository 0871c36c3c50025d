"""Small Llama-3.1-shaped models written as Hugging Face folders, for tests, benchmarks and demos.

They use the real vocabulary (128,256 ids, so the Hermes tokenizer fits) and random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def llama_config(**overrides: Any):
    from transformers import LlamaConfig

    values: dict[str, Any] = {
        "vocab_size": 128256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "pad_token_id": 128004,
        "tie_word_embeddings": False,
    }
    values.update(overrides)
    return LlamaConfig(**values)


def save_llama(
    folder: str | Path,
    config=None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "5GB",
    with_tokenizer: bool = True,
) -> Path:
    """A random ``LlamaForCausalLM`` saved with ``save_pretrained`` (+ the Hermes tokenizer)."""
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    config = config or llama_config()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    if with_tokenizer:
        from data_recipes.tokenizer import load_tokenizer, save_tokenizer

        tok_dir = folder / ".tok"
        save_tokenizer(load_tokenizer(), tok_dir)
        for f in tok_dir.iterdir():
            f.rename(folder / f.name)
        tok_dir.rmdir()
    return folder
