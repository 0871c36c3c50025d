"""Everything in an export folder around the weights.


Output folders that are either complete or absent, and the streamed tensor-writing loop.

:func:`atomic_output_dir` hands out a hidden temporary folder next to the target
(``.NAME.tmp-PID``); only when everything inside was written (and fsynced) is it renamed to the
target. Any failure — a full disk, a bad layer, Ctrl-C — removes the temporary folder, so no
half-written folder ever carries the target's name. An existing non-empty target is refused unless
``overwrite`` (then it is replaced only after the new folder is complete).

:func:`write_outputs` plans the shards for a list of :class:`Output` s, checks the free space, then
runs each output's producer, which pushes row chunks into the :class:`ShardedWriter`.

The non-weight files of an export: config.json, generation_config.json, tokenizer + template.

The tokenizer files are copied byte for byte from the run's ``tokenizer/`` folder (the one training
used), so the exported chat template is the trained one; ``chat_template.jinja`` and
``tokenizer_config.json["chat_template"]`` must agree, or the export stops.

The model card (``README.md``) of an export: what it is, how to serve it, what it was trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from data_recipes.tokenizer import (
    BOS_ID,
    END_OF_TEXT_ID,
    EOT_ID,
    PAD_ID,
    VOCAB_SIZE,
    load_tokenizer,
    save_tokenizer,
)
from train.fileio import fsync_dir, write_json
from train.safetensors_io import ShardedWriter, TensorSpec


@dataclass
class Output:
    """One or more planned tensors and the function that fills them."""

    specs: list[TensorSpec]
    produce: Callable[[ShardedWriter], None]
    label: str = ""


def check_target(out: Path, overwrite: bool, protect: list[Path] = ()) -> None:
    out = out.resolve()
    for p in protect:
        p = p.resolve()
        if p == out or p.is_relative_to(out):
            raise ValueError(f"--out {out} would replace the source {p}; choose another output folder")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ValueError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def _clean_stale(out: Path) -> None:
    """Remove temporary folders of earlier exports to ``out`` whose process is gone."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    out = Path(out).resolve()
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need * 1.02 + (64 << 20):
        raise ValueError(
            f"not enough disk space in {folder}: the export needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def write_outputs(
    folder: Path,
    outputs: list[Output],
    max_shard_bytes: int,
    progress: bool = True,
    stem: str = "model",
    single_file: str | None = None,
) -> ShardedWriter:
    specs = [s for o in outputs for s in o.specs]
    writer = ShardedWriter(folder, specs, max_shard_bytes, stem=stem, single_file=single_file)
    check_free_space(folder, writer.file_bytes)
    bar = tqdm(total=writer.total_bytes, unit="B", unit_scale=True, desc="export", disable=not progress)
    try:
        for output in outputs:
            output.produce(writer)
            bar.update(sum(s.nbytes for s in output.specs))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer


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
    write_json(folder / "config.json", cfg, sort_keys=False)
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
    write_json(folder / "generation_config.json", cfg, sort_keys=False)
    return cfg


def write_tokenizer(folder: Path, tokenizer_dir: Path | None) -> tuple[str, list[str]]:
    """Copy the training tokenizer (or write the repository's when none is known).

    Returns the chat template text and notes for the model card.
    """
    notes: list[str] = []
    if tokenizer_dir is None:
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


@dataclass
class CardInfo:
    name: str
    fmt: str  # "bf16" | "fp8" | "lora-adapter"
    source: str
    step: int | None = None
    base_model: str | None = None
    manifest: dict[str, Any] | None = None
    run_yaml: str | None = None
    num_params: int = 0
    total_bytes: int = 0
    num_shards: int = 0
    fp8_ignore: list[str] = field(default_factory=list)
    kept_bf16: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verify_rows: list[tuple[str, str, str]] = field(default_factory=list)


def _front_matter(info: CardInfo) -> str:
    meta: dict[str, Any] = {
        "library_name": "peft" if info.fmt == "lora-adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["llama", "llama-3.1", "hermes", "sft", "tool-use", "reasoning"],
    }
    if info.fmt == "fp8":
        meta["tags"] += ["fp8", "compressed-tensors"]
    if info.base_model and not info.base_model.startswith("/"):  # a hub id, not a local folder
        meta["base_model"] = info.base_model
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _summary(info: CardInfo) -> list[str]:
    kind = {
        "bf16": "BF16 weights",
        "fp8": "FP8 weights (W8A8, `FP8_DYNAMIC`, compressed-tensors `float-quantized`)",
        "lora-adapter": "a LoRA adapter (PEFT layout)",
    }[info.fmt]
    lines = [
        f"# {info.name}",
        "",
        f"Hermes-4-style supervised fine-tune of a Llama-3.1 model, exported by `hermes-sft export` as {kind}.",
        "",
        f"- Source: `{info.source}`" + (f" (step {info.step})" if info.step is not None else ""),
    ]
    if info.num_params:
        lines.append(
            f"- Parameters: {info.num_params:,}; weights {info.total_bytes / 1e9:.2f} GB in {info.num_shards} file(s)"
        )
    if info.base_model:
        lines.append(f"- Base model: `{info.base_model}`")
    if info.fmt == "fp8":
        lines.append(
            "- Every Linear layer of the decoder blocks: `float8_e4m3fn` weights with one BF16 scale per output "
            "channel, activations quantized per token at run time. Embeddings, norms and "
            f"`{', '.join(info.fp8_ignore) or 'lm_head'}` are BF16."
        )
        if info.kept_bf16:
            lines.append(f"- Linear layers kept in BF16: {', '.join(f'`{k}`' for k in info.kept_bf16[:8])}")
    lines.append(
        "- Chat template: `chat_template.jinja` (also in `tokenizer_config.json`), byte-identical to the one "
        "used in training. Turns end with `<|eot_id|>` (128009); `generation_config.json` stops on "
        "128009 and `<|end_of_text|>` (128001) and samples with temperature 0.6, top_p 0.95, top_k 20."
    )
    lines += [f"- Note: {n}" for n in info.notes]
    return [*lines, ""]


VLLM_COMMAND = (
    "vllm serve {model} --enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser qwen3 \\\n"
    "    --default-chat-template-kwargs '{{\"enable_thinking\": false}}'"
)
SGLANG_COMMAND = (
    "python -m sglang.launch_server --model-path {model} --tool-call-parser qwen25 --reasoning-parser qwen3"
)
# The set-ups train/export/verify/serving.py restates; its round trip is exact for these commands only.
SERVING_PITFALLS = [
    "vLLM `--reasoning-parser qwen3` with `enable_thinking` neither in `--default-chat-template-kwargs` nor "
    "in the request: a reply without `<think>` is all reasoning, so its answer and tool calls are lost",
    "vLLM `--reasoning-parser deepseek_r1`: the same, whatever the request says",
    "SGLang without `enable_thinking` in the request: a reply without `<think>` is reasoning up to its "
    "first `<tool_call>` (or entirely)",
    "no `--tool-call-parser hermes` (vLLM) / `qwen25` (SGLang): calls come back as text in `content`",
]


def _serving(info: CardInfo) -> list[str]:
    if info.fmt == "lora-adapter":
        base = info.base_model or "BASE_MODEL_DIR"
        vllm = VLLM_COMMAND.format(
            model=f"{base} --tokenizer ./ --enable-lora --lora-modules hermes=./ \\\n   "
        )
        engines = ["vLLM (the adapter folder holds the Hermes tokenizer and template):", "", "```bash", vllm]
        engines += [
            "```",
            "",
            "SGLang: merge first (`hermes-sft export CHECKPOINT --merge-lora --out DIR`).",
            "",
        ]
    else:
        engines = [
            "vLLM:",
            "",
            "```bash",
            VLLM_COMMAND.format(model="./"),
            "```",
            "",
            "SGLang:",
            "",
            "```bash",
        ]
        engines += [SGLANG_COMMAND.format(model="./"), "```", "", *_TRANSFORMERS]
    return [
        "## Serve",
        "",
        *engines,
        "Reasoning mode is off by default. Turn it on per request with "
        '`extra_body={"chat_template_kwargs": {"enable_thinking": True}}` (an alias of the template\'s '
        "`thinking`, and the key the reasoning parsers read); on SGLang send `false` explicitly when it is "
        "off. The parser decides from it whether a reply without `<think>` is an answer or unfinished "
        "reasoning.",
        "",
        "With these commands the server's split of a reply (`reasoning_content`, `content`, single or "
        "parallel `tool_calls`) re-renders, when an agent sends it back, to exactly the tokens the model "
        "generated (`hermes-sft verify`, row `round_trip`). What breaks otherwise:",
        "",
        *[f"- {p}." for p in SERVING_PITFALLS],
        "",
    ]


_TRANSFORMERS = [
    "transformers:",
    "",
    "```python",
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    'tok = AutoTokenizer.from_pretrained("./")',
    'model = AutoModelForCausalLM.from_pretrained("./", dtype="auto")',
    'ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,',
    '                              enable_thinking=False, return_tensors="pt", return_dict=True)',
    "out = model.generate(**ids, max_new_tokens=256)  # sampling and stop ids from generation_config.json",
    "```",
    "",
]


def _data(manifest: dict[str, Any] | None) -> list[str]:
    if not manifest:
        return ["## Training data", "", "No data manifest was found next to the checkpoint.", ""]
    keys = [
        ("num_samples_in", "samples in"),
        ("num_samples_kept", "samples kept"),
        ("num_rows", "packed rows"),
        ("num_tokens", "tokens"),
        ("num_trained_tokens", "trained tokens"),
        ("packing_efficiency", "packing efficiency"),
        ("max_seq_len", "max sequence length"),
    ]
    lines = ["## Training data", "", "| | |", "|---|---|"]
    for key, label in keys:
        if key in manifest:
            value = manifest[key]
            text = (
                f"{value:.2%}" if key == "packing_efficiency" and isinstance(value, float) else f"{value:,}"
            )
            lines.append(f"| {label} | {text} |")
    dropped = manifest.get("dropped") or {}
    if dropped:
        lines.append("| dropped | " + ", ".join(f"{k}: {v:,}" for k, v in sorted(dropped.items())) + " |")
    per_source = manifest.get("per_source") or {}
    if per_source:
        lines += ["", "| source | samples kept | tokens |", "|---|---|---|"]
        for name, counts in sorted(per_source.items()):
            kept, tokens = counts.get("num_samples_kept", "?"), counts.get("num_tokens", "?")
            lines.append(
                f"| {name} | {kept:,} | {tokens:,} |"
                if isinstance(kept, int) and isinstance(tokens, int)
                else f"| {name} | {kept} | {tokens} |"
            )
    return [*lines, ""]


def _training(run_yaml: str | None) -> list[str]:
    if not run_yaml:
        return ["## Training configuration", "", "No run.yaml was found next to the checkpoint.", ""]
    return [
        "## Training configuration",
        "",
        "The resolved `run.yaml`:",
        "",
        "```yaml",
        run_yaml.rstrip(),
        "```",
        "",
    ]


def _verification(rows: list[tuple[str, str, str]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Verification (`hermes-sft verify`)", "", "| check | result | detail |", "|---|---|---|"]
    pipe = "\\|"  # a literal | inside a Markdown table cell
    lines += [f"| {c} | {s} | {d.replace('|', pipe)} |" for c, s, d in rows]
    return [*lines, ""]


def model_card(info: CardInfo) -> str:
    parts = [
        _front_matter(info),
        *_summary(info),
        *_serving(info),
        *_data(info.manifest),
        *_training(info.run_yaml),
    ]
    parts += _verification(info.verify_rows)
    return "\n".join(parts).rstrip() + "\n"
