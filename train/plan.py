"""``hermes-sft plan CONFIG --nodes N --gpus-per-node G``: will it fit, and how long will it take?

The model is instantiated on the meta device (no memory), so parameter counts are exact. Memory per
GPU under ZeRO-3 (N parameters, T trainable, G GPUs; bytes):

=========================  ======================  ==========================  ===========================
                            ZeRO-3                  + optimizer offload         + optimizer & param offload
=========================  ======================  ==========================  ===========================
parameters (bf16)           2N / G                  2N / G                      0 (host)
gradients (fp32 partition)  4T / G                  0 (host)                    0 (host)
optimizer (fp32 master,m,v) 12T / G                 0 (host)                    0 (host)
gathered working set        4 x largest tensor      same                        same
=========================  ======================  ==========================  ===========================

(the 18 bytes/parameter of full fine-tuning and the working set are DeepSpeed's own estimator).
Activations, per micro-batch of b rows of S tokens, flash-attention (no S^2 term), with gradient
checkpointing: every layer's input (L x b S d x 2 B) plus one layer recomputed in full
(b S (6d + 2 d_kv + 4 d_ff) x 2 B); without it, all layers in full. The LM head only sees trained
positions: b S f x V x 10 B (bf16 logits + fp32 upcast + fp32 gradient; f = trained fraction, 1 by
default = worst case). A fixed allowance covers the CUDA context, NCCL buffers and fragmentation.

Long-sequence settings (issue 9): ``distributed.sequence_parallel`` P divides every per-token term
(activations, logits) by P (each rank holds S/P tokens of a row; Ulysses' all-to-all buffers are the
size of q, k, v and the attention output, inside the 6d term); ``loss.tile_tokens`` t caps the logits
at t x V x 10 B; ``model.tiled_mlp`` replaces the 4 d_ff term of the recomputed layer by d tokens'
worth (one tile of ``hidden_size`` tokens) and costs one more MLP forward (+2 x MLP parameters FLOPs
per token).
Step time = tokens x (6N + 12 L d S) / (G x peak x MFU); the attention term uses the full row length,
an upper bound for packed rows of shorter samples. SP's all-to-all time is not modelled.

``objective: dpo``: a row holds whole pairs (both sides), so memory per micro-batch is the SFT figure.
The reference costs compute, not memory: with the adapter-disabled reference (LoRA) every micro-batch
runs one more no-grad forward (+2N FLOPs per token, its activations freed layer by layer); with a
precomputed reference, one no-grad pass over the dataset before the first step (2N per dataset token)
and ~16 bytes per pair on disk.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from train.config import TrainConfig, load_train_config
from train.ds_config import load_template, offloads_optimizer, offloads_params
from train.model import load_model_config, meta_model

GB = 1e9
RUNTIME_OVERHEAD_GB = 4.0


@dataclass
class ModelShape:
    total: int
    trainable: int
    largest_tensor: int
    layers: int
    hidden: int
    kv_dim: int
    ffn: int
    vocab: int


@dataclass
class MemoryPlan:
    name: str
    params: float
    grads: float
    optimizer: float
    working_set: float
    activations: float
    logits: float
    overhead: float
    host_per_node: float

    @property
    def total(self) -> float:
        return (
            self.params
            + self.grads
            + self.optimizer
            + self.working_set
            + self.activations
            + self.logits
            + self.overhead
        )


def model_shape(cfg: TrainConfig) -> tuple[ModelShape, object]:
    hf = load_model_config(cfg.model, allow_missing_path=True)
    model = meta_model(hf)
    total = sum(p.numel() for p in model.parameters())
    trainable = total
    if cfg.lora.enabled:
        targets = set(cfg.lora.target_modules)
        trainable = sum(
            cfg.lora.r * (m.in_features + m.out_features)
            for name, m in model.named_modules()
            if name.rsplit(".", 1)[-1] in targets and isinstance(m, torch.nn.Linear)
        )
    heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    shape = ModelShape(
        total=total,
        trainable=trainable,
        largest_tensor=max(p.numel() for p in model.parameters()),
        layers=hf.num_hidden_layers,
        hidden=hf.hidden_size,
        kv_dim=getattr(hf, "num_key_value_heads", heads) * head_dim,
        ffn=hf.intermediate_size,
        vocab=hf.vocab_size,
    )
    return shape, hf


def memory_plans(
    shape: ModelShape,
    gpus: int,
    gpus_per_node: int,
    seq: int,
    micro: int,
    checkpointing: bool,
    trained_frac: float,
    *,
    sp: int = 1,
    tile_tokens: int = 0,
    tiled_mlp: bool = False,
) -> list[MemoryPlan]:
    n, t = shape.total, shape.trainable
    tokens = micro * seq / sp  # this rank's share of the micro-batch
    mlp_tokens = min(tokens, shape.hidden) if tiled_mlp else tokens
    per_layer = (tokens * (6 * shape.hidden + 2 * shape.kv_dim) + mlp_tokens * 4 * shape.ffn) * 2
    layer_inputs = shape.layers * tokens * shape.hidden * 2
    activations = (layer_inputs + per_layer) if checkpointing else shape.layers * per_layer
    trained = tokens * trained_frac
    logits = (min(trained, tile_tokens) if tile_tokens else trained) * shape.vocab * 10
    working = 4 * shape.largest_tensor
    per_node = gpus_per_node / gpus  # this node's share of partitioned host state
    # bytes of fp32 grads + master + moments per trainable parameter, ×1.5 pinned-buffer factor (DeepSpeed's)
    host_opt = 16 * t * per_node * 1.5
    host_params = 2 * n * per_node * 1.5
    common = dict(
        working_set=working, activations=activations, logits=logits, overhead=RUNTIME_OVERHEAD_GB * GB
    )
    return [
        MemoryPlan("ZeRO-3", 2 * n / gpus, 4 * t / gpus, 12 * t / gpus, host_per_node=0.0, **common),
        MemoryPlan("+ optimizer offload", 2 * n / gpus, 0.0, 0.0, host_per_node=host_opt, **common),
        MemoryPlan(
            "+ optimizer & param offload", 0.0, 0.0, 0.0, host_per_node=host_opt + host_params, **common
        ),
    ]


def active_plan_index(cfg: TrainConfig, config_dir: Path) -> int:
    ds = load_template(cfg.distributed.deepspeed, config_dir)
    return 2 if offloads_params(ds) else 1 if offloads_optimizer(ds) else 0


def trained_fraction(cfg: TrainConfig, given: float | None) -> tuple[float, str]:
    if given is not None:
        return given, "given"
    manifest = Path(cfg.data.path) / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("num_tokens"):
            return m["num_trained_tokens"] / m["num_tokens"], "dataset manifest"
    return 1.0, "worst case"


def seq_len(cfg: TrainConfig) -> int:
    if cfg.data.max_seq_len:
        return cfg.data.max_seq_len
    manifest = Path(cfg.data.path) / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["max_seq_len"])
    raise ValueError("set data.max_seq_len in the config (the dataset is not built yet)")


def render(cfg: TrainConfig, args: argparse.Namespace, shape: ModelShape) -> tuple[str, bool]:
    gpus = args.nodes * args.gpus_per_node
    seq, micro = seq_len(cfg), cfg.batch.micro_batch_size
    frac, frac_src = trained_fraction(cfg, args.trained_fraction)
    plans = memory_plans(
        shape,
        gpus,
        args.gpus_per_node,
        seq,
        micro,
        cfg.model.gradient_checkpointing,
        frac,
        **long_settings(cfg),
    )
    active = active_plan_index(cfg, Path(args.config).resolve().parent)
    lines = [
        f"model: {shape.total:,} parameters ({shape.trainable:,} trainable{', LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else ''}); "
        f"{shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab:,}",
        f"cluster: {args.nodes} node(s) x {args.gpus_per_node} GPU(s) = {gpus} GPUs of {args.gpu_mem_gb:g} GB; "
        f"micro-batch {micro} x {seq:,} tokens, gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}, "
        f"trained fraction {frac:.2f} ({frac_src})",
        *long_sequence_lines(cfg, shape, plans[0], gpus, args.gpus_per_node, seq, frac),
        "",
        f"{'per-GPU memory (GB)':<34}" + "".join(f"{p.name:>30}" for p in plans),
    ]
    rows = [
        ("parameters (bf16, partitioned)", "params"),
        ("gradients (fp32 partition)", "grads"),
        ("optimizer states (fp32 master+m+v)", "optimizer"),
        ("gathered working set", "working_set"),
        ("activations", "activations"),
        (
            "logits (one loss shard)" if cfg.loss.tile_tokens else "logits (trained positions)",
            "logits",
        ),
        ("runtime overhead", "overhead"),
        ("total", "total"),
    ]
    for label, attr in rows:
        lines.append(f"{label:<34}" + "".join(f"{getattr(p, attr) / GB:>30.1f}" for p in plans))
    lines.append(f"{'host RAM per node (GB)':<34}" + "".join(f"{p.host_per_node / GB:>30.0f}" for p in plans))
    verdicts = ["fits" if p.total <= args.gpu_mem_gb * GB else "DOES NOT FIT" for p in plans]
    lines.append(f"{'verdict':<34}" + "".join(f"{v:>30}" for v in verdicts))
    plan, budget = plans[active], args.gpu_mem_gb * GB
    fits = plan.total <= budget
    lines += ["", f"this config uses: {plan.name} (distributed.deepspeed={cfg.distributed.deepspeed})"]
    lines.append(
        f"VERDICT: {'FITS' if fits else 'DOES NOT FIT'}: {plan.total / GB:.1f} GB per GPU of {args.gpu_mem_gb:g} GB"
    )
    if not fits:
        lines.append("advice: " + advice(plan, plans, active, budget))
    lines += ["", *time_lines(cfg, args, shape, gpus, seq)]
    return "\n".join(lines), fits


def long_settings(cfg: TrainConfig) -> dict:
    return {
        "sp": cfg.distributed.sequence_parallel,
        "tile_tokens": cfg.loss.tile_tokens,
        "tiled_mlp": cfg.model.tiled_mlp,
    }


def long_sequence_lines(
    cfg, shape: ModelShape, plan: MemoryPlan, gpus: int, per_node: int, seq: int, frac: float
):
    """What sequence parallelism, the tiled loss and the tiled MLP buy, each against it switched off."""
    settings = long_settings(cfg)
    ckpt, micro = cfg.model.gradient_checkpointing, cfg.batch.micro_batch_size
    off = {"sp": 1, "tile_tokens": 0, "tiled_mlp": False}
    names = {"sp": "sequence parallel", "tile_tokens": "tiled loss", "tiled_mlp": "tiled MLP"}
    lines = [
        f"long sequences: sequence_parallel {settings['sp']} (data-parallel {gpus // settings['sp']}), "
        f"loss.tile_tokens {settings['tile_tokens'] or 'off'}, tiled MLP {'on' if settings['tiled_mlp'] else 'off'}"
    ]
    for key, name in names.items():
        if settings[key] == off[key]:
            continue
        without = memory_plans(shape, gpus, per_node, seq, micro, ckpt, frac, **{**settings, key: off[key]})[
            0
        ]
        saved = (without.activations + without.logits) - (plan.activations + plan.logits)
        lines.append(
            f"  {name} saves {saved / GB:.1f} GB per GPU (activations + logits {(without.activations + without.logits) / GB:.1f} -> {(plan.activations + plan.logits) / GB:.1f} GB)"
        )
    return lines


def advice(plan: MemoryPlan, plans: list[MemoryPlan], active: int, budget: float) -> str:
    per_batch = plan.activations + plan.logits + plan.working_set + plan.overhead
    if per_batch > budget:
        return (
            "one micro-batch alone needs more than a GPU (activations + logits); split rows over GPUs with "
            "distributed.sequence_parallel, set loss.tile_tokens (e.g. 2048) and model.tiled_mlp: true, keep "
            "gradient checkpointing on, shorten rows (data.max_seq_len), or pass the real --trained-fraction"
        )
    options = ["add nodes (model states shrink with the GPU count)"]
    offload = plans[-1]
    if active != len(plans) - 1 and offload.total <= budget:
        options.append(
            f"or distributed.deepspeed=zero3-offload (optimizer and parameters in host RAM: "
            f"{offload.total / GB:.1f} GB per GPU, {offload.host_per_node / GB:,.0f} GB RAM per node)"
        )
    return "; ".join([*options, "or train LoRA adapters"])


def time_lines(
    cfg: TrainConfig, args: argparse.Namespace, shape: ModelShape, gpus: int, seq: int
) -> list[str]:
    tokens = cfg.batch.global_batch_size * seq
    k = 6 if not cfg.lora.enabled else 4
    reference = dpo_reference(cfg)
    k += 2 if reference == "adapter" else 0  # the adapter-disabled reference forward
    flops_per_token = k * shape.total + 12 * shape.layers * shape.hidden * seq
    if cfg.model.tiled_mlp:  # TiledMLP recomputes each MLP forward once more in its backward
        flops_per_token += 2 * 3 * shape.hidden * shape.ffn * shape.layers
    step = tokens * flops_per_token / (gpus * args.gpu_tflops * 1e12 * args.mfu)
    total_h = step * cfg.schedule.steps / 3600
    extra = dpo_lines(cfg, args, shape, gpus, seq, reference) if reference else []
    return [
        *extra,
        f"tokens per step: {tokens:,} ({cfg.batch.global_batch_size} rows x {seq:,}); "
        f"{flops_per_token / 1e9:,.1f} GFLOP per token ({k}N + 12 L d S"
        f"{', incl. 2N reference forward' if reference == 'adapter' else ''})",
        f"step time at {args.mfu:.0%} MFU of {args.gpu_tflops:g} TFLOP/s: {step:.1f} s; "
        f"{cfg.schedule.steps:,} steps: {total_h:.1f} h ({total_h * gpus:,.0f} GPU-hours); "
        f"{tokens / step / gpus:,.0f} tokens/s per GPU",
    ]


def dpo_reference(cfg: TrainConfig) -> str | None:
    """``adapter`` / ``precomputed`` for ``objective: dpo``, None for SFT."""
    if cfg.objective != "dpo":
        return None
    if cfg.dpo.reference != "auto":
        return cfg.dpo.reference
    return "adapter" if cfg.lora.enabled else "precomputed"


def dpo_lines(
    cfg: TrainConfig, args: argparse.Namespace, shape: ModelShape, gpus: int, seq: int, reference: str
) -> list[str]:
    """What DPO adds: pairs per step (from the manifest when built) and the reference's cost."""
    manifest_path = Path(cfg.data.path) / "manifest.json"
    m = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    lines = [
        f"objective: dpo ({cfg.dpo.loss_type}, beta {cfg.dpo.beta:g}); both sides of a pair share a packed row"
    ]
    if m.get("kind") == "preference" and m.get("num_rows"):
        pairs = sum(s.get("num_pairs", 0) for s in m["splits"].values())
        lines.append(
            f"pairs: {pairs:,} in {m['num_rows']:,} rows ({pairs / m['num_rows']:.1f} per row, "
            f"~{pairs / m['num_rows'] * cfg.batch.global_batch_size:,.0f} per step)"
        )
    if reference == "adapter":
        lines.append(
            "reference: the model with its LoRA adapter disabled (no second copy; +2N FLOPs per token)"
        )
    else:
        dataset_tokens = m.get("num_tokens")
        if dataset_tokens:
            hours = dataset_tokens * 2 * shape.total / (gpus * args.gpu_tflops * 1e12 * args.mfu) / 3600
            when = f"{dataset_tokens:,} dataset tokens x 2N: {hours:.2f} h"
        else:
            when = "2N FLOPs per dataset token (build the dataset for an estimate)"
        lines.append(
            f"reference: precomputed once before step 1 into RUN_DIR/reference/ ({when}); reused on resume"
        )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="train YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--nodes", type=int, required=True, help="number of nodes")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (default 80)")
    parser.add_argument(
        "--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU (H100: 989)"
    )
    parser.add_argument(
        "--mfu", type=float, default=0.40, help="assumed model FLOPs utilization (default 0.40)"
    )
    parser.add_argument(
        "--trained-fraction",
        type=float,
        default=None,
        help="share of tokens with a label (LM-head memory); default: the dataset manifest's, "
        "or 1.0 (worst case) when the dataset is not built",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the plan does not fit")


def run(args: argparse.Namespace) -> int:
    if args.nodes < 1 or args.gpus_per_node < 1 or not 0 < args.mfu <= 1:
        raise ValueError("--nodes and --gpus-per-node must be >= 1 and --mfu in (0, 1]")
    cfg = load_train_config(args.config, args.overrides)
    shape, _ = model_shape(cfg)
    text, fits = render(cfg, args, shape)
    print(text)
    return 1 if (args.strict and not fits) else 0
