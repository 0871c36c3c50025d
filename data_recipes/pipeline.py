"""Raw rows → rendered sample records: the per-batch work the builder runs in parallel.

For each raw row: parse JSON → normalize (:mod:`data_recipes.formats`) → split per reply under
``expand`` → recipe check (:mod:`data_recipes.recipes`) → render + tokenize (one batched tokenizer
call per render setting) → the audit on its share of samples (:mod:`data_recipes.checks`; a failure
stops the build) → post-render label rules → content digest. A row that fails anywhere
becomes one record with an ``error`` reason and no tokens, so every input is accounted for; a row
that ``expand`` splits becomes several records.

Everything here is a pure function of the batch and a :class:`WorkerContext`, so the worker
processes of :mod:`data_recipes.workers` can run it (they inherit the loaded tokenizer).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import xxhash
from transformers import PreTrainedTokenizerBase

from data_recipes.checks import CheckMode, audit, is_audited
from data_recipes.formats.detect import detect_format, read_row
from data_recipes.messages import Conversation, SampleError
from data_recipes.recipes import RECIPES
from data_recipes.recipes.common import Prepared, RecipeOptions, apply_label_rules
from data_recipes.render import RenderedSample, RenderOptions, expand_history, render_batch
from data_recipes.sources import NOT_UTF8
from data_recipes.tokenizer import load_tokenizer

RECORD_SCHEMA = pa.schema(
    [("source", pa.int32()), ("origin", pa.string()), ("format", pa.string()), ("error", pa.string()),
     ("detail", pa.string()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
     ("length", pa.int32()), ("num_trained", pa.int32()), ("cut", pa.bool_()), ("fallback", pa.bool_()),
     ("audited", pa.bool_()), ("digest_hi", pa.int64()), ("digest_lo", pa.int64()),
     ("ignored", pa.list_(pa.string())), ("chosen_length", pa.int32())]
)  # fmt: skip
# chosen_length: 0 for an SFT sample; for a preference pair (data_recipes/preference.py) the length of
# its chosen side, which the packer uses to restart positions at the rejected side.
RECORD_COLUMNS = tuple(RECORD_SCHEMA.names)
_TOKEN_COLUMNS = ("input_ids", "labels")


@dataclass(frozen=True)
class SourceRules:
    """What the worker needs to know about one source."""

    format: str
    recipe: str
    options: RecipeOptions


@dataclass(frozen=True)
class WorkerContext:
    sources: tuple[SourceRules, ...]
    history: Literal["last", "expand", "keep"]
    tokenizer: str | None
    check: CheckMode = "sample"
    """``sample``: cheap checks on every sample + the audit on a deterministic share (``check_rate``);
    ``full``: the audit on every sample; ``off``: no checks."""
    check_rate: float = 0.01


_EMPTY = np.zeros(0, dtype=np.int32)  # typed, so a batch of only failures still has int32 lists
_TOKENIZERS: dict[str | None, PreTrainedTokenizerBase] = {}


def get_tokenizer(path: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer, loaded once per process."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def _error_record(source: int, origin: str, fmt: str, err: SampleError | Exception) -> dict[str, Any]:
    if isinstance(err, SampleError):
        reason, detail = err.reason, err.detail
    else:  # a bug or an input we did not foresee: counted with its origin, never a crashed build
        reason, detail = "unexpected_error", f"{type(err).__name__}: {err}"
    return {
        "source": source, "origin": origin, "format": fmt, "error": reason, "detail": detail[:500],
        "input_ids": _EMPTY, "labels": _EMPTY, "length": 0, "num_trained": 0, "cut": False, "fallback": False,
        "audited": False, "digest_hi": 0, "digest_lo": 0, "ignored": [], "chosen_length": 0,
    }  # fmt: skip


def _sample_record(
    source: int, fmt: str, sample: RenderedSample, cut: bool, audited: bool = False
) -> dict[str, Any]:
    ids = np.asarray(sample.input_ids, dtype=np.int32)
    labels = np.asarray(sample.labels, dtype=np.int32)
    digest = xxhash.xxh3_128_intdigest(ids.tobytes() + b"|" + labels.tobytes())
    hi, lo = digest >> 64, digest & ((1 << 64) - 1)
    return {
        "source": source, "origin": sample.origin, "format": fmt, "error": "", "detail": "",
        "input_ids": ids, "labels": labels, "length": len(ids), "num_trained": int((labels != -100).sum()),
        "cut": cut, "fallback": sample.fallback, "audited": audited,
        "digest_hi": hi - (1 << 64) if hi >= 1 << 63 else hi, "digest_lo": lo - (1 << 64) if lo >= 1 << 63 else lo,
        "ignored": [],
        "chosen_length": 0,
    }  # fmt: skip


def prepare_row(
    source: int, origin: str, raw: str, ctx: WorkerContext, tokenizer: PreTrainedTokenizerBase
) -> tuple[str, tuple[str, ...], list[Prepared | SampleError | Exception]]:
    """The row's format, its ignored columns and one prepared conversation (or error) per sample."""
    rules = ctx.sources[source]
    fmt = "unknown" if rules.format == "auto" else rules.format
    try:
        row = parse_row(raw, origin)
        if rules.format == "auto":
            fmt = detect_format(row, origin)
        read = read_row(row, fmt, origin)
        conv = read.conversation
        convs = expand_history(conv) if ctx.history == "expand" else [conv]
    except SampleError as err:
        return fmt, (), [err]
    except (AssertionError, KeyboardInterrupt):
        raise
    except Exception as err:
        return fmt, (), [err]
    policy: Literal["last", "keep"] = "keep" if ctx.history == "keep" else "last"
    prepare = RECIPES[rules.recipe]
    out: list[Prepared | SampleError | Exception] = []
    for c in convs:
        try:
            out.append(prepare(c, rules.options, policy, tokenizer))
        except SampleError as err:
            out.append(err)
        except AssertionError:
            raise
        except Exception as err:
            out.append(err)
    return fmt, read.ignored, out


def parse_row(raw: str, origin: str) -> Any:
    """A raw row's JSON, or a :class:`SampleError`: ``invalid_utf8`` (:data:`sources.NOT_UTF8`),
    ``malformed_json``, ``unencodable_text`` (:func:`check_encodable`). ``render`` uses it too."""
    if raw.startswith(NOT_UTF8):
        raise SampleError("invalid_utf8", raw.removeprefix(NOT_UTF8), origin)
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SampleError("malformed_json", f"{err.msg} at char {err.pos}", origin) from err
    check_encodable(raw, row, origin)
    return row


# A JSON escape of a surrogate: rows without one (nearly all) skip the walk below. Literal surrogate
# characters cannot reach here: sources.iter_rows turns undecodable bytes into NOT_UTF8 rows.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_encodable(raw: str, row: Any, origin: str) -> None:
    """A row whose text cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``: valid JSON,
    not valid text) is an ``unencodable_text`` drop here, before it reaches the tokenizer, whose batched
    call would otherwise fail for the whole batch. The parsed row is walked only when the raw text
    holds a surrogate escape (emoji pairs do; they encode fine)."""
    if not SURROGATE_ESCAPE.search(raw):
        return
    stack: list[tuple[str, Any]] = [("row", row)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
            stack.extend((f"{where} key", k) for k in value)
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                char = value[err.start].encode("unicode_escape").decode()
                detail = f"lone surrogate {char} at char {err.start} of {where}: not encodable as UTF-8"
                raise SampleError("unencodable_text", detail, origin) from None


def render_guarded(
    convs: list[Conversation], tokenizer: PreTrainedTokenizerBase, options: RenderOptions
) -> list[RenderedSample | SampleError]:
    """:func:`render_batch`, with a batch that fails as a whole (the batched tokenizer call rejects one
    text) retried one sample at a time, so the failure is that sample's ``tokenizer_error`` drop with
    its origin, never a crashed build."""
    try:
        return render_batch(convs, tokenizer, options)
    except (AssertionError, KeyboardInterrupt):
        raise
    except Exception as err:
        if len(convs) == 1:
            detail = f"{type(err).__name__}: {err}"
            return [SampleError("tokenizer_error", detail[:300], convs[0].origin)]
        return [result for conv in convs for result in render_guarded([conv], tokenizer, options)]


def process_batch(batch: dict[str, list], ctx: WorkerContext) -> dict[str, list]:
    """A batch of raw rows (``source``, ``origin``, ``raw``) as sample records (``RECORD_COLUMNS``)."""
    tokenizer = get_tokenizer(ctx.tokenizer)
    slots: list[dict[str, Any] | None] = []
    pending: dict[tuple[bool, str], list[tuple[int, int, str, Prepared]]] = {}
    ignored_at: dict[int, list[str]] = {}
    for source, origin, raw in zip(batch["source"], batch["origin"], batch["raw"], strict=True):
        fmt, ignored, items = prepare_row(source, origin, raw, ctx, tokenizer)
        if ignored:  # counted once per row, on its first record (whatever its fate)
            ignored_at[len(slots)] = list(ignored)
        for item in items:
            if isinstance(item, Prepared):
                key = (item.thinking, item.policy)
                pending.setdefault(key, []).append((len(slots), source, fmt, item))
                slots.append(None)
            else:
                slots.append(_error_record(source, getattr(item, "origin", "") or origin, fmt, item))
    for (thinking, policy), group in pending.items():
        options = RenderOptions(thinking=thinking, history=policy, check=ctx.check != "off")
        for (slot, *_), record in zip(group, _render_group(group, options, ctx, tokenizer), strict=True):
            slots[slot] = record
    records = [r for r in slots if r is not None]
    assert len(records) == len(slots)
    for slot, names in ignored_at.items():
        records[slot]["ignored"] = names
    return {col: [r[col] for r in records] for col in RECORD_COLUMNS}


def _render_group(
    group: list[tuple[int, int, str, Prepared]],
    options: RenderOptions,
    ctx: WorkerContext,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict[str, Any]]:
    """Records for prepared conversations that share render options: render, audit, label rules."""
    results = render_guarded([p.conv for *_, p in group], tokenizer, options)
    audited = [
        isinstance(r, RenderedSample) and is_audited(r.text, ctx.check, ctx.check_rate) for r in results
    ]
    audit(
        [(p.conv, r) for (*_, p), r, a in zip(group, results, audited, strict=True) if a], tokenizer, options
    )
    records = []
    for (_, source, fmt, prep), result, checked in zip(group, results, audited, strict=True):
        if isinstance(result, SampleError):
            records.append(_error_record(source, prep.conv.origin, fmt, result))
            continue
        sample = apply_label_rules(result, prep)
        if sample.num_trained == 0:
            err = SampleError("no_trained_tokens", "no token is trained after the label rules", sample.origin)
            records.append(_error_record(source, sample.origin, fmt, err))
            continue
        records.append(_sample_record(source, fmt, sample, bool(prep.cut_turns), checked))
    return records


def record_batch(records: dict[str, list]) -> pa.RecordBatch:
    """:func:`process_batch` output as one Arrow record batch (token lists concatenated, not converted
    one list at a time)."""
    lengths = np.asarray(records["length"], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = []
    for field in RECORD_SCHEMA:
        values = records[field.name]
        if field.name in _TOKEN_COLUMNS:
            flat = np.concatenate(values).astype(np.int32, copy=False) if values else np.zeros(0, np.int32)
            columns.append(pa.ListArray.from_arrays(offsets, pa.array(flat)))
        else:
            columns.append(pa.array(values, field.type))
    return pa.record_batch(columns, schema=RECORD_SCHEMA)
