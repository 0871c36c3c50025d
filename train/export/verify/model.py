"""The model-level verify checks: streamed weight comparison, loading, logits, generation."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data_recipes.messages import conversation_from_openai, to_template_messages
from data_recipes.tokenizer import EOT_ID
from train.export.reading.source import build_config
from train.export.reading.tensors import LazyTensor, adapter_tensors, read_safetensors_folder, row_chunks
from train.export.verify.folder import CONVERSATIONS
from train.export.verify.report import FAIL, PASS, SKIP, Reference, VerifyReport, parse_output
from train.export.writing.formats import quantize_rows

FP32_LOGITS_TOLERANCE = 1e-2
"""LoRA adapters (BF16 factors applied by PEFT) against the fp32 merged reference: relative error bound."""
MIN_DECIDED = 20
"""Fewer decided positions than this and top-1 agreement is reported but not judged."""


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return psutil.virtual_memory().available


def run_model_checks(
    report: VerifyReport,
    folder: Path,
    ref: Reference | None,
    tokenizer,
    *,
    base_model: str | Path | None,
    max_new_tokens: int,
    min_top1: float,
    max_rel_err: float,
    min_margin: float,
    progress: bool,
) -> None:
    stem = "adapter_model" if report.kind == "lora-adapter" else "model"
    exported = read_safetensors_folder(folder, stem=stem)
    if ref is not None:
        check_weights(report, exported, ref, progress)
    else:
        report.add("weights", SKIP, "no reference given (--reference RUN_OR_DIR)")
    num_params = _model_params(folder, report.kind, exported, base_model)
    need = num_params * 4 * (3 if ref is not None else 1.5)
    if need > 0.8 * available_memory():
        why = f"the model needs ~{need / 1e9:.0f} GB in fp32 on CPU, {available_memory() / 1e9:.0f} GB available"
        for name in ("load", "logits", "generate"):
            report.add(name, SKIP, why)
        return
    try:
        model, detail = load_exported(folder, report.kind, base_model, tokenizer)
    except Exception as err:  # any loader error is the finding
        report.add("load", FAIL, f"{type(err).__name__}: {err}")
        return
    report.add("load", PASS, detail)
    prompts = [_chat_ids(tokenizer, row, thinking) for _, row, thinking in CONVERSATIONS]
    if ref is not None:
        check_logits(report, model, prompts, ref, min_top1, max_rel_err, min_margin)
    else:
        report.add("logits", SKIP, "no reference given")
    check_generate(report, model, tokenizer, max_new_tokens)


def _model_params(
    folder: Path, kind: str, exported: dict[str, LazyTensor], base_model: str | Path | None
) -> int:
    if kind != "lora-adapter":
        return sum(t.numel for t in exported.values())
    base = _adapter_base(folder, base_model)
    return sum(t.numel for t in read_safetensors_folder(base).values()) if base else 0


def _adapter_base(folder: Path, base_model: str | Path | None) -> Path | None:
    if base_model:
        return Path(base_model)
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    return Path(base) if base and Path(base).is_dir() else None


# --- weights ------------------------------------------------------------------------------------


@torch.no_grad()
def check_weights(
    report: VerifyReport, exported: dict[str, LazyTensor], ref: Reference, progress: bool
) -> None:
    if report.kind == "lora-adapter":
        if ref.weights.adapter is None:
            report.add("weights", FAIL, "the reference is not a LoRA checkpoint")
            return
        want = adapter_tensors(ref.weights.adapter)
    else:
        want = ref.weights.model()
    scales = {n[: -len("_scale")] for n in exported if n.endswith(".weight_scale")}
    expected_names = set(want) | {f"{n}_scale" for n in scales}
    if set(exported) != expected_names:
        extra, missing = sorted(set(exported) - expected_names), sorted(expected_names - set(exported))
        report.add("weights", FAIL, f"tensor names differ: missing {missing[:4]}, unexpected {extra[:4]}")
        return
    unequal, err_num, err_den, worst = [], 0.0, 0.0, 0.0
    for name in tqdm(list(want), desc="verify weights", disable=not progress):
        ref_t, out_t = want[name], exported[name]
        if tuple(ref_t.shape) != tuple(out_t.shape):
            unequal.append(f"{name} shape")
            continue
        num = den = 0.0
        for start, stop in row_chunks(ref_t):
            r = ref_t.rows(start, stop)
            r16 = r.to(torch.bfloat16) if r.dtype.is_floating_point else r
            got = out_t.rows(start, stop)
            if name in scales:
                q, s = quantize_rows(r16)
                got_s = exported[f"{name}_scale"].rows(start, stop)
                same = torch.equal(got.view(torch.uint8), q.view(torch.uint8)) and torch.equal(
                    got_s, s.to(got_s.dtype)
                )
                deq = got.float() * got_s.float()
                num += float((deq - r16.float()).pow(2).sum())
                den += float(r16.float().pow(2).sum())
            else:
                same = torch.equal(got, r16)
            if not same:
                unequal.append(name)
                break
        if den:
            err_num, err_den, worst = err_num + num, err_den + den, max(worst, math.sqrt(num / den))
    if unequal:
        report.add(
            "weights", FAIL, f"{len(unequal)} tensors differ from the reference: {', '.join(unequal[:4])}"
        )
        return
    if scales:
        rel = math.sqrt(err_num / err_den) if err_den else 0.0
        detail = (
            f"{len(want)} tensors; {len(scales)} FP8 weights byte-identical to compressed-tensors' quantization "
            f"of the reference; dequantization error {rel:.2%} overall, {worst:.2%} worst layer; the rest equal in BF16"
        )
        report.add("weights", PASS, detail, fp8_weight_rel_err=rel, fp8_weight_rel_err_worst=worst)
    else:
        report.add(
            "weights", PASS, f"{len(want)} tensors equal to the reference rounded to BF16 ({ref.description})"
        )


# --- loading ------------------------------------------------------------------------------------


def load_exported(folder: Path, kind: str, base_model: str | Path | None, tokenizer):
    """(model in fp32 on CPU, detail) — the way a user loads the folder (tokenizer: ``AutoTokenizer``'s)."""
    from transformers import AutoModelForCausalLM

    if kind == "lora-adapter":
        return _load_adapter(folder, base_model, tokenizer)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "output_loading_info": True}
    if kind == "fp8":
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():  # "the model already has a quantization_config": that is the point
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
        model, info = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"loading reported {bad}")
    model.eval()
    how = "compressed-tensors decompression" if kind == "fp8" else "plain safetensors"
    return (
        model,
        f"AutoModelForCausalLM ({type(model).__name__}, {how}) + {type(tokenizer).__name__}; no missing/unexpected keys",
    )


def _load_adapter(folder: Path, base_model: str | Path | None, tokenizer):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = _adapter_base(folder, base_model)
    if base is None:
        raise ValueError("the adapter's base model folder is unknown; pass --base-model")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(folder))
    loaded = set(get_peft_model_state_dict(model))
    saved = set(read_safetensors_folder(folder, stem="adapter_model"))
    if loaded != saved:
        raise ValueError(f"adapter keys differ from what PEFT expects: {sorted(loaded ^ saved)[:4]}")
    model.eval()
    return (
        model,
        f"PEFT LoRA on {base} ({len(saved)} adapter tensors) + {type(tokenizer).__name__}",
    )


def _chat_ids(tokenizer, row: dict, thinking: bool) -> torch.Tensor:
    conv = conversation_from_openai(row)
    enc = tokenizer.apply_chat_template(
        to_template_messages(conv),
        tools=list(conv.tools) or None,
        thinking=thinking,
        return_dict=True,
        return_tensors="pt",
    )
    return enc["input_ids"]


# --- logits -------------------------------------------------------------------------------------


def model_from_tensors(config_dict: dict, tensors: dict[str, LazyTensor]) -> torch.nn.Module:
    """A transformers model holding ``tensors`` (fp32), filled tensor by tensor."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(build_config(config_dict), dtype=torch.float32)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.materialize())
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def _logits(model, prompts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model(input_ids=ids).logits[0].float() for ids in prompts])


def compare_logits(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    return {
        "rel_err": float((got - want).norm() / want.norm()),
        "max_abs": float((got - want).abs().max()),
        "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
        "positions": int(want.shape[0]),
    }


def decided_top1(got: torch.Tensor, want: torch.Tensor, min_margin: float) -> tuple[float, int]:
    """Top-1 agreement on positions where the reference's top-2 logit margin is at least ``min_margin``.

    A near-tie in the reference (two tokens within ``min_margin`` logits, i.e. probabilities within a
    factor ``exp(min_margin)``) flips under any perturbation, including plain BF16 rounding; tiny or
    barely trained models have mostly such positions. Returns (agreement, number of decided positions).
    """
    top2 = want.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) >= min_margin
    n = int(decided.sum())
    if n == 0:
        return float("nan"), 0
    return float((got.argmax(-1) == want.argmax(-1))[decided].float().mean()), n


def check_logits(
    report: VerifyReport,
    model,
    prompts,
    ref: Reference,
    min_top1: float,
    max_rel_err: float,
    min_margin: float,
) -> None:
    ref_model = model_from_tensors(ref.weights.config, ref.weights.model())
    got = _logits(model, prompts)
    want32 = _logits(ref_model, prompts)
    with torch.no_grad():
        for p in ref_model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    want16 = _logits(ref_model, prompts)
    del ref_model
    vs32, vs16 = compare_logits(got, want32), compare_logits(got, want16)
    n = vs16["positions"]
    if report.kind == "bf16":
        ok = vs16["max_abs"] == 0.0
        detail = (
            f"{n} positions: identical to the reference in BF16 (max |Δ| {vs16['max_abs']:.1e}); vs the fp32 "
            f"weights: rel. error {vs32['rel_err']:.2e}, top-1 agreement {vs32['top1']:.2%}"
        )
    else:
        base, name = (
            (vs16, "the BF16 reference") if report.kind == "fp8" else (vs32, "the fp32 merged reference")
        )
        want = want16 if report.kind == "fp8" else want32
        limit = max_rel_err if report.kind == "fp8" else FP32_LOGITS_TOLERANCE
        top1_decided, n_decided = decided_top1(got, want, min_margin)
        base.update(top1_decided=top1_decided, decided_positions=n_decided)
        enough = n_decided >= MIN_DECIDED
        ok = base["rel_err"] <= limit and (not enough or top1_decided >= min_top1)
        decided_text = (
            f"{top1_decided:.2%} on the {n_decided} positions with a top-2 margin ≥ {min_margin} (goal {min_top1:.0%})"
            if enough
            else f"not assessed: only {n_decided} positions with a top-2 margin ≥ {min_margin} (flat logits)"
        )
        detail = (
            f"{n} positions vs {name}: rel. error {base['rel_err']:.2%} (limit {limit:.0%}); top-1 agreement "
            f"{base['top1']:.2%} overall, {decided_text}"
        )
    report.add("logits", PASS if ok else FAIL, detail, vs_bf16=vs16, vs_fp32=vs32)


# --- generation ---------------------------------------------------------------------------------


class _ForceToken:
    """Logits processor: at generated position ``at`` only ``token`` may be chosen."""

    def __init__(self, prompt_len: int, at: int, token: int) -> None:
        self.pos, self.token = prompt_len + at, token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.pos:
            forced = torch.full_like(scores, -math.inf)
            forced[:, self.token] = 0.0
            return forced
        return scores


@torch.no_grad()
def check_generate(report: VerifyReport, model, tokenizer, max_new_tokens: int) -> None:
    from transformers import LogitsProcessorList

    _, row, thinking = CONVERSATIONS[3]
    row = {**row, "messages": row["messages"][:1]}
    ids = tokenizer.apply_chat_template(
        row["messages"],
        tools=row.get("tools"),
        add_generation_prompt=True,
        thinking=thinking,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    # greedy: the folder's sampling values overridden explicitly; stop ids come from its generation config
    greedy = {
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 50,
        "max_new_tokens": max_new_tokens,
    }
    try:
        out = model.generate(input_ids=ids, **greedy)
        new = out[0, ids.shape[1] :].tolist()
        text = tokenizer.decode(new, skip_special_tokens=False)
        parsed = parse_output(text.removesuffix("<|eot_id|>"))
        forced = model.generate(
            input_ids=ids,
            **greedy,
            logits_processor=LogitsProcessorList([_ForceToken(ids.shape[1], 0, EOT_ID)]),
        )[0, ids.shape[1] :].tolist()
        torch.manual_seed(0)
        sampled = model.generate(input_ids=ids, max_new_tokens=4)[
            0, ids.shape[1] :
        ].tolist()  # generation_config.json
    except Exception as err:
        report.add("generate", FAIL, f"{type(err).__name__}: {err}")
        return
    problems = []
    if len(new) > max_new_tokens:
        problems.append(f"{len(new)} tokens generated, limit {max_new_tokens}")
    if forced != [EOT_ID]:  # the first generated token is forced to <|eot_id|>: nothing may follow
        problems.append(f"a forced <|eot_id|> did not end generation ({forced})")
    if not 1 <= len(sampled) <= 4:
        problems.append(f"sampling with generation_config.json produced {len(sampled)} tokens")
    stopped = "stopped at <|eot_id|>" if new and new[-1] == EOT_ID else f"{len(new)} tokens"
    detail = (
        f"greedy {stopped}; parsed: reasoning {parsed.reasoning is not None}, {len(parsed.tool_calls)} tool calls"
        f"{'; tool parse fell back to content' if parsed.tool_error else ''}; forced <|eot_id|> stops; sampling runs"
    )
    report.add("generate", FAIL if problems else PASS, "; ".join(problems) if problems else detail, text=text)
