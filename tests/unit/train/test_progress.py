"""TrainingProgress: one object the checkpoint saves and a resume restores, under hermes_state.json's keys."""

from __future__ import annotations

from train.progress import StepStats, TrainingProgress


def stats(loss: float, tokens: int, trained: int) -> StepStats:
    return StepStats(loss, 1.0, 1e-3, tokens, trained, tokens * tokens, stop=False)


def test_advance_counts_steps_rows_and_tokens():
    progress = TrainingProgress()
    progress.advance(stats(2.5, 100, 40), rows=4)
    progress.advance(stats(2.0, 90, 30), rows=4)
    assert (progress.step, progress.rows_consumed, progress.tokens_seen, progress.trained_tokens_seen) == (
        2,
        8,
        190,
        70,
    )
    assert progress.last_loss == 2.0
    assert progress.epoch(num_rows=16) == 0.5


def test_state_dict_round_trips_and_keeps_the_on_disk_keys():
    progress = TrainingProgress()
    progress.advance(stats(3.25, 8169, 64), rows=4)
    state = progress.state_dict()
    # the keys hermes_state.json has always had (older checkpoints resume unchanged)
    assert state == {
        "step": 1,
        "rows_consumed": 4,
        "tokens_seen": 8169,
        "trained_tokens_seen": 64,
        "loss": 3.25,
    }
    restored = TrainingProgress()
    restored.load_state_dict(state)
    assert restored == progress


def test_loads_a_whole_hermes_state_json():
    saved = {  # a checkpoint written before TrainingProgress existed
        "format_version": 1,
        "step": 10,
        "total_steps": 20,
        "rows_consumed": 40,
        "tokens_seen": 81234,
        "trained_tokens_seen": 12000,
        "epoch": 2.1,
        "loss": 9.5,
        "world_size": 2,
        "ds_tag": "ds",
    }
    progress = TrainingProgress()
    progress.load_state_dict(saved)
    assert progress == TrainingProgress(10, 40, 81234, 12000, 9.5)


def test_objective_metrics_of_the_last_step_are_saved_and_restored():
    progress = TrainingProgress()
    dpo = StepStats(0.69, None, 1e-3, 100, 40, 5000, stop=False, extra={"reward_margin": 0.0, "pairs": 3})
    progress.advance(dpo, rows=4)
    state = progress.state_dict()
    assert state["last_metrics"] == {"reward_margin": 0.0, "pairs": 3}
    restored = TrainingProgress()
    restored.load_state_dict(state)
    assert restored == progress
