"""Measure the peak memory of one export in this process: ``python bench/memprobe.py SRC OUT FMT ...``.

Used by the streaming-memory test (tests/integration/test_export_memory.py) and bench/bench_export.py,
both of which run it as a script by path. Linux only: the peak (``VmHWM``) is reset through
``/proc/self/clear_refs`` after every import and a dry layout pass, so the number is the export's own
growth above the process's resident set just before it — not the interpreter and library baseline.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from train.export.export import export_checkpoint
from train.export.reading.source import model_layout, resolve_source
from train.export.reading.tensors import DEFAULT_CHUNK_BYTES


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset the high-water mark to the current RSS; returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def peak() -> int:
    return _status_kb("VmHWM") * 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("fmt", choices=("bf16", "fp8"))
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_BYTES >> 20)
    p.add_argument("--merge-lora", action="store_true")
    args = p.parse_args()

    for module in ("compressed_tensors.compressors", "compressed_tensors.quantization"):
        importlib.import_module(module)  # imports are part of the baseline, not of the export

    model_layout(resolve_source(args.src).model_config)  # import the model classes before the baseline
    base = reset_peak()
    t0 = time.perf_counter()
    result = export_checkpoint(
        args.src, args.out, args.fmt, max_shard_size=args.max_shard_size, chunk_bytes=args.chunk_mb << 20,
        merge_lora=args.merge_lora, verify=False, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    top = peak()
    print(json.dumps({
        "format": args.fmt, "seconds": round(seconds, 3), "baseline_rss": base, "peak_rss": top,
        "peak_growth": top - base, "output_bytes": result.total_bytes, "num_shards": result.num_shards,
        "num_params": result.num_params,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
