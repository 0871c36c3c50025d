"""Exact token ids and labels without offsets: the rendered text is encoded in segments cut at the
trained-span edges, and each segment is either trained as a whole or not at all.

Why this gives the ids of the whole text. The Llama-3 tokenizer has no normalizer; it first splits
the text at added tokens (``<|eot_id|>``, the Hermes tags, …), then cuts each piece between them into
chunks with the pre-tokenizer regex :data:`~data_recipes.tokenizer.LLAMA3_PATTERN`, and byte-level BPE
encodes every chunk on its own. So ``encode(text[:p]) + encode(text[p:]) == encode(text)`` exactly
when the cut at ``p`` changes neither the added-token matches nor the chunks. A cut is accepted only
if one of two rules proves that (:meth:`Segmenter.safe_cut`):

(A) an added token ends at ``p`` or starts at ``p``. Every added token starts with ``<``, ends with
    ``>`` and has no other ``<``, ``>`` or whitespace (checked once per tokenizer), so no occurrence
    can span ``p`` and every occurrence is matched whether or not the text is cut: the pieces on both
    sides are the same, and the tokenizer already splits there.

(B) the character before ``p`` is ``"\\n"`` and the character at ``p`` is not whitespace. Let ``L``
    be the piece left of ``p`` (since the last added token) and ``R`` the piece right of it. For every
    start ``s < p`` each regex alternative does the same on ``L + R`` as on ``L`` alone and stops at
    or before ``p``: the contractions, letter, digit and ``[^\\s\\p{L}\\p{N}]+`` runs cannot cross
    the ``"\\n"``; ``[\\r\\n]*`` (after punctuation) and ``\\s*[\\r\\n]+`` may reach ``p`` and then
    look at ``R[0]``, which, not being whitespace, stops them exactly as the end of ``L`` does;
    ``\\s+(?!\\S)`` and ``\\s+`` are only tried where ``\\s*[\\r\\n]+`` failed, i.e. on a whitespace
    run without a newline, which ends before ``p - 1``. So the chunks of ``L + R`` before ``p`` are
    the chunks of ``L`` and the last one ends at ``p``; the pattern has no look-behind, so the scan
    from ``p`` on is the scan of ``R``. Python's ``str.isspace`` is a superset of the regex's ``\\s``
    (Unicode White_Space), so the test errs only towards refusing a cut.

The chat template cuts at ``<|end_header_id|>\\n`` + reply (B, or A when the reply opens with a tag)
and after ``<|eot_id|>`` (A). Any other cut — a reply that starts with whitespace, a template that
changes — is refused, and the sample is encoded whole with offsets instead (``render.label_tokens``,
exact, slower; counted as ``fallback`` in the build manifest). ``tests/unit/data_recipes/
test_segments.py`` checks both rules against whole-text encoding on random text (hypothesis).

Preconditions (:func:`segmenter_for`): no normalizer, the pre-tokenizer is exactly
``Split(LLAMA3_PATTERN, Isolated)`` + ``ByteLevel(use_regex=False)``, added tokens of the shape above
with no ``lstrip`` / ``rstrip`` / ``single_word``, no truncation or padding. A tokenizer that breaks
one gets no segmenter, and every sample takes the exact path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from transformers import PreTrainedTokenizerBase

from data_recipes.tokenizer import EOT, LLAMA3_PATTERN

T = TypeVar("T")
IGNORE_INDEX = -100
HEAD_CACHE_SIZE = 4096  # distinct system blocks kept per process (cleared when full)
Segment = tuple[int, int, bool]  # (start, end, trained): a half-open character range of the text


@dataclass
class Segmenter:
    """Cuts rendered texts at their trained-span edges and encodes the segments in one batched call.

    The text up to the first ``<|eot_id|>`` (the system block: BOS, system prompt, tool schemas) is a
    segment of its own when it lies before the first span (a cut after an added token, rule A), and
    its ids are cached: every sample of a source usually shares it.
    """

    tokenizer: PreTrainedTokenizerBase
    added: frozenset[str]
    """The added tokens' texts (all of the shape ``<…>`` without inner ``<``, ``>`` or whitespace)."""
    max_added_len: int
    head_end: str = EOT
    """The added token that closes the cached leading segment."""
    head_cache: dict[str, list[int]] = field(default_factory=dict)

    def safe_cut(self, text: str, lo: int, p: int, hi: int) -> bool:
        """Rule A or B (module docstring) for a cut at ``p``, looking only inside ``text[lo:hi]``."""
        before, after = text[p - 1], text[p]
        if before == "\n" and not after.isspace():  # rule B
            return True
        if before == ">":  # rule A, an added token ends at p
            start = text.rfind("<", max(lo, p - self.max_added_len), p)
            if start >= 0 and text[start:p] in self.added:
                return True
        if after == "<":  # rule A, an added token starts at p
            end = text.find(">", p, min(hi, p + self.max_added_len))
            if end >= 0 and text[p : end + 1] in self.added:
                return True
        return False

    def plan(self, text: str, spans: Sequence[tuple[int, int]]) -> list[Segment] | None:
        """The segments of ``text`` (trained = inside a span), or None when a cut is not provably safe."""
        segments: list[Segment] = []
        pos = 0
        head = text.find(self.head_end) + len(self.head_end)
        if head >= len(self.head_end) and head < (spans[0][0] if spans else len(text)):
            segments.append((0, head, False))  # safe by rule A; its ids are cached
            pos = head
        for a, b in spans:
            if a < pos or b < a or b > len(text):
                return None  # overlapping or out-of-range spans: not a shape this proof covers
            if a > pos:
                segments.append((pos, a, False))
            if b > a:
                segments.append((a, b, True))
            pos = b
        if pos < len(text):
            segments.append((pos, len(text), False))
        for k in range(1, len(segments)):
            lo, p, _ = segments[k - 1]
            if not self.safe_cut(text, lo, p, segments[k][1]):
                return None
        return segments

    def encode(
        self, texts: Sequence[str], plans: Sequence[Sequence[Segment]]
    ) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` per text, from one batched encode of all segments (no offsets)."""
        if len(self.head_cache) > HEAD_CACHE_SIZE:
            self.head_cache.clear()
        pieces: list[str] = []
        hits: list[list[int] | None] = []  # the cached ids of each text's head segment
        for text, plan in zip(texts, plans, strict=True):
            hit = self.head_cache.get(text[: plan[0][1]]) if plan and plan[0][0] == 0 else None
            hits.append(hit)
            pieces += [text[a:b] for a, b, _ in (plan[1:] if hit is not None else plan)]
        backend = self.tokenizer.backend_tokenizer
        encoded = iter(off_main_thread(backend.encode_batch_fast, pieces, add_special_tokens=False))
        out = []
        for text, plan, hit in zip(texts, plans, hits, strict=True):
            ids: list[int] = []
            labels: list[int] = []
            for k, (a, b, trained) in enumerate(plan):
                seg = hit if (k == 0 and hit is not None) else next(encoded).ids
                if k == 0 and hit is None and not trained and text.endswith(self.head_end, a, b):
                    self.head_cache[text[a:b]] = seg
                ids += seg
                labels += seg if trained else [IGNORE_INDEX] * len(seg)
            out.append((ids, labels))
        return out


_ENCODER: dict[int, ThreadPoolExecutor] = {}  # pid → this process's encoder thread


def off_main_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a helper thread of this process.

    Measured on the build machine: the Rust tokenizer encodes ~1.7x more tokens per CPU-second on any
    thread other than the interpreter's main thread (same work, same single thread; the main thread's
    allocator arena is shared with, and fragmented by, the interpreter). A worker process therefore
    hands each batched encode to its own thread and waits; a thread is made per process (after a fork
    the parent's thread does not exist in the child)."""
    pid = os.getpid()
    if pid not in _ENCODER:
        _ENCODER.clear()
        _ENCODER[pid] = ThreadPoolExecutor(1, thread_name_prefix="hermes-encode")
    return _ENCODER[pid].submit(fn, *args, **kwargs).result()


_SEGMENTERS: dict[int, tuple[PreTrainedTokenizerBase, Segmenter | None]] = {}


def segmenter_for(tokenizer: PreTrainedTokenizerBase) -> Segmenter | None:
    """The tokenizer's segmenter, or None when it breaks a precondition (checked once per tokenizer)."""
    cached = _SEGMENTERS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = (tokenizer, _make_segmenter(tokenizer))
        _SEGMENTERS[id(tokenizer)] = cached
    return cached[1]


def precondition_failure(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why segment encoding would not be provably exact with this tokenizer, or None."""
    return _inspect(tokenizer)[0]


def _inspect(tokenizer: PreTrainedTokenizerBase) -> tuple[str | None, frozenset[str]]:
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        return "the tokenizer truncates or pads", frozenset()
    if backend.normalizer is not None:
        return "the tokenizer has a normalizer", frozenset()
    expected = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    if backend.pre_tokenizer is None or json.loads(backend.pre_tokenizer.__getstate__()) != expected:
        return "the pre-tokenizer is not the Llama-3 regex + byte-level", frozenset()
    added = []
    for token in backend.get_added_tokens_decoder().values():
        content = token.content
        shaped = len(content) >= 3 and content[0] == "<" and content[-1] == ">"
        if not shaped or any(c in "<>" or c.isspace() for c in content[1:-1]):
            return f"added token {content!r} is not <...> without inner <, > or whitespace", frozenset()
        if token.lstrip or token.rstrip or token.single_word:
            return f"added token {content!r} strips whitespace or matches single words", frozenset()
        added.append(content)
    return None, frozenset(added)


def _make_segmenter(tokenizer: PreTrainedTokenizerBase) -> Segmenter | None:
    failure, added = _inspect(tokenizer)
    if failure is not None:
        return None
    return Segmenter(tokenizer, added, max(map(len, added), default=0))
