"""Cutting an old tool protocol out of a system prompt while keeping its task instructions.

Public tool-use sets write, in the system turn, both what the task is ("You are an expert structured
information extraction AI model…") and how *their* protocol lists tools and formats calls. The
template writes its own tool paragraph, so the second part would contradict it; :func:`drop_sentences`
removes every sentence a format's pattern marks as protocol and keeps the rest verbatim. JSON or
Python-literal objects inside a sentence are masked first, so their colons and periods never split it.
"""

from __future__ import annotations

import re

SENTENCE_END_RE = re.compile(r"((?<=[.!?:])[ \t]+|\n+)")
MASK_RE = re.compile(r"\x01(\d+)\x01")


def mask_objects(text: str) -> tuple[str, list[str]]:
    """``text`` with each outermost ``{…}`` / ``[…]`` replaced by ``\\x01N\\x01``, and the removed spans."""
    out, spans, depth, start = [], [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            if depth == 0:
                out.append(text[start:i])
                start = i
            depth += 1
        elif ch in "}]" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
                out.append(f"\x01{len(spans) - 1}\x01")
                start = i + 1
    out.append(text[start:])
    return "".join(out), spans


def drop_sentences(text: str, protocol: re.Pattern[str]) -> str:
    """``text`` without the sentences ``protocol`` matches (nor an object standing alone after one)."""
    masked, spans = mask_objects(text)
    parts = SENTENCE_END_RE.split(masked)
    kept: list[str] = []
    previous_kept = True
    for sentence, sep in zip(parts[0::2], [*parts[1::2], ""], strict=True):
        only_objects = not MASK_RE.sub("", sentence).strip(" \t.")
        keep = not protocol.search(MASK_RE.sub(" ", sentence)) and (previous_kept or not only_objects)
        if keep and sentence.strip():
            kept.append(sentence + sep)
        previous_kept = keep
    cleaned = MASK_RE.sub(lambda m: spans[int(m.group(1))], "".join(kept))
    return re.sub(r"\n{3,}", "\n\n", cleaned).strip()
