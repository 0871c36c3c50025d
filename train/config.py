"""The training config: one dataclass per section, a docstring under every field.

A YAML file is an instance of :class:`TrainConfig`; ``data_recipes.config_io`` loads it with type checks,
rejects unknown keys and applies dotted command-line overrides (``optim.lr=1e-5``)::

    cfg = load_train_config("configs/tiny-cpu.yaml", ["schedule.steps=20"])

Checks that need only the config live in ``__post_init__`` (``ValueError`` with what to do); checks that
need the world size or the dataset run at setup (:func:`batch_layout`, ``train.data``).
This module imports no torch, so ``hermes-sft train --check`` and the SLURM dry run stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_recipes.config_io import load_config, to_dict

LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PRESETS = ("tiny", "llama-3.1-8b", "llama-3.1-70b")


@dataclass
class ModelConfig:
    preset: Literal["tiny", "llama-3.1-8b", "llama-3.1-70b"] | None = None
    """A known architecture. Alone: built with random weights (tests, demo). With ``path``: the checkpoint's
    config.json must match it (guards against loading the wrong model), and ``hermes-sft plan`` works
    where the weights are not present."""
    path: str | None = None
    """A local Hugging Face checkpoint folder (config.json + safetensors), loaded with ``from_pretrained``
    and partitioned by ZeRO-3 while loading: no rank ever holds the whole model."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """LlamaConfig fields changed on top of the preset (e.g. ``num_hidden_layers: 1``); preset only."""
    tokenizer: str | None = None
    """A Llama-3.1 tokenizer folder; null = the built-in Hermes tokenizer. Must match the dataset's."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute / parameter dtype. auto = bfloat16 on GPU, float32 on CPU (bf16 matmuls are slow there)."""
    attn_implementation: Literal["auto", "flash_attention_2", "varlen", "flex_attention", "sdpa", "eager"] = (
        "auto"
    )
    """How packed samples attend only to themselves (train/attention.py). varlen = PyTorch's variable-length
    flash attention (torch >= 2.10, CUDA), cu_seqlens from position_ids; flex_attention = FlexAttention with a
    document mask from position_ids; sdpa = a dense block-causal mask (O(T^2) memory). auto on GPU: the
    flash-attn package if installed, else varlen, else flex_attention, else sdpa (with a warning); sdpa on CPU."""
    gradient_checkpointing: bool = True
    """Recompute each decoder layer in the backward pass (activation memory ~ one layer input per layer)."""
    tiled_mlp: bool = False
    """Run each decoder MLP over sequence tiles of ``hidden_size`` tokens (DeepSpeed's ALST TiledMLP): the
    [T, intermediate] activations of a long row never exist at once. Costs one extra MLP forward per layer."""

    def __post_init__(self) -> None:
        if self.preset is None and self.path is None:
            raise ValueError(
                "model: set model.path (a local checkpoint) and/or model.preset (tiny, llama-3.1-8b, ...)"
            )
        if self.overrides and (self.preset is None or self.path is not None):
            raise ValueError("model.overrides applies to a config-built preset only (no model.path)")


@dataclass
class DataConfig:
    path: str
    """DATASET_DIR written by ``hermes-sft data build`` (splits + manifest.json)."""
    max_seq_len: int | None = None
    """Expected packed-row length. The dataset manifest's ``max_seq_len`` may not exceed it (the memory
    plan assumes it); the planner reads it when the dataset is not built yet."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str | None = "validation"
    """Split for the eval loss; null disables evaluation (also skipped when the split is absent or empty)."""
    eval_max_rows: int | None = None
    """Evaluate on at most this many rows of the eval split (null = all)."""
    shuffle: bool = True
    """Shuffle rows each epoch (a permutation seeded by ``seed`` and the epoch; resumable exactly)."""

    def __post_init__(self) -> None:
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError("data.max_seq_len must be at least 2")


@dataclass
class LossConfig:
    tile_tokens: int = 0
    """Trained positions per LM-head shard: the loss of a micro-batch never holds more than this many rows of
    logits (DeepSpeed's ALST TiledFusedLogitsLoss, train/tiled.py). 0 = all trained positions at once. Same
    loss and gradients either way (the global-token normalization is unchanged)."""

    def __post_init__(self) -> None:
        if self.tile_tokens < 0:
            raise ValueError(
                f"loss.tile_tokens={self.tile_tokens} is negative; use 0 (one-shot) or a shard size such as 4096"
            )


@dataclass
class BatchConfig:
    global_batch_size: int = 384
    """Packed rows per optimizer step, over all ranks and micro-batches (Hermes 4: 384 rows of 16,384)."""
    micro_batch_size: int = 1
    """Packed rows per rank per forward/backward; they are concatenated into one sequence (no padding).
    Gradient accumulation = global_batch_size / (micro_batch_size x world size)."""

    def __post_init__(self) -> None:
        if self.global_batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch.global_batch_size and batch.micro_batch_size must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch.global_batch_size={self.global_batch_size} is not a multiple of "
                f"batch.micro_batch_size={self.micro_batch_size}"
            )


@dataclass
class OptimConfig:
    lr: float = 1e-5
    """Peak learning rate (Hermes 4: 1e-5 for 70B, 5e-6 for 405B)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices; norms and biases never decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    torch_adam: bool | None = None
    """Use torch.optim.AdamW instead of DeepSpeed's compiled Adam. null = torch AdamW unless the optimizer
    is offloaded to CPU (then DeepSpeedCPUAdam, built once by JIT). torch AdamW avoids a ~90 s build."""

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.lr <= 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.lr must be > 0; optim.grad_clip and optim.weight_decay must be >= 0")


@dataclass
class ScheduleConfig:
    steps: int
    """Optimizer steps to train (Hermes 4: 9,000)."""
    warmup_steps: int = 0
    """Linear warmup from 0 to the peak LR (Hermes 4: 300)."""
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak (cosine / linear)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("schedule.steps must be >= 1")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"schedule.warmup_steps={self.warmup_steps} must be in [0, steps={self.steps})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("schedule.min_lr_ratio must be in [0, 1]")


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a PEFT LoRA adapter instead of all weights."""
    r: int = 16
    """Adapter rank."""
    alpha: float = 32.0
    """Scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_ALL_LINEAR))
    """Linear layers that get an adapter; default all attention and MLP projections."""
    save_frozen: bool = False
    """Also put the frozen base weights in each checkpoint (70B: 141 GB each). Off: checkpoints hold the
    adapter + optimizer only and record where the base comes from."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora: r must be >= 1, alpha > 0 and dropout in [0, 1)")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty")


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Save every N optimizer steps (0 = only at the end). A final checkpoint is always written."""
    keep_last: int = 3
    """Keep the newest K complete checkpoints; older ones are deleted after a new one is complete."""
    resume: str = "auto"
    """auto = continue from RUN_DIR/checkpoints/latest if there is one; never = refuse to start when the
    output dir already holds checkpoints; or a path to a step-N checkpoint folder."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ValueError("checkpoint.every_steps must be >= 0 and checkpoint.keep_last >= 1")


@dataclass
class LoggingConfig:
    every_steps: int = 1
    """Write metrics every N steps (metrics.jsonl, TensorBoard, W&B)."""
    eval_every_steps: int = 0
    """Eval loss on the eval split every N steps (0 = only at the end)."""
    tensorboard: bool = True
    """Write TensorBoard events to RUN_DIR/tb."""
    wandb: bool = False
    """Log to Weights & Biases (needs ``pip install wandb`` and a login)."""
    wandb_project: str = "hermes-sft"
    """W&B project name."""
    progress: bool = True
    """Progress bar on rank 0."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device, for MFU. null = look up the GPU model (bf16 dense), or estimate a
    CPU from its cores, clock and SIMD width."""

    def __post_init__(self) -> None:
        if self.every_steps < 1 or self.eval_every_steps < 0:
            raise ValueError("logging.every_steps must be >= 1 and logging.eval_every_steps >= 0")


@dataclass
class DistributedConfig:
    deepspeed: str = "zero3"
    """DeepSpeed config: a name under configs/deepspeed/ (zero3, zero3-offload) or a path to a JSON file.
    Its "auto" values are filled from this config."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Collective backend; auto = nccl on GPU, gloo on CPU."""
    timeout_minutes: int = 30
    """Collective timeout before a hung rank fails the job."""
    sequence_parallel: int = 1
    """Ulysses sequence parallelism (train/sequence_parallel.py): each packed micro-batch is split over this
    many consecutive ranks, which exchange attention heads all-to-all. 1 = off. Data-parallel size = world
    size / sequence_parallel; it must divide the world size and the attention head counts."""

    def __post_init__(self) -> None:
        if self.sequence_parallel < 1:
            raise ValueError(f"distributed.sequence_parallel={self.sequence_parallel} must be >= 1 (1 = off)")


@dataclass
class DPOConfig:
    """Direct preference optimization (``objective: dpo``) on a ``kind: preference`` dataset."""

    beta: float = 0.1
    """Strength of the implicit KL penalty to the reference model (the rewards are beta x log-ratio)."""
    loss_type: Literal["sigmoid", "ipo", "robust"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al.); ipo: IPO, squared loss on the per-token-averaged log-ratio margin
    (TRL's normalization); robust: rDPO, unbiased under ``label_smoothing`` flipped labels."""
    label_smoothing: float = 0.0
    """robust only: assumed fraction of pairs whose preference is flipped, in [0, 0.5)."""
    rpo_alpha: float = 0.0
    """Weight of an SFT term on the chosen side (RPO: NLL over the global batch's chosen trained tokens,
    token-normalized like the SFT loss). 0 = off."""
    reference: Literal["auto", "adapter", "precomputed"] = "auto"
    """Reference log-probs. adapter (LoRA only): the same model with the adapter disabled, one extra
    forward per micro-batch and no second copy of the weights. precomputed: one pass over the dataset
    with the initial weights before training, stored in RUN_DIR/reference/ and reused on resume.
    auto = adapter with LoRA, precomputed for full weights."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "robust":
            raise ValueError(
                f"dpo.label_smoothing applies to dpo.loss_type=robust (rDPO), not {self.loss_type}; "
                "set dpo.loss_type=robust or dpo.label_smoothing=0"
            )
        if self.rpo_alpha < 0:
            raise ValueError(f"dpo.rpo_alpha must be >= 0, got {self.rpo_alpha}")


@dataclass
class TrainConfig:
    """A training run: what to train, on what data, how, and where to write it."""

    output_dir: str
    """RUN_DIR: config, tokenizer, metrics and checkpoints (see docs/architecture.md). Must be on a
    filesystem shared by all nodes."""
    model: ModelConfig
    """The model to fine-tune."""
    data: DataConfig
    """The packed dataset."""
    schedule: ScheduleConfig
    """Steps and learning-rate schedule."""
    seed: int = 42
    """Seed for weight init (presets), data order and dropout."""
    objective: Literal["sft", "dpo"] = "sft"
    """sft: cross-entropy on the trained tokens of an SFT dataset. dpo: preference optimization on a
    ``kind: preference`` dataset (settings in ``dpo``; see docs/training.md)."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO settings (used when ``objective: dpo``)."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Global / micro batch sizes."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW settings and gradient clipping."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How the LM-head loss is computed (tiled or one-shot)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA (off = full fine-tuning)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence, retention and resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics, eval cadence, progress."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """DeepSpeed / collectives."""

    def __post_init__(self) -> None:
        if self.objective == "dpo" and self.dpo.reference == "adapter" and not self.lora.enabled:
            raise ValueError(
                "dpo.reference=adapter needs lora.enabled=true (the reference is the model with its adapter "
                "disabled); use dpo.reference=precomputed (or auto) for full fine-tuning"
            )
        # The DPO objective sums each side's log-probs over whole rows in one LM-head call (train/dpo.py):
        # it neither splits a row over an SP group nor tiles the head, so those settings would be ignored.
        if self.objective == "dpo" and self.distributed.sequence_parallel > 1:
            raise ValueError(
                f"objective: dpo with distributed.sequence_parallel={self.distributed.sequence_parallel} is not "
                "supported (a pair's log-probs need whole rows on one rank): set distributed.sequence_parallel: 1"
            )
        if self.objective == "dpo" and self.loss.tile_tokens:
            raise ValueError(
                f"objective: dpo computes the trained positions' logits at once; loss.tile_tokens="
                f"{self.loss.tile_tokens} applies to the SFT loss only: set loss.tile_tokens: 0"
            )


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load and validate a train YAML with dotted overrides (raises ConfigError, a ValueError)."""
    return load_config(TrainConfig, path, overrides)


def config_as_dict(cfg: TrainConfig) -> dict[str, Any]:
    return to_dict(cfg)


@dataclass(frozen=True)
class BatchLayout:
    """How the global batch splits over ranks and micro-steps for a given world size."""

    global_batch_size: int
    micro_batch_size: int
    world_size: int
    grad_accum: int
    sequence_parallel: int = 1
    """Ranks sharing each micro-batch (Ulysses); the data-parallel size is world_size / sequence_parallel."""

    @property
    def rows_per_rank(self) -> int:
        return self.micro_batch_size * self.grad_accum

    @property
    def data_parallel(self) -> int:
        return self.world_size // self.sequence_parallel

    def data_rank(self, rank: int) -> int:
        """The data-parallel index of ``rank``: sequence-parallel groups are consecutive ranks."""
        return rank // self.sequence_parallel


def batch_layout(batch: BatchConfig, world_size: int, sequence_parallel: int = 1) -> BatchLayout:
    """Gradient accumulation for ``world_size`` ranks, of which each ``sequence_parallel`` consecutive ones
    share a micro-batch; ValueError with valid sizes if it does not divide."""
    if world_size % sequence_parallel:
        raise ValueError(
            f"distributed.sequence_parallel={sequence_parallel} does not divide the world size {world_size}; "
            f"use one of {[d for d in range(1, world_size + 1) if world_size % d == 0]} or change the rank count"
        )
    data_parallel = world_size // sequence_parallel
    per_step = batch.micro_batch_size * data_parallel
    if batch.global_batch_size % per_step:
        lower = batch.global_batch_size // per_step * per_step
        fits = [g for g in (lower, lower + per_step) if g > 0]
        raise ValueError(
            f"batch.global_batch_size={batch.global_batch_size} is not divisible by micro_batch_size "
            f"({batch.micro_batch_size}) x {'data-parallel' if sequence_parallel > 1 else 'world'} size "
            f"({data_parallel}) = {per_step}; use a multiple of "
            f"{per_step} (e.g. {' or '.join(map(str, fits))}) or change batch.micro_batch_size / the rank count"
        )
    return BatchLayout(
        batch.global_batch_size,
        batch.micro_batch_size,
        world_size,
        batch.global_batch_size // per_step,
        sequence_parallel,
    )
