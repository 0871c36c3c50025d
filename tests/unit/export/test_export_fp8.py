"""FP8_DYNAMIC export: numerics, layer checks, and a folder that transformers + compressed-tensors load."""

from __future__ import annotations

import json

import pytest
import torch

from train.export.reading.tensors import InMemoryTensor
from train.export.writing.formats import plan_fp8, quantization_config, quantize_rows


def _plain_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: per-row amax / 448 and the division in BF16 (research/cpu-feasibility §6)."""
    w = w.to(torch.bfloat16)
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = amax / torch.tensor(448.0, dtype=torch.bfloat16)
    scale = torch.where(
        scale == 0, torch.tensor(torch.finfo(torch.bfloat16).eps, dtype=torch.bfloat16), scale
    )
    q = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, scale


def test_quantize_rows_matches_plain_bf16_division():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64).unsqueeze(1)
    w[5] = 0.0  # an all-zero row gets the epsilon scale, not a division by zero
    q, scale = quantize_rows(w)
    q_ref, scale_ref = _plain_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.bfloat16 and scale.shape == (64, 1)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    deq = q.float() * scale.float()
    rel = (deq - w.bfloat16().float()).norm() / w.bfloat16().float().norm()
    assert rel < 0.04


def test_row_chunks_quantize_like_the_whole_tensor():
    w = torch.randn(40, 32)
    q_all, s_all = quantize_rows(w)
    q_parts = torch.cat([quantize_rows(w[i : i + 7])[0] for i in range(0, 40, 7)])
    assert torch.equal(q_all.view(torch.uint8), q_parts.view(torch.uint8))
    assert s_all.shape == (40, 1)


def _tensors(config: dict) -> dict:
    from train.export.reading.source import model_layout

    layout = model_layout(config)
    return {n: InMemoryTensor(torch.zeros(s)) for n, s in layout.tensors.items()}


def _config(**kw) -> dict:
    from tests.export_fixtures import llama_config

    return llama_config(**kw).to_dict()


def test_plan_targets_every_decoder_linear_and_not_lm_head():
    config = _config()
    plan = plan_fp8(config, _tensors(config))
    assert len(plan.quantize) == 2 * 7 and "lm_head" not in plan.quantize
    assert all(".layers." in m for m in plan.quantize)
    assert plan.kept_bf16 == ["lm_head"]


def test_plan_names_layers_that_cannot_be_quantized():
    config = _config(intermediate_size=100)
    with pytest.raises(
        ValueError, match=r"cannot be quantized: model\.layers\.0\.mlp\.gate_proj \[100, 64\]"
    ) as err:
        plan_fp8(config, _tensors(config))
    assert "down_proj [64, 100]" in str(err.value) and "--fp8-ignore" in str(err.value)
    plan = plan_fp8(config, _tensors(config), ["re:.*mlp.*"])
    assert all("mlp" not in m for m in plan.quantize) and "model.layers.1.mlp.down_proj" in plan.kept_bf16


def test_plan_refuses_splitting_a_fused_group():
    config = _config()
    with pytest.raises(ValueError, match="fused by vLLM"):
        plan_fp8(config, _tensors(config), ["model.layers.0.self_attn.q_proj"])


def test_quantization_config_is_the_fp8_dynamic_preset():
    qc = quantization_config(["lm_head"]).model_dump()
    group = qc["config_groups"]["group_0"]
    assert (
        qc["format"] == "float-quantized"
        and qc["quantization_status"] == "compressed"
        and qc["ignore"] == ["lm_head"]
    )
    assert group["targets"] == ["Linear"]
    assert (group["weights"]["strategy"], group["weights"]["dynamic"], group["weights"]["type"]) == (
        "channel",
        False,
        "float",
    )
    assert (group["input_activations"]["strategy"], group["input_activations"]["dynamic"]) == ("token", True)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from tests.export_fixtures import save_llama

    return save_llama(tmp_path_factory.mktemp("hf") / "model", dtype=torch.bfloat16)


def test_fp8_export_loads_in_transformers_and_matches_our_dequantization(hf_model, tmp_path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from train.export import export_checkpoint
    from train.export.reading.tensors import read_safetensors_folder

    result = export_checkpoint(hf_model, tmp_path / "fp8", "fp8", progress=False)
    report = result.verify
    assert report is not None and report.ok, report.table()
    assert report.check("weights").status == "pass" and report.check("logits").status == "pass"
    assert result.quantized_layers == 14
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    ours = read_safetensors_folder(tmp_path / "fp8")
    assert ours["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert (
        ours["lm_head.weight"].dtype == torch.bfloat16
        and ours["model.embed_tokens.weight"].dtype == torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "fp8"), quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    name = "model.layers.1.self_attn.o_proj"
    w = model.get_submodule(name).weight.detach()
    q, s = ours[f"{name}.weight"].materialize(), ours[f"{name}.weight_scale"].materialize()
    assert torch.equal(w.float(), (q.float() * s.float()).to(w.dtype).float())


def test_fp8_refuses_non_finite_weights_and_leaves_nothing(tmp_path):
    from safetensors.torch import load_file, save_file

    from tests.export_fixtures import save_llama
    from train.export import export_checkpoint

    src = save_llama(tmp_path / "nan", with_tokenizer=False)
    state = load_file(str(src / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"][3, 7] = float("nan")
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"cannot quantize model\.layers\.1\.mlp\.down_proj: .*NaN"):
        export_checkpoint(src, tmp_path / "out", "fp8", progress=False, verify=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
