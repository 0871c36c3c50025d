"""One-GPU check of the long-sequence pieces (issue 9), in <= 8 minutes on one H100 / H200.

    python bench/gpu_check.py --out DIR            # on the GPU machine (bench/gpu_check.sh does this)
    python bench/gpu_check.py --out DIR --cpu-smoke  # the same code at tiny sizes, in seconds (CI)

Needs only torch, transformers and this repository: it never imports deepspeed, trl or datasets (the GPU
machine has none of them) and checks that at the end. Measures, per attention backend available there
(transformers' SDPA with a dense block mask, PyTorch varlen flash attention, FlexAttention, flash-attn
if installed):

1. packed-row isolation in bf16: loss and gradients of a packed row of several samples equal the samples
   run separately (max relative error, per parameter tensor as ||diff|| / ||ref||);
2. forward + backward + AdamW on Llama-3.1-8B-shaped layers (real 8B widths, as many layers as fit with
   gradient checkpointing) at 16,384-token packed rows with a Hermes-like length mix: tokens/s, step
   time, peak memory, MFU (the trainer's FLOP model, train/metrics.py, against the device's dense bf16
   peak);
3. the tiled loss vs the one-shot loss at 16,384 trained tokens x 128,256: peak memory and time.

Writes DIR/gpu_check.json and DIR/gpu_check.md and prints the table.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from train import attention  # noqa: E402
from train.metrics import FlopModel, gpu_peak_tflops  # noqa: E402
from train.tiled import head_ce  # noqa: E402

FORBIDDEN = ("deepspeed", "trl", "datasets")
BUDGET_S = 7 * 60  # stop starting new measurements after this (the check must end within 8 minutes)


@dataclass
class Sizes:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    layers: int | None  # None = as many as fit
    seq: int
    steps: int
    iso_lengths: tuple[int, ...]
    iso_hidden: int
    loss_tokens: int
    tile: int


GPU = Sizes(4096, 14336, 32, 8, 128_256, None, 16_384, 3, (700, 1300, 48, 2000), 1024, 16_384, 4096)
SMOKE = Sizes(64, 128, 4, 2, 1000, 2, 256, 2, (20, 33, 7, 40), 64, 2048, 256)


def hermes_lengths(total: int, gen: torch.Generator) -> list[int]:
    """Sample lengths of one packed row: log-normal around ~2k tokens (long reasoning answers and short
    chats), packed greedily; the last sample fills the row."""
    lengths: list[int] = []
    while sum(lengths) < total:
        n = int(math.exp(7.6 + 0.9 * torch.randn(1, generator=gen).item()))
        lengths.append(max(16, min(n, total - sum(lengths))))
    return lengths


def packed_inputs(lengths, vocab: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=gen)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids.to(device), pos.to(device)


def llama(sizes: Sizes, hidden: int, layers: int, attn: str, dtype, device, smoke: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    ffn = sizes.ffn if hidden == sizes.hidden else 4 * hidden
    heads = sizes.heads if hidden == sizes.hidden else max(4, hidden // 64)
    cfg = LlamaConfig(
        vocab_size=sizes.vocab if hidden == sizes.hidden else (512 if smoke else 32_000),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=131_072,
        rope_theta=500_000.0,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    return model


# ------------------------------------------------------------------------------------------ backends


def backends(device: torch.device, smoke: bool) -> dict[str, tuple[str | None, str]]:
    """label -> (transformers attn name or None when unavailable, note)."""
    attention.register_backends()
    out: dict[str, tuple[str | None, str]] = {"sdpa (dense block mask)": ("sdpa", "transformers built-in")}
    for label, name in (("varlen", "varlen"), ("flex_attention", "flex_attention")):
        why = attention._probe(name, device)
        out[label] = (attention.REGISTERED[name], "") if why is None else (None, why)
    try:
        import flash_attn  # noqa: F401

        out["flash_attention_2 (flash-attn)"] = ("flash_attention_2", "")
    except ImportError:
        out["flash_attention_2 (flash-attn)"] = (None, "flash-attn not installed")
    if smoke:  # the varlen glue with a reference kernel, so CI runs the same code path
        from transformers import AttentionInterface

        fn = functools.partial(attention.varlen_attention_forward, kernel=attention.reference_varlen_kernel)
        AttentionInterface.register("gpu_check_varlen_reference", fn)
        out["varlen (reference kernel, CPU)"] = ("gpu_check_varlen_reference", "smoke only")
    return out


def set_attn(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers
        model.config._attn_implementation = name


# ----------------------------------------------------------------------------------------- isolation


def _loss_grads(model, ids, pos):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, :-1].float()
    ce = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
    ce.backward()
    return ce.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def isolation(model, sizes: Sizes, device) -> dict:
    """Packed row vs each sample alone (targets inside each sample only)."""
    lengths = list(sizes.iso_lengths)
    ids, pos = packed_inputs(lengths, model.config.vocab_size, device, seed=1)
    # the packed row's targets must not cross samples: CE per sample, summed
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].float()
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    ce = sum(
        F.cross_entropy(logits[a : b - 1], ids[0, a + 1 : b], reduction="sum")
        for a, b in itertools.pairwise(bounds)
    )
    ce.backward()
    packed = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    alone_ce, alone = 0.0, {n: torch.zeros_like(g) for n, g in packed.items()}
    for a, b in itertools.pairwise(bounds):
        c, g = _loss_grads(model, ids[:, a:b], pos[:, a:b])
        alone_ce += float(c)
        for n in alone:
            alone[n] += g[n]
    grad_err = max(float((packed[n] - alone[n]).norm() / alone[n].norm().clamp_min(1e-30)) for n in alone)
    return {"loss_rel_err": abs(float(ce.detach()) - alone_ce) / abs(alone_ce), "grad_max_rel_err": grad_err}


# ---------------------------------------------------------------------------------------- throughput


def fit_layers(sizes: Sizes, device) -> int:
    """8B layers that fit with gradient checkpointing, AdamW and bf16 weights (params, grads, m, v)."""
    if sizes.layers:
        return sizes.layers
    free, _ = torch.cuda.mem_get_info(device)
    h = sizes.hidden
    layer_params = 2 * h * h + 2 * h * (h * sizes.kv_heads // sizes.heads) + 3 * h * sizes.ffn
    per_layer = layer_params * 8 + sizes.seq * sizes.hidden * 2  # weights+grad+m+v (bf16), saved input
    fixed = 2 * sizes.vocab * sizes.hidden * 8 + 12e9  # embedding + head states; recompute, attention, loss
    return int(max(1, min(32, (free * 0.9 - fixed) // per_layer)))


def final_hidden(model, ids, pos) -> torch.Tensor:
    """Final-norm hidden states of the row, without the LM head (the trainer's path, train/loss.py)."""
    captured: list[torch.Tensor] = []
    handle = model.get_decoder().norm.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        empty = torch.empty(0, dtype=torch.long, device=ids.device)
        model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=empty)
    finally:
        handle.remove()
    return captured[-1]


def throughput(model, sizes: Sizes, attn_name: str, device, peak_tflops: float | None) -> dict:
    set_attn(model, attn_name)
    gen = torch.Generator().manual_seed(7)
    rows = [hermes_lengths(sizes.seq, gen) for _ in range(sizes.steps + 1)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    head = model.get_output_embeddings()
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "embedding": model.get_input_embeddings().weight.numel(),
        "lm_head": head.weight.numel(),
    }
    flop_model = FlopModel(model.config, counts)
    times, flops = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step, lengths in enumerate(rows):
        ids, pos = packed_inputs(lengths, model.config.vocab_size, device, seed=step)
        sync()
        t0 = time.perf_counter()
        hidden = final_hidden(model, ids, pos)
        objective, _ = head_ce(
            head, hidden[0, :-1], ids[0, 1:], sizes.tile, 1.0 / ids.shape[1], use_deepspeed=False
        )
        objective.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step:  # the first step compiles / warms up
            times.append(time.perf_counter() - t0)
            flops.append(flop_model.step_flops(sum(lengths), sum(lengths) - 1, sum(n * n for n in lengths)))
    step_time = sum(times) / len(times)
    out = {
        "step_time_s": step_time,
        "tokens_per_s": sizes.seq / step_time,
        "mfu": (sum(flops) / sum(times) / (peak_tflops * 1e12)) if peak_tflops else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }
    del opt
    return out


# ------------------------------------------------------------------------------------------ the loss


def loss_memory(sizes: Sizes, device, dtype) -> dict:
    """Tiled vs one-shot LM-head loss on ``loss_tokens`` trained positions x the full vocabulary."""
    torch.manual_seed(0)
    head = torch.nn.Linear(sizes.hidden, sizes.vocab, bias=False, device=device, dtype=dtype)
    hidden = torch.randn(sizes.loss_tokens, sizes.hidden, device=device, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, sizes.vocab, (sizes.loss_tokens,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for label, tile in (("one-shot", 0), (f"tiled ({sizes.tile} tokens)", sizes.tile)):
        times, peak = [], 0.0
        for _ in range(3):
            hidden.grad = head.weight.grad = None
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            objective, ce = head_ce(head, hidden, targets, tile, 1.0 / sizes.loss_tokens, use_deepspeed=False)
            objective.backward()
            sync()
            times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak = max(peak, (torch.cuda.max_memory_allocated(device) - base) / 1e9)
        out[label] = {
            "time_s": sorted(times)[1],
            "peak_extra_gb": peak if device.type == "cuda" else None,
            "loss": float(ce) / sizes.loss_tokens,
        }
    del head, hidden
    return out


# -------------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"GPU check on {env['device']} (torch {env['torch']}, transformers {env['transformers']}, "
        f"dense bf16 peak {env['peak_tflops']} TFLOP/s), {env['wall_s']:.0f} s",
        "",
        "| backend | available | isolation: loss rel err | isolation: max grad rel err | tokens/s | step s | "
        "peak GB | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in result["backends"].items():
        iso, thr = row.get("isolation") or {}, row.get("throughput") or {}

        def fmt(v, spec):
            return format(v, spec) if isinstance(v, int | float) else "-"

        lines.append(
            f"| {label} | {'yes' if row['available'] else 'no: ' + row['note']} | "
            f"{fmt(iso.get('loss_rel_err'), '.1e')} | {fmt(iso.get('grad_max_rel_err'), '.1e')} | "
            f"{fmt(thr.get('tokens_per_s'), ',.0f')} | {fmt(thr.get('step_time_s'), '.2f')} | "
            f"{fmt(thr.get('peak_mem_gb'), '.1f')} | {fmt(thr.get('mfu'), '.1%')} |"
        )
    t = result["throughput_model"]
    lines += [
        "",
        f"Throughput model: {t['layers']} Llama-3.1-8B-shaped layers (hidden {t['hidden']}, ffn {t['ffn']}, "
        f"{t['heads']}/{t['kv_heads']} heads, vocab {t['vocab']:,}), rows of {t['seq']:,} tokens "
        f"(Hermes-like length mix), {t['dtype']}, gradient checkpointing, AdamW, tiled loss.",
        "",
        f"| loss of {result['loss']['tokens']:,} trained tokens x {result['loss']['vocab']:,} | time s | "
        "peak extra GB | loss |",
        "|---|---|---|---|",
    ]
    for label, row in result["loss"]["runs"].items():
        peak = row["peak_extra_gb"]
        lines.append(
            f"| {label} | {row['time_s']:.3f} | {'-' if peak is None else f'{peak:.2f}'} | {row['loss']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def measure(sizes: Sizes, device, smoke: bool, t_start: float) -> dict:
    dtype = torch.float32 if smoke else torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    peak = gpu_peak_tflops(name) if device.type == "cuda" else None
    avail = backends(device, smoke)
    iso_model = llama(sizes, sizes.iso_hidden, 2, "sdpa", dtype if smoke else torch.bfloat16, device, smoke)
    layers = fit_layers(sizes, device)
    big = llama(sizes, sizes.hidden, layers, "sdpa", dtype, device, smoke)
    big.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    big.train()
    rows: dict[str, dict] = {}
    for label, (attn_name, note) in avail.items():
        row: dict = {"available": attn_name is not None, "note": note}
        rows[label] = row
        if attn_name is None:
            continue
        if time.perf_counter() - t_start > BUDGET_S:
            row["note"] = "skipped: time budget"
            continue
        try:
            set_attn(iso_model, attn_name)
            row["isolation"] = isolation(iso_model, sizes, device)
            row["throughput"] = throughput(big, sizes, attn_name, device, peak)
        except Exception as err:  # report and go on: one backend failing must not hide the others
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            row["note"] = "failed: " + row["error"]
        print(f"gpu_check: {label}: {json.dumps(row)}", flush=True)
    del big, iso_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    loss = loss_memory(sizes, device, dtype)
    import transformers

    return {
        "environment": {
            "device": name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peak_tflops": peak,
            "smoke": smoke,
        },
        "backends": rows,
        "throughput_model": {
            "layers": layers,
            "hidden": sizes.hidden,
            "ffn": sizes.ffn,
            "heads": sizes.heads,
            "kv_heads": sizes.kv_heads,
            "vocab": sizes.vocab,
            "seq": sizes.seq,
            "steps": sizes.steps,
            "dtype": str(dtype).removeprefix("torch."),
        },
        "loss": {"tokens": sizes.loss_tokens, "vocab": sizes.vocab, "runs": loss},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, in seconds (CI)")
    parser.add_argument("--layers", type=int, default=None, help="8B-shaped layers (default: as many as fit)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run on the GPU machine, or pass --cpu-smoke", file=sys.stderr)
        return 2
    sizes = SMOKE if args.cpu_smoke else GPU
    if args.layers:
        sizes.layers = args.layers
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    result = measure(sizes, device, args.cpu_smoke, t_start)
    result["environment"]["wall_s"] = time.perf_counter() - t_start
    loaded = [m for m in FORBIDDEN if sys.modules.get(m) is not None]
    result["environment"]["forbidden_modules_loaded"] = loaded
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "gpu_check.md").write_text(text)
    print(text)
    if loaded:
        print(f"gpu_check: FAILED: imported {loaded}; the GPU machine has none of them", file=sys.stderr)
        return 1
    failed = [k for k, v in result["backends"].items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
