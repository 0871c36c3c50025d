"""Make a small run directory with a real DeepSpeed ZeRO-3 checkpoint (for the export tests and bench).

Launch with ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/dist/make_zero3_run.py --out RUN_DIR``.
It writes the layout of docs/architecture.md (run.yaml, model_config.json, tokenizer/,
data_manifest.json, checkpoints/latest -> step-N/ with a DeepSpeed save_dir, hermes_state.json,
model_config.json, adapter_config.json for LoRA, base_model/ for LoRA on a config-built model).

This stands in for the trainer's fixtures (``trained_run`` / ``lora_run``) when they are absent; the
model trains a few steps on a repeating token pattern so that its logits are not flat.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--lora", action="store_true", help="train a PEFT LoRA adapter on a config-built base")
    p.add_argument(
        "--exclude-frozen", action="store_true", help="LoRA: leave the frozen base out of the checkpoint"
    )
    p.add_argument("--bf16", action="store_true", help="bf16 training (fp32 master weights in the optimizer)")
    p.add_argument(
        "--no-init", action="store_true", help="skip deepspeed.zero.Init (needed for PEFT wrapping)"
    )
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def build_model(args, ds_config):
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        bos_token_id=128000,
        eos_token_id=128009,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    if args.lora or args.no_init:
        model = LlamaForCausalLM(config)
    else:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = LlamaForCausalLM(config)
    # set after construction: the embedding's padding_idx init cannot index a partitioned (empty) tensor
    config.pad_token_id = 128004
    return config, model


def batch(args, step: int, rank: int) -> torch.Tensor:
    """A repeating pattern of a few ids (so the tiny model learns something), shifted per step/rank."""
    pattern = torch.tensor([128000, 9906, 11, 1917, 0, 128009, 791, 4320, 374, 220, 2983, 13])
    start = (step * 3 + rank) % len(pattern)
    ids = pattern.roll(-start).repeat(args.seq // len(pattern) + 2)[: args.seq]
    return ids.unsqueeze(0)


def main() -> None:
    args = parse_args()
    import deepspeed
    from safetensors.torch import save_file

    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "reduce_bucket_size": 1_000_000,
            "stage3_prefetch_bucket_size": 1_000_000,
        },
        "optimizer": {"type": "AdamW", "params": {"lr": args.lr, "torch_adam": True, "weight_decay": 0.0}},
        "bf16": {"enabled": bool(args.bf16)},
        "gradient_clipping": 1.0,
        "steps_per_print": 1_000_000,
    }
    deepspeed.init_distributed(dist_backend="gloo")
    config, model = build_model(args, ds_config)
    adapter_config = None
    if args.lora:
        from peft import LoraConfig, get_peft_model

        if rank == 0:
            model.save_pretrained(out / "base_model", safe_serialization=True)
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        # LoRA B starts at zero; nudge it so a merge differs from the base even after few steps
        with torch.no_grad():
            gen = torch.Generator().manual_seed(args.seed + 1)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        adapter_config = lora.to_dict()
        adapter_config["base_model_name_or_path"] = str((out / "base_model").resolve())
        adapter_config = json.loads(json.dumps(adapter_config, default=list))
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    losses = []
    for step in range(args.steps):
        ids = batch(args, step, rank)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    step_name = f"step-{args.steps:08d}"
    ckpt = out / "checkpoints" / step_name
    engine.save_checkpoint(str(ckpt), tag="ds", exclude_frozen_parameters=args.exclude_frozen)
    if rank == 0:
        write_json(ckpt / "model_config.json", config.to_dict())
        state = {"step": args.steps, "losses": losses, "lora": adapter_config is not None}
        if adapter_config is not None:
            write_json(ckpt / "adapter_config.json", adapter_config)
            state["base_model"] = str((out / "base_model").resolve())
        write_json(ckpt / "hermes_state.json", state)
        write_json(out / "model_config.json", config.to_dict())
        write_run_files(out, args)
        (out / "checkpoints" / "latest").write_text(step_name + "\n", encoding="utf-8")
        # the gathered 16-bit model is not written by the trainer; the tests compare against DeepSpeed's own
        # zero_to_fp32 instead. save_file is imported to fail early if safetensors is missing.
        del save_file
        print(json.dumps({"losses": losses}))


def write_run_files(out: Path, args) -> None:
    from data_recipes.tokenizer import load_tokenizer, save_tokenizer

    save_tokenizer(load_tokenizer(), out / "tokenizer")
    manifest = {
        "format_version": 1,
        "max_seq_len": 4096,
        "num_samples_in": 120,
        "num_samples_kept": 117,
        "dropped": {"no_assistant_turn": 2, "too_long": 1},
        "num_rows": 9,
        "num_tokens": 35_112,
        "num_trained_tokens": 14_870,
        "packing_efficiency": 0.9524,
        "per_source": {
            "chat": {"num_samples_kept": 80, "num_tokens": 20_001},
            "tools": {"num_samples_kept": 37, "num_tokens": 15_111},
        },
    }
    write_json(out / "data_manifest.json", manifest)
    run_yaml = (
        "model:\n"
        f"  config: {{hidden_size: {args.hidden}, num_hidden_layers: {args.layers}, vocab_size: {args.vocab}}}\n"
        f"lora: {'{r: 8, alpha: 16}' if args.lora else 'null'}\n"
        "train:\n"
        f"  lr: {args.lr}\n"
        f"  steps: {args.steps}\n"
        "  global_batch: 2\n"
        "  seed: 1234\n"
    )
    (out / "run.yaml").write_text(run_yaml, encoding="utf-8")


if __name__ == "__main__":
    main()
