"""Where a run stands: the numbers of one optimizer step, and the counters a resumed run continues from.

:class:`TrainingProgress` is the one place the resumable counters live. Saving a checkpoint writes
``progress.state_dict()`` into ``hermes_state.json`` and resuming reads it back with
``load_state_dict()`` (the pattern of torchtitan's ``Trainer.state_dict`` and torchtune's
``TrainingProgress``), so the two can never disagree about what is saved. The keys are the ones
``hermes_state.json`` has always had (docs/architecture.md), so older checkpoints resume unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    """One optimizer step, summed over every rank."""

    loss: float
    """Mean cross-entropy over the trained tokens of the global batch (DPO: mean loss over its pairs)."""
    grad_norm: float | None
    """Global gradient norm before clipping (None until the update is applied)."""
    lr: float
    """Learning rate the step used."""
    tokens: int
    """Tokens in the global batch (packed rows, all positions)."""
    trained_tokens: int
    """Tokens with a label (assistant spans) in the global batch."""
    sum_sq_lengths: int
    """Sum of squared sample lengths (the attention FLOP term)."""
    stop: bool
    """Some rank was asked to stop (signal or stop file)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Objective metrics (DPO: rewards per side, reward accuracy and margin, log-probs per side, pairs)."""


@dataclass
class TrainingProgress:
    """The resumable counters of a run; they advance once per optimizer step."""

    step: int = 0
    """Optimizer steps completed."""
    rows_consumed: int = 0
    """Packed rows taken from the data stream (the stream restarts exactly from here)."""
    tokens_seen: int = 0
    """Tokens trained on so far, all positions."""
    trained_tokens_seen: int = 0
    """Tokens with a label trained on so far."""
    last_loss: float | None = None
    """Loss of the latest step (None before the first)."""
    last_metrics: dict[str, Any] = field(default_factory=dict)
    """Objective metrics of the latest step (DPO rewards, accuracy, margin), for the run summary."""

    def advance(self, stats: StepStats, rows: int) -> None:
        """Count one optimizer step over ``rows`` packed rows."""
        self.step += 1
        self.rows_consumed += rows
        self.tokens_seen += stats.tokens
        self.trained_tokens_seen += stats.trained_tokens
        self.last_loss = stats.loss
        self.last_metrics = dict(stats.extra)

    def epoch(self, num_rows: int) -> float:
        """Passes over a split of ``num_rows`` rows (fractional)."""
        return self.rows_consumed / num_rows

    def state_dict(self) -> dict[str, Any]:
        """The counters under their ``hermes_state.json`` keys."""
        return {
            "step": self.step,
            "rows_consumed": self.rows_consumed,
            "tokens_seen": self.tokens_seen,
            "trained_tokens_seen": self.trained_tokens_seen,
            "loss": self.last_loss,
            **({"last_metrics": self.last_metrics} if self.last_metrics else {}),  # objective: dpo
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a ``hermes_state.json`` dict (other keys in it are ignored)."""
        self.step = int(state["step"])
        self.rows_consumed = int(state["rows_consumed"])
        self.tokens_seen = int(state["tokens_seen"])
        self.trained_tokens_seen = int(state["trained_tokens_seen"])
        self.last_loss = state.get("loss")
        self.last_metrics = dict(state.get("last_metrics") or {})
