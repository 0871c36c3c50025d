"""Tiled vs one-shot LM-head loss on CPU: peak memory and time of the loss of one micro-batch.

    python bench/loss_bench.py                       # 8,192 trained tokens x 128,256, tiles of 1,024
    python bench/loss_bench.py --tokens 16384 --tile 2048 --hidden 256

Peak memory: each variant in its own process (peak RSS is per process). Time: a third process runs the
two variants alternately (one-shot, tiled, one-shot, ...) so that load on a shared machine hits both
alike; the fastest run of each is kept. Each run is forward + backward of
``train.tiled.head_ce`` (the trainer's loss, with DeepSpeed's TiledFusedLogitsLoss when tiled) on random
hidden states, fp32 as on CPU. The head weight and its gradient buffer exist before the measurement (a
training step has them either way), so the peak is what the loss itself adds. The hidden size is small
by default (128) so that the CPU time is the loss's, not a big matmul's; the logits are full size.
Goal (issue 9): >= 8x less peak memory at <= 1.2x the time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from train.tiled import head_ce  # noqa: E402

VOCAB = 128_256


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def setup(tokens: int, hidden: int):
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, VOCAB, bias=False)
    head.weight.grad = torch.zeros_like(head.weight)
    x = torch.randn(tokens, hidden, requires_grad=True)
    y = torch.randint(0, VOCAB, (tokens,))
    return head, x, y


def run_once(head, x, y, tile: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, mean loss) of one forward + backward."""
    x.grad = None
    head.weight.grad.zero_()
    t0, c0 = time.perf_counter(), time.process_time()
    objective, ce = head_ce(head, x, y, tile, 1.0 / x.shape[0])
    objective.backward()
    return time.perf_counter() - t0, time.process_time() - c0, float(ce) / x.shape[0]


def memory_child(tokens: int, hidden: int, tile: int) -> dict:
    head, x, y = setup(tokens, hidden)
    base = rss_bytes()
    seconds, _, loss = run_once(head, x, y, tile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"peak_extra_gb": (peak - base) / 1e9, "first_run_s": seconds, "loss": loss}


def time_child(tokens: int, hidden: int, tile: int, reps: int) -> dict:
    head, x, y = setup(tokens, hidden)
    wall: dict[int, list[float]] = {0: [], tile: []}
    cpu: dict[int, list[float]] = {0: [], tile: []}
    for _ in range(reps):
        for t in (0, tile):
            w, c, _ = run_once(head, x, y, t)
            wall[t].append(w)
            cpu[t].append(c)
    return {
        "one_shot_s": min(wall[0]),
        "tiled_s": min(wall[tile]),
        "one_shot_cpu_s": min(cpu[0]),
        "tiled_cpu_s": min(cpu[tile]),
        "runs": {"wall": wall, "cpu": cpu},
    }


def report(args: argparse.Namespace, mem: dict, timing: dict, tiled_label: str) -> None:
    """Print the table, the ratios against the goals and every timed run."""
    mem_ratio = mem["one-shot"]["peak_extra_gb"] / mem[tiled_label]["peak_extra_gb"]
    time_ratio = timing["tiled_s"] / timing["one_shot_s"]
    cpu_ratio = timing["tiled_cpu_s"] / timing["one_shot_cpu_s"]
    same = abs(mem["one-shot"]["loss"] - mem[tiled_label]["loss"]) <= 1e-5 * abs(mem["one-shot"]["loss"])
    print(
        f"loss of {args.tokens:,} trained tokens x {VOCAB:,} vocabulary (hidden {args.hidden}, fp32, CPU, "
        f"{torch.get_num_threads()} threads; time = fastest of {args.reps} alternating runs)"
    )
    seconds = {"one-shot": timing["one_shot_s"], tiled_label: timing["tiled_s"]}
    cpu = {"one-shot": timing["one_shot_cpu_s"], tiled_label: timing["tiled_cpu_s"]}
    print(f"{'variant':<16}{'peak extra GB':>15}{'wall s':>10}{'CPU s':>10}{'loss':>12}")
    for label, r in mem.items():
        print(
            f"{label:<16}{r['peak_extra_gb']:>15.2f}{seconds[label]:>10.2f}{cpu[label]:>10.2f}{r['loss']:>12.6f}"
        )
    print(
        f"memory: {mem_ratio:.1f}x less (goal >= 8x: {'met' if mem_ratio >= 8 else 'NOT met'}); "
        f"wall time: {time_ratio:.2f}x, CPU time: {cpu_ratio:.2f}x (goal <= 1.2x: "
        f"{'met' if time_ratio <= 1.2 else 'NOT met'} on wall time); same loss: {same}"
    )
    print(f"all timed runs (s): {json.dumps(timing['runs'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="trained tokens in the micro-batch")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the LM head input")
    parser.add_argument("--tile", type=int, default=1024, help="loss.tile_tokens of the tiled variant")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per variant (min is kept)")
    parser.add_argument("--child", choices=["memory", "time"], default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--variant", type=int, default=0, help=argparse.SUPPRESS
    )  # child: tile (0 = one-shot)
    args = parser.parse_args()
    if args.child == "memory":
        print(json.dumps(memory_child(args.tokens, args.hidden, args.variant)))
        return 0
    if args.child == "time":
        print(json.dumps(time_child(args.tokens, args.hidden, args.tile, args.reps)))
        return 0
    need = 4 * args.tokens * VOCAB * 3.1  # fp32 logits, log-softmax, gradient (+ margin)
    if mem_available() < need + 1e9:
        print(
            f"loss_bench: needs ~{need / 1e9:.1f} GB free for the one-shot loss; "
            f"{mem_available() / 1e9:.1f} GB available. Free memory or pass smaller --tokens.",
            file=sys.stderr,
        )
        return 2
    common = [
        sys.executable,
        __file__,
        f"--tokens={args.tokens}",
        f"--hidden={args.hidden}",
        f"--tile={args.tile}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

    def child(*extra: str) -> dict:
        out = subprocess.run([*common, *extra], capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    tiled_label = f"tiled ({args.tile})"
    mem = {
        "one-shot": child("--child=memory", "--variant=0"),
        tiled_label: child("--child=memory", f"--variant={args.tile}"),
    }
    timing = child("--child=time", f"--reps={args.reps}")
    report(args, mem, timing, tiled_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
