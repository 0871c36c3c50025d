"""Folder-level verify checks (files, config, generation config, template, template parity) and the
fixed conversations every check renders.


Fixed conversations for verification: template parity, logits prompts, generation prompts.

They cover the template's branches: default system prompt, a user system prompt, multi-turn history,
reasoning (``thinking=True``), tool definitions, a tool call, a tool response and the answer after it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from data_recipes.messages import conversation_from_openai, to_template_messages
from data_recipes.render import IGNORE_INDEX, RenderOptions, render, render_text, template_kwargs
from data_recipes.tokenizer import chat_template_text, load_tokenizer, template_fingerprint
from train.export.reading.tensors import read_safetensors_folder
from train.export.verify.report import FAIL, PASS, Reference, VerifyReport
from train.export.writing.folder import EOS_TOKEN_IDS, SAMPLING


def folder_kind(folder: Path) -> str:
    if (folder / "adapter_config.json").is_file():
        return "lora-adapter"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return "fp8" if "quantization_config" in config else "bf16"


def check_files(report: VerifyReport, folder: Path) -> bool:
    stem = "adapter_model" if report.kind == "lora-adapter" else "model"
    config = "adapter_config.json" if report.kind == "lora-adapter" else "config.json"
    need = [
        config,
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "README.md",
    ]
    missing = [n for n in need if not (folder / n).is_file()]
    try:
        tensors = read_safetensors_folder(folder, stem=stem)
    except ValueError as err:
        report.add("files", FAIL, str(err))
        return False
    if missing:
        report.add("files", FAIL, f"missing {', '.join(missing)}")
        return False
    shards = len({getattr(t, "path", None) for t in tensors.values()})
    report.add(
        "files",
        PASS,
        f"{len(tensors)} tensors in {shards} safetensors file(s); config, tokenizer, template, card",
    )
    return True


def check_config(report: VerifyReport, folder: Path) -> None:
    if report.kind == "lora-adapter":
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        ok = str(cfg.get("peft_type", "")).upper() == "LORA" and cfg.get("r")
        report.add(
            "config",
            PASS if ok else FAIL,
            f"PEFT LoRA r={cfg.get('r')}, alpha={cfg.get('lora_alpha')}, base {cfg.get('base_model_name_or_path')}",
        )
        return
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    problems = []
    if not cfg.get("architectures"):
        problems.append("no architectures")
    if cfg.get("torch_dtype") != "bfloat16" and cfg.get("dtype") != "bfloat16":
        problems.append(f"dtype {cfg.get('torch_dtype') or cfg.get('dtype')}")
    eos = cfg.get("eos_token_id")
    if 128009 not in (eos if isinstance(eos, list) else [eos]):
        problems.append(f"eos_token_id {eos} lacks 128009")
    detail = f"{(cfg.get('architectures') or ['?'])[0]}, bfloat16, eos {eos}"
    if report.kind == "fp8":
        detail, qproblems = _check_quant_config(cfg["quantization_config"])
        problems += qproblems
    report.add("config", FAIL if problems else PASS, "; ".join(problems) if problems else detail)


def _check_quant_config(qc: dict[str, Any]) -> tuple[str, list[str]]:
    from compressed_tensors.quantization import QuantizationConfig

    problems = []
    if qc.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method {qc.get('quant_method')}")
    try:
        parsed = QuantizationConfig.model_validate(
            {k: v for k, v in qc.items() if k in QuantizationConfig.model_fields}
        )
    except Exception as err:
        return "", [f"quantization_config does not parse with compressed-tensors: {err}"]
    if parsed.format != "float-quantized":
        problems.append(f"format {parsed.format}")
    if "lm_head" not in (parsed.ignore or []):
        problems.append("lm_head is not ignored")
    for name, group in parsed.config_groups.items():
        w, a = group.weights, group.input_activations
        if not (
            w
            and w.num_bits == 8
            and w.type == "float"
            and w.strategy == "channel"
            and w.symmetric
            and not w.dynamic
        ):
            problems.append(f"{name}: weights are not FP8 per-channel static")
        if not (a and a.num_bits == 8 and a.type == "float" and a.strategy == "token" and a.dynamic):
            problems.append(f"{name}: activations are not FP8 dynamic per-token")
    return (
        f"compressed-tensors {qc.get('version', '?')}, float-quantized, FP8_DYNAMIC, ignore {parsed.ignore}",
        problems,
    )


def check_generation(report: VerifyReport, folder: Path) -> None:
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(folder))
    except Exception as err:
        report.add("generation", FAIL, f"generation_config.json does not load: {err}")
        return
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    problems = [f"eos_token_id lacks {i}" for i in EOS_TOKEN_IDS if i not in eos]
    for key, want in SAMPLING.items():
        if getattr(gen, key) != want:
            problems.append(f"{key} {getattr(gen, key)} != {want}")
    detail = (
        f"eos {eos}, do_sample {gen.do_sample}, T {gen.temperature}, top_p {gen.top_p}, top_k {gen.top_k}"
    )
    report.add("generation", FAIL if problems else PASS, "; ".join(problems) if problems else detail)


def _training_template(ref: Reference | None) -> tuple[str, str]:
    if ref is not None and ref.tokenizer_dir is not None:
        cfg = json.loads((ref.tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        return cfg.get("chat_template") or "", f"the training tokenizer ({ref.tokenizer_dir})"

    return chat_template_text(), "data_recipes/chat_template.jinja"


def check_template(report: VerifyReport, folder: Path, ref: Reference | None) -> None:
    jinja = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    in_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
        "chat_template"
    )
    training, origin = _training_template(ref)
    problems = []
    if in_config != jinja:
        problems.append("tokenizer_config.json's chat_template differs from chat_template.jinja")
    if jinja != training:
        problems.append(f"the template differs from {origin}")
    fingerprint = (ref.manifest or {}).get("template_fingerprint") if ref else None
    if fingerprint and fingerprint != template_fingerprint(jinja):
        problems.append(f"fingerprint {template_fingerprint(jinja)} != dataset manifest's {fingerprint}")
    detail = f"byte-identical to {origin}" + (f"; manifest fingerprint {fingerprint}" if fingerprint else "")
    report.add("template", FAIL if problems else PASS, "; ".join(problems) if problems else detail)


@functools.lru_cache(maxsize=4)
def _training_tokenizer(path: str | None, stamp: tuple[int, int] | None):
    """The training renderer's tokenizer (cached per folder and file stamp within a process)."""

    del stamp  # part of the cache key only
    return load_tokenizer(path) if path else load_tokenizer()


def _stamp(folder: Path | None) -> tuple[int, int] | None:
    if folder is None:
        return None
    st = (folder / "tokenizer.json").stat()
    return st.st_mtime_ns, st.st_size


def check_template_parity(report: VerifyReport, folder: Path, ref: Reference | None):
    """Returns the exported tokenizer (``AutoTokenizer``), or None when it does not load."""
    from transformers import AutoTokenizer

    try:
        exported = AutoTokenizer.from_pretrained(str(folder))
        tok_dir = ref.tokenizer_dir if ref else None
        training = _training_tokenizer(str(tok_dir) if tok_dir else None, _stamp(tok_dir))
    except Exception as err:
        report.add("template_parity", FAIL, f"tokenizer does not load: {err}")
        return None
    mismatches, compared = [], 0
    for name, row, thinking in CONVERSATIONS:
        conv = conversation_from_openai(row, origin=name)
        options = RenderOptions(thinking=thinking)
        kwargs = {"tools": list(conv.tools) or None, **template_kwargs(options)}
        sample = render(conv, training, options)
        want, want_mask = sample.input_ids, [int(label != IGNORE_INDEX) for label in sample.labels]
        out = exported.apply_chat_template(
            to_template_messages(conv), return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        got, got_mask = out["input_ids"], out["assistant_masks"]
        prompt_text = render_text(_without_last(conv), options, add_generation_prompt=True)[0]
        want_prompt = training(prompt_text, add_special_tokens=False)["input_ids"]
        got_prompt = exported.apply_chat_template(
            to_template_messages(_without_last(conv)),
            tokenize=True,
            return_dict=True,
            add_generation_prompt=True,
            **kwargs,
        )["input_ids"]
        compared += 2
        if list(got) != list(want):
            mismatches.append(f"{name}: {_first_diff(got, want)}")
        elif list(got_mask) != want_mask:
            mismatches.append(f"{name}: assistant mask differs from the training labels")
        if list(got_prompt) != list(want_prompt) or list(want[: len(want_prompt)]) != list(want_prompt):
            mismatches.append(f"{name} (generation prompt): {_first_diff(got_prompt, want_prompt)}")
    detail = (
        f"{compared} renderings of {len(CONVERSATIONS)} conversations (plain, multi-turn, thinking, tools) "
        "identical; assistant masks equal the training labels"
    )
    report.add(
        "template_parity", FAIL if mismatches else PASS, "; ".join(mismatches) if mismatches else detail
    )
    return exported


def _without_last(conv):
    return replace(conv, messages=conv.messages[:-1])


def _first_diff(got, want) -> str:
    got, want = list(got), list(want)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"first difference at token {i} ({a} vs {b})"
    return f"lengths {len(got)} vs {len(want)}"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}

CONVERSATIONS: list[tuple[str, dict[str, Any], bool]] = [
    (
        "plain",
        {
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."},
            ]
        },
        False,
    ),
    (
        "system+multi-turn",
        {
            "messages": [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "Seven is prime."},
                {"role": "user", "content": "And an even one?"},
                {"role": "assistant", "content": "Two is the only even prime."},
            ]
        },
        False,
    ),
    (
        "thinking",
        {
            "messages": [
                {"role": "user", "content": "What is 17 * 3?"},
                {
                    "role": "assistant",
                    "reasoning_content": "17 * 3 = 51.",
                    "content": "17 × 3 = 51.",
                },
            ]
        },
        True,
    ),
    (
        "tools",
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Is it raining in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Paris", "unit": "c"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"rain": true, "temp_c": 14}'},
                {"role": "assistant", "content": "Yes, it is raining in Paris (14 °C)."},
            ],
        },
        False,
    ),
]
