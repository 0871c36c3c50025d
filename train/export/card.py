"""The model card (``README.md``) of an export: what it is, how to serve it, what it was trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


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
# The set-ups train/export/serving.py restates; its round trip is exact for these commands only.
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
