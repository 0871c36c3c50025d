"""Show token ids as text with the trained tokens marked: colour on a terminal, plain markers elsewhere.

Plain mode wraps each trained run in ``⟦…⟧`` and marks sample boundaries with ``║`` so the output
stays readable in logs, files and CI, where ANSI colours are noise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
TRAINED_ON, TRAINED_OFF = "\x1b[1;30;42m", "\x1b[0m"  # bold on green
BOUNDARY_COLOR = "\x1b[1;35m"
PLAIN_OPEN, PLAIN_CLOSE, PLAIN_BOUNDARY = "⟦", "⟧", "║"


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def highlight_tokens(
    tokenizer: PreTrainedTokenizerBase,
    input_ids: Sequence[int],
    labels: Sequence[int],
    *,
    color: bool | None = None,
    boundaries: Sequence[int] = (),
) -> str:
    """Decode ``input_ids`` run by run, marking trained runs (``labels != -100``).

    ``boundaries`` are token positions where a new packed sample starts (position 0 is implied).
    """
    color = use_color() if color is None else color
    starts = {b for b in boundaries if b > 0}
    out: list[str] = []
    run_start = 0
    for i in range(1, len(input_ids) + 1):
        at_end = i == len(input_ids)
        trained_changed = not at_end and (labels[i] != IGNORE_INDEX) != (labels[run_start] != IGNORE_INDEX)
        if not (at_end or trained_changed or i in starts):
            continue
        text = tokenizer.decode(list(input_ids[run_start:i]), skip_special_tokens=False)
        if labels[run_start] != IGNORE_INDEX:
            text = f"{TRAINED_ON}{text}{TRAINED_OFF}" if color else f"{PLAIN_OPEN}{text}{PLAIN_CLOSE}"
        out.append(text)
        if i in starts:
            out.append(f"{BOUNDARY_COLOR}{PLAIN_BOUNDARY}{TRAINED_OFF}" if color else PLAIN_BOUNDARY)
        run_start = i
    return "".join(out)


def legend(color: bool) -> str:
    if color:
        return f"legend: {TRAINED_ON}trained{TRAINED_OFF}  masked  {BOUNDARY_COLOR}{PLAIN_BOUNDARY}{TRAINED_OFF} sample boundary"
    return f"legend: {PLAIN_OPEN}trained{PLAIN_CLOSE}  masked  {PLAIN_BOUNDARY} sample boundary"
