"""TRL compatibility: SFTTrainer(assistant_only_loss=True) with our tokenizer trains exactly our labels."""

from __future__ import annotations

import json
import logging

import pytest

from data_recipes.cli_inspect import SHOWCASE
from data_recipes.cli_render import read_rows
from data_recipes.messages import conversation_from_openai, to_template_messages
from data_recipes.render import IGNORE_INDEX, RenderOptions, render

pytestmark = pytest.mark.integration


def test_sft_trainer_assistant_only_loss_matches_our_renderer(tokenizer, tmp_path, caplog):
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows, ours = [], []
    for origin, raw in read_rows(SHOWCASE):
        conv = conversation_from_openai(raw, origin)
        for thinking in (False, True):
            ours.append(render(conv, tokenizer, RenderOptions(thinking=thinking)))
            rows.append(
                {
                    "messages": json.dumps(to_template_messages(conv)),
                    "tools": json.dumps(list(conv.tools)),  # TRL accepts tools as a JSON string (Arrow-safe)
                    # Our `last` policy; TRL's default (all faithfully rendered turns) is tested below.
                    "chat_template_kwargs": {"thinking": thinking, "last_reply_only": True},
                }
            )
    dataset = Dataset.from_list(rows).map(lambda r: {"messages": json.loads(r["messages"])})
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=128_256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
    )  # fmt: skip
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, report_to=[], use_cpu=True,
        dataset_num_proc=None, bf16=False,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert "end-of-turn token" not in caplog.text, "TRL thinks our template does not train <|eot_id|>"
    prepared = trainer.train_dataset
    assert len(prepared) == len(ours)
    for row, sample in zip(prepared, ours, strict=True):
        assert row["input_ids"] == sample.input_ids
        if "labels" in row:
            assert row["labels"] == sample.labels
        else:
            assert row["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample.labels]


def test_trl_stop_token_probe_passes_with_template_defaults(tokenizer):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)
