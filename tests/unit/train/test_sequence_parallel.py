"""Ulysses sequence parallelism without the collectives: how a packed micro-batch is sliced, and the bad
inputs refused before any rank starts (the 2-rank ZeRO-3 equality is in tests/integration)."""

from __future__ import annotations

import pytest
import torch

from data_recipes.tokenizer import PAD_ID
from train.config import BatchConfig, batch_layout, load_train_config
from train.data import MicroBatch
from train.model import preset_config
from train.sequence_parallel import SPGroup, check_heads, shard_micro_batch


def micro_batch(length: int) -> MicroBatch:
    ids = torch.arange(100, 100 + length).unsqueeze(0)
    pos = torch.cat([torch.arange(4), torch.arange(length - 4)]).unsqueeze(0)
    index = torch.tensor([0, 2, 4, length - 3, length - 2])
    return MicroBatch(ids, pos, index, ids[0, index + 1], [3], [4, length - 4])


@pytest.mark.parametrize("length,size", [(12, 2), (13, 2), (13, 4), (10, 3)])
def test_slices_cover_the_row_and_every_trained_token_once(length, size):
    mb = micro_batch(length)
    shards = [shard_micro_batch(mb, SPGroup(size, r, None)) for r in range(size)]
    pad = -length % size
    assert {s.input_ids.shape[1] for s in shards} == {(length + pad) // size}
    ids = torch.cat([s.input_ids for s in shards], dim=1)[0]
    pos = torch.cat([s.position_ids for s in shards], dim=1)[0]
    assert ids[:length].tolist() == mb.input_ids[0].tolist() and ids[length:].tolist() == [PAD_ID] * pad
    assert pos[:length].tolist() == mb.position_ids[0].tolist()
    assert pos[length:].tolist() == list(range(pad))  # the pad is its own sample: nothing attends to it
    chunk = (length + pad) // size
    rebuilt = [int(i) + r * chunk for r, s in enumerate(shards) for i in s.target_index]
    assert rebuilt == mb.target_index.tolist()
    assert torch.cat([s.targets for s in shards]).tolist() == mb.targets.tolist()
    assert sum(s.num_tokens for s in shards) == length  # pad tokens are not counted
    assert sum(s.num_trained for s in shards) == mb.num_trained
    assert all(s.seq_lengths == mb.seq_lengths and s.row_ids == [3] for s in shards)


def test_sequence_parallel_must_divide_world_and_heads():
    with pytest.raises(
        ValueError, match=r"sequence_parallel=3 does not divide the world size 8; use one of \[1, 2, 4, 8\]"
    ):
        batch_layout(BatchConfig(global_batch_size=8), 8, 3)
    layout = batch_layout(BatchConfig(global_batch_size=8), 8, 2)
    assert (layout.data_parallel, layout.grad_accum, layout.data_rank(5)) == (4, 2, 2)
    with pytest.raises(ValueError, match="does not divide the model's 4 attention heads"):
        check_heads(preset_config("tiny"), 3)
    odd = preset_config("tiny", {"hidden_size": 96, "num_attention_heads": 12, "num_key_value_heads": 4})
    with pytest.raises(ValueError, match="4 key/value heads: one must divide the other"):
        check_heads(odd, 6)
    check_heads(preset_config("llama-3.1-70b"), 16)  # 8 KV heads replicated twice: allowed
    with pytest.raises(ValueError, match="sequence_parallel=0 must be >= 1"):
        load_train_config("configs/tiny-cpu.yaml", ["distributed.sequence_parallel=0"])
