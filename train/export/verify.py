"""``verify_folder``: check an exported folder the way its users will load it, on CPU.

Checks, in order (each a row of the report; a failed row makes the verify fail):

``files``           weights (index ↔ shards ↔ tensors), config, tokenizer, template, card present
``config``          architecture, dtype, special ids; FP8: the ``quantization_config`` parses with
                    compressed-tensors and is FP8_DYNAMIC (channel weights, dynamic per-token
                    activations, ``lm_head`` ignored)
``generation``      ``eos_token_id`` holds 128009 and 128001; sampling 0.6 / 0.95 / 20
``template``        the chat template equals the training one byte for byte (and the dataset
                    manifest's fingerprint)
``template_parity`` ``apply_chat_template`` of the exported tokenizer == the training renderer's ids
``round_trip``      generations split as vLLM / SGLang do (recommended parsers), echoed back and
                    re-rendered by the exported tokenizer give the generated tokens again
``load``            ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it (FP8 decompressed through
                    compressed-tensors; adapters through PEFT on their base) with no missing or
                    unexpected weights
``weights``         (with a reference) every tensor, streamed: BF16 equal to the reference rounded to
                    BF16; FP8 bytes equal to compressed-tensors' quantization of the reference
``logits``          (with a reference) fixed prompts: BF16 equal to the reference in BF16; FP8
                    relative error and top-1 agreement against the BF16 reference
``generate``        a short greedy generation runs, stays within the limit and parses (``<think>``,
                    ``<tool_call>``) without error; a forced ``<|eot_id|>`` ends generation
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.export.files import EOS_TOKEN_IDS, SAMPLING, TOKENIZER_FILES, template_fingerprint
from train.export.serving import round_trip_summary

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    """What an exported folder is compared against."""

    description: str
    weights: Any  # train.export.weights.Weights
    tokenizer_dir: Path | None = None
    manifest: dict[str, Any] | None = None


@dataclass
class VerifyReport:
    folder: Path
    kind: str
    reference: str | None
    checks: list[Check] = field(default_factory=list)
    display_name: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def add(self, name: str, status: str, detail: str, **metrics: Any) -> Check:
        c = Check(name, status, detail, metrics)
        self.checks.append(c)
        return c

    def rows_for_card(self) -> list[tuple[str, str, str]]:
        return [(c.name, c.status.upper(), c.detail) for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "reference": self.reference,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, "metrics": c.metrics}
                for c in self.checks
            ],
        }

    def table(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"verify {self.display_name or self.folder.name} ({self.kind})", show_lines=False)
        for col in ("check", "result", "detail"):
            table.add_column(col, overflow="fold")
        style = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}
        for c in self.checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status.upper()}[/]", c.detail)
        console = Console(width=120, record=True, force_terminal=False, color_system=None)
        with console.capture() as cap:
            console.print(table)
            console.print(f"result: {'PASS' if self.ok else 'FAIL'}")
        return cap.get()


def folder_kind(folder: Path) -> str:
    if (folder / "adapter_config.json").is_file():
        return "lora-adapter"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return "fp8" if "quantization_config" in config else "bf16"


def verify_folder(
    folder: str | Path,
    reference: str | Path | Reference | None = None,
    *,
    base_model: str | Path | None = None,
    max_new_tokens: int = 16,
    min_top1: float = 0.99,
    max_rel_err: float = 0.05,
    min_margin: float = 0.1,
    progress: bool = False,
    display_name: str | None = None,
) -> VerifyReport:
    """Verify ``folder``; ``reference`` is a run / checkpoint / model folder or a :class:`Reference`.

    ``min_top1`` / ``max_rel_err``: FP8 logits goals (top-1 agreement is judged on positions where the
    reference's top-2 margin is at least ``min_margin`` logits; 0 judges every position).
    """
    from train.export import verify_model

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir() or not (
        (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
    ):
        raise ValueError(f"{folder}: not an exported model folder (no config.json or adapter_config.json)")
    ref = _reference(reference, base_model)
    report = VerifyReport(
        folder, folder_kind(folder), ref.description if ref else None, display_name=display_name
    )
    if not check_files(report, folder):
        return report
    check_config(report, folder)
    check_generation(report, folder)
    check_template(report, folder, ref)
    tokenizer = check_template_parity(report, folder, ref)
    if tokenizer is None:
        return report
    check_round_trip(report, tokenizer)
    verify_model.run_model_checks(
        report,
        folder,
        ref,
        tokenizer,
        base_model=base_model,
        max_new_tokens=max_new_tokens,
        min_top1=min_top1,
        max_rel_err=max_rel_err,
        min_margin=min_margin,
        progress=progress,
    )
    return report


def _reference(reference: str | Path | Reference | None, base_model: str | Path | None) -> Reference | None:
    if reference is None or isinstance(reference, Reference):
        return reference
    from train.export.source import resolve_source
    from train.export.weights import open_weights

    src = resolve_source(reference, base_model=base_model)
    return Reference(src.describe(), open_weights(src), src.tokenizer_dir, src.manifest)


def check_files(report: VerifyReport, folder: Path) -> bool:
    from train.export.safetensors_io import read_safetensors_folder

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
    from data_recipes.tokenizer import chat_template_text

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
    from data_recipes.tokenizer import load_tokenizer

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

    from data_recipes.messages import conversation_from_openai, to_template_messages
    from data_recipes.render import IGNORE_INDEX, RenderOptions, render, render_text, template_kwargs
    from train.export.samples import CONVERSATIONS

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


def check_round_trip(report: VerifyReport, tokenizer) -> None:
    """The serving round trip (``train/export/serving.py``) through the exported tokenizer."""
    ok, detail, metrics = round_trip_summary(tokenizer)
    report.add("round_trip", PASS if ok else FAIL, detail, **metrics)


def _without_last(conv):
    from dataclasses import replace

    return replace(conv, messages=conv.messages[:-1])


def _first_diff(got, want) -> str:
    got, want = list(got), list(want)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"first difference at token {i} ({a} vs {b})"
    return f"lengths {len(got)} vs {len(want)}"


__all__ = ["TOKENIZER_FILES", "Check", "Reference", "VerifyReport", "verify_folder"]
