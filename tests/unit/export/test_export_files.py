"""Non-weight files of an export (config, generation config, tokenizer, model card) and input resolution."""

from __future__ import annotations

import json

import pytest

from train.export.reading.source import resolve_source
from train.export.writing.folder import (
    CardInfo,
    export_config,
    generation_config,
    model_card,
    write_tokenizer,
)


def test_generation_config_contents():
    gen = generation_config()
    assert gen["eos_token_id"] == [128009, 128001]  # <|eot_id|> first: it ends every assistant turn
    assert (gen["bos_token_id"], gen["pad_token_id"]) == (128000, 128004)
    assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"]) == (True, 0.6, 0.95, 20)


def test_export_config_for_inference():
    from tests.export_fixtures import llama_config

    raw = llama_config(use_cache=False).to_dict()
    raw["_name_or_path"] = "/somewhere"
    cfg = export_config(raw, "LlamaForCausalLM")
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    assert cfg["eos_token_id"] == [128009, 128001] and cfg["use_cache"] is True
    assert "_name_or_path" not in cfg
    with pytest.raises(ValueError, match="vocab_size is 1000"):
        export_config(llama_config(vocab_size=1000).to_dict(), "LlamaForCausalLM")


def test_tokenizer_is_copied_byte_for_byte(tmp_path, tokenizer):
    from data_recipes.tokenizer import chat_template_text, save_tokenizer

    src = save_tokenizer(tokenizer, tmp_path / "tok")
    out = tmp_path / "out"
    out.mkdir()
    template, notes = write_tokenizer(out, src)
    assert template == chat_template_text() and notes == []
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    (src / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"chat_template.jinja and tokenizer_config.json.s chat_template differ"
    ):
        write_tokenizer(tmp_path / "out", src)


def test_missing_tokenizer_falls_back_to_the_repository_one(tmp_path):
    from data_recipes.tokenizer import chat_template_text

    template, notes = write_tokenizer(tmp_path, None)
    assert template == chat_template_text() and "no training tokenizer" in notes[0]
    assert not (tmp_path / ".tokenizer").exists()


def test_model_card_has_data_config_and_serving():
    info = CardInfo(
        name="r1-fp8",
        fmt="fp8",
        source="ZeRO-3 checkpoint /runs/r1/checkpoints/step-00000200",
        step=200,
        manifest={"num_samples_in": 10, "num_samples_kept": 9, "num_tokens": 12345, "packing_efficiency": 0.99,
                  "dropped": {"too_long": 1}, "per_source": {"chat": {"num_samples_kept": 9, "num_tokens": 12345}}},
        run_yaml="train:\n  lr: 1.0e-05\n",
        fp8_ignore=["lm_head"],
        verify_rows=[("logits", "PASS", "ok")],
    )  # fmt: skip
    card = model_card(info)
    assert card.startswith("---\nlibrary_name: transformers")
    for needle in (
        "vllm serve ./ --enable-auto-tool-choice --tool-call-parser hermes",
        "--tool-call-parser qwen25",
        '"chat_template_kwargs": {"enable_thinking": True}',  # the key the reasoning parsers read too
        "--reasoning-parser qwen3",
        "| tokens | 12,345 |",
        "| packing efficiency | 99.00% |",
        "too_long: 1",
        "lr: 1.0e-05",
        "(step 200)",
        "| logits | PASS | ok |",
        "float8_e4m3fn",
    ):
        assert needle in card, needle


def _fake_step(folder, with_state=True):
    ds = folder / "ds"
    ds.mkdir(parents=True)
    (ds / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    (folder / "latest").write_text("ds")
    (folder / "model_config.json").write_text(json.dumps({"model_type": "llama"}))
    if with_state:
        (folder / "hermes_state.json").write_text(json.dumps({"step": 3}))
    return folder


def test_resolve_run_dir_follows_latest_and_falls_back(tmp_path):
    run = tmp_path / "run"
    _fake_step(run / "checkpoints" / "step-00000002")
    _fake_step(run / "checkpoints" / "step-00000004")
    (run / "checkpoints" / "latest").write_text("step-00000002\n")
    assert resolve_source(run).checkpoint_dir.name == "step-00000002"
    (run / "checkpoints" / "latest").unlink()
    src = resolve_source(run)
    assert src.checkpoint_dir.name == "step-00000004" and src.step == 3 and src.run_dir == run.resolve()


def test_resolve_refuses_incomplete_and_unknown_folders(tmp_path):
    step = _fake_step(tmp_path / "run" / "checkpoints" / "step-00000002", with_state=False)
    with pytest.raises(ValueError, match=r"incomplete checkpoint \(no hermes_state.json"):
        resolve_source(step)
    tmp = _fake_step(tmp_path / "run" / "checkpoints" / ".tmp-step-00000004")
    with pytest.raises(ValueError, match="temporary"):
        resolve_source(tmp)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        resolve_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such file"):
        resolve_source(tmp_path / "nope")


def test_resolve_raw_save_dir_needs_a_model_config(tmp_path):
    step = _fake_step(tmp_path / "save", with_state=False)
    (step / "model_config.json").unlink()
    with pytest.raises(ValueError, match="pass --model-config"):
        resolve_source(step)
    (tmp_path / "cfg.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    src = resolve_source(step, model_config=tmp_path / "cfg.json")
    assert src.kind == "zero3" and src.model_config["hidden_size"] == 8 and src.run_dir is None


def test_resolve_refuses_an_already_quantized_folder(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "compressed-tensors"}})
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="already quantized"):
        resolve_source(tmp_path)


def test_gathered_16bit_bin_folder_exports(tmp_path):
    """A ``pytorch_model.bin`` save (DeepSpeed's save_16bit_model) is read memory-mapped, tensors only."""
    import torch

    from tests.export_fixtures import llama_config
    from train.export import export_checkpoint
    from train.export.reading.tensors import read_safetensors_folder

    config = llama_config()
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    state = {k: v.to(torch.bfloat16) for k, v in LlamaForCausalLM(config).state_dict().items()}
    src = tmp_path / "gathered"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")
    config.save_pretrained(str(src))
    result = export_checkpoint(src, tmp_path / "out", verify=False, progress=False)
    ours = read_safetensors_folder(result.out_dir)
    assert set(ours) == set(state)
    assert all(torch.equal(ours[n].materialize(), t) for n, t in state.items())
    assert any("repository's Hermes tokenizer" in n for n in result.notes)
