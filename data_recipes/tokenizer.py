"""The Hermes tokenizer: Llama-3.1 BPE + special tokens, with the Hermes tags on reserved ids.

Two ways in, one set of additions:

* no path: the Llama-3 tiktoken file shipped by the ``llama-models`` package is converted offline
  (it is under the Llama 3 Community License, so it is never committed; we build and cache it);
* a local path (e.g. a downloaded Llama-3.1-70B folder): its ``tokenizer.json`` is used.

Either way :func:`apply_hermes_additions` renames six reserved special tokens to the Hermes tags
(vocabulary stays 128,256, so no embedding is resized), marks them non-special so that a
``skip_special_tokens=True`` decode (what servers do) still shows them as text, removes the BOS
post-processor (the chat template writes ``<|begin_of_text|>`` itself, so no path adds a second one),
and installs the chat template.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerFast

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_RANKS = 128_000
VOCAB_SIZE = 128_256

BOS, EOT, EOS_TEXT, EOM, PAD = (
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<|finetune_right_pad_id|>",
)
BOS_ID, END_OF_TEXT_ID, PAD_ID, START_HEADER_ID, END_HEADER_ID, EOM_ID, EOT_ID = (
    128000,
    128001,
    128004,
    128006,
    128007,
    128008,
    128009,
)

# Reserved Llama-3.1 ids that carry the Hermes tags. 128011 is avoided (Llama-3.2 vision's <|image|>).
HERMES_TAGS: dict[str, int] = {
    "<think>": 128013,
    "</think>": 128014,
    "<tool_call>": 128015,
    "</tool_call>": 128016,
    "<tool_response>": 128017,
    "</tool_response>": 128018,
}
THINK_OPEN_ID, THINK_CLOSE_ID = HERMES_TAGS["<think>"], HERMES_TAGS["</think>"]

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
CACHE_VERSION = "1"  # bump when the additions change, to invalidate cached builds


def llama31_special_tokens() -> list[str]:
    """The 256 Llama-3.1 special-token names, in id order from 128000."""
    names = [
        BOS,
        EOS_TEXT,
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        PAD,
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        EOM,
        EOT,
        "<|python_tag|>",
    ]
    names += [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(names))]
    assert len(names) == 256
    return names


@lru_cache(maxsize=1)
def chat_template_text() -> str:
    """The chat template, byte for byte as shipped (read once per process)."""
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def control_tokens() -> list[str]:
    """Llama-3 control tokens that must never appear inside message text (the Hermes tags may)."""
    return [t for t in llama31_special_tokens() if t.startswith("<|")]


def _llama_models_tiktoken_file() -> Path:
    try:
        path = importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "The offline Llama-3 tokenizer needs the 'llama-models' package: pip install llama-models "
            "(or pass --tokenizer DIR with a local Llama-3.1 tokenizer)."
        ) from err
    return Path(str(path))


def build_base_tokenizer_json() -> dict:
    """Convert llama-models' tiktoken file into a tokenizers JSON with Llama-3.1 special names."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(_llama_models_tiktoken_file()),
        pattern=LLAMA3_PATTERN,
        extra_special_tokens=llama31_special_tokens(),
    )
    return json.loads(converter.converted().to_str())


def apply_hermes_additions(tok_json: dict, origin: str = "tokenizer.json") -> dict:
    """Rename reserved ids to Hermes tags, make them non-special, and drop the BOS post-processor.

    Raises ValueError if ``tok_json`` is not a Llama-3.1 tokenizer (wrong ids or names).
    """
    added = {entry["id"]: entry for entry in tok_json.get("added_tokens", [])}
    expected = llama31_special_tokens()
    for offset, name in enumerate(expected):
        entry = added.get(NUM_BPE_RANKS + offset)
        if entry is None:
            raise ValueError(f"{origin}: id {NUM_BPE_RANKS + offset} is missing; not a Llama-3.1 tokenizer")
        is_tag = entry["content"] in HERMES_TAGS and HERMES_TAGS[entry["content"]] == entry["id"]
        if entry["content"] != name and not is_tag and entry["id"] not in (BOS_ID + 5, BOS_ID + 11):
            # 128005/128011 carry other names in Llama-3.2+ files; everything else must match 3.1.
            raise ValueError(
                f"{origin}: id {entry['id']} is {entry['content']!r}, expected {name!r}; "
                "pass a Llama-3.1 tokenizer"
            )
    for tag, tag_id in HERMES_TAGS.items():
        entry = added[tag_id]
        entry.update(content=tag, special=False, normalized=False, single_word=False)
        entry.update(lstrip=False, rstrip=False)
    tok_json["post_processor"] = None
    return tok_json


def _wrap(tok_json: dict) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(tok_json)),
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=131_072,
    )
    tokenizer.chat_template = chat_template_text()
    return tokenizer


def _cache_root() -> Path:
    root = os.environ.get("HERMES_SFT_CACHE") or Path.home() / ".cache" / "hermes-sft"
    return Path(root) / "tokenizers"


def _cache_key(source_bytes: bytes) -> str:
    h = hashlib.sha256()
    for part in (source_bytes, chat_template_text().encode(), CACHE_VERSION.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def load_tokenizer(path: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """The Hermes tokenizer, from a local Llama-3.1 tokenizer folder or built offline (cached).

    A folder already written by :func:`save_tokenizer` (or an export) is loaded as is, after checking
    that its chat template equals ours.
    """
    if path is None:
        source = _llama_models_tiktoken_file()
        cache_dir = _cache_root() / _cache_key(source.read_bytes())
        if not (cache_dir / "tokenizer.json").exists():
            save_tokenizer(_wrap(apply_hermes_additions(build_base_tokenizer_json(), str(source))), cache_dir)
        return _load_saved(cache_dir)
    folder = Path(path)
    tok_file = folder / "tokenizer.json" if folder.is_dir() else folder
    if not tok_file.is_file():
        raise ValueError(f"{path}: no tokenizer.json found; pass a Llama-3.1 tokenizer folder or file")
    tok_json = json.loads(tok_file.read_text(encoding="utf-8"))
    return _wrap(apply_hermes_additions(tok_json, str(tok_file)))


def _load_saved(folder: Path) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    if tokenizer.chat_template != chat_template_text():
        raise ValueError(f"{folder}: its chat template differs from data_recipes/chat_template.jinja")
    return tokenizer


def write_tokenizer_files(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """tokenizer.json, tokenizer_config.json (with ``chat_template``) and chat_template.jinja into an
    existing ``folder``."""
    tokenizer.save_pretrained(str(folder))
    template = chat_template_text()
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(chat_template=template, add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike) -> Path:
    """Write the tokenizer files (:func:`write_tokenizer_files`) into a folder the caller owns (a
    cache entry, a run's ``tokenizer/``); user-given ``--out`` folders go through
    :mod:`data_recipes.outdir` instead.

    Written to a temporary folder and renamed, so a crash never leaves a half-written tokenizer.
    """
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(tokenizer, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A hash of the tokenizer's vocabulary, added tokens and template (stored in dataset manifests)."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    h.update((tokenizer.chat_template or "").encode())
    return h.hexdigest()[:16]


def template_fingerprint(text: str | None = None) -> str:
    """The hash dataset manifests, checkpoints and exports record for a template (default: ours)."""
    return hashlib.sha256((chat_template_text() if text is None else text).encode()).hexdigest()[:16]
