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

Layout: ``report`` (check / result types, the tool-call parser) at the bottom, ``folder`` (file,
config and template checks, the sample conversations), ``serving`` (the servers' splits and the
round trip), ``model`` (weights, load, logits, generate).
"""

from __future__ import annotations

from pathlib import Path

from train.export.reading.source import open_weights, resolve_source
from train.export.verify.folder import (
    check_config,
    check_files,
    check_generation,
    check_template,
    check_template_parity,
    folder_kind,
)
from train.export.verify.model import run_model_checks
from train.export.verify.report import Reference, VerifyReport
from train.export.verify.serving import check_round_trip


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
    run_model_checks(
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

    src = resolve_source(reference, base_model=base_model)
    return Reference(src.describe(), open_weights(src), src.tokenizer_dir, src.manifest)
