"""Export benchmark: peak RSS and wall time of ``hermes-sft export`` against the usual recipes.

One run, side by side, on one multi-GB ZeRO-3 checkpoint made here (2 ranks, CPU, a random
Llama-3.1-shaped model; ``tests/dist/make_zero3_run.py --steps 0``):

* ours: ZeRO-3 → BF16, ZeRO-3 → FP8, BF16 folder → FP8 (``python bench/memprobe.py``);
* DeepSpeed: the ``zero_to_fp32.py`` the checkpoint ships (fp32 safetensors), then transformers
  ``from_pretrained(dtype=bfloat16)`` + ``save_pretrained`` (the documented offline recipe), and
  DeepSpeed 0.19's ``convert_zero_checkpoint_to_state_dict(dtype=bfloat16)`` (weights only);
* llm-compressor ``FP8_DYNAMIC`` (``oneshot`` and ``model_free_ptq``) in a separate venv, because it
  pins an older transformers: ``--llmc-python /tmp/llmc-venv/bin/python``;
* the limit: ``cp -r`` of the checkpoint's ZeRO files and of the BF16 output folder.

Every command runs in a fresh process under a small wrapper that reports wall time and the peak RSS
of the process tree's largest process (``RUSAGE_CHILDREN``). With ``--drop-caches`` (root) the page
cache is dropped before each command. Results: JSON lines in WORKDIR/results.jsonl and a Markdown
table on stdout.

    python bench/bench_export.py --workdir /tmp/bench-export --llmc-python /tmp/llmc-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from train.launch import local_torchrun

REPO = Path(__file__).resolve().parents[1]
WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "dt = time.perf_counter() - t\n"
    "print('@@' + json.dumps({'rc': rc, 'seconds': dt, 'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
)

LLMC_ONESHOT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
src, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(src, torch_dtype="auto")
oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]))
model.save_pretrained(out, save_compressed=True, max_shard_size="1GB")
AutoTokenizer.from_pretrained(src).save_pretrained(out)
"""

LLMC_MODEL_FREE = """
import sys
from llmcompressor import model_free_ptq
# ignore=["lm_head"] alone also quantizes model.embed_tokens here (name-based matching); ignoring it too gives
# the same model as oneshot and as ours
model_free_ptq(sys.argv[1], sys.argv[2], scheme="FP8_DYNAMIC", ignore=["lm_head", "model.embed_tokens"],
               max_workers=1, device="cpu")
"""

DS_SAVE_PRETRAINED = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
model.save_pretrained(sys.argv[2], max_shard_size="1GB")
"""

DS_CONVERT_BF16 = """
import sys
from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_state_dict
convert_zero_checkpoint_to_state_dict(sys.argv[1], sys.argv[2], dtype="bfloat16", max_shard_size="1GB",
                                      safe_serialization=True)
"""


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drop_caches(enabled: bool) -> None:
    if not enabled:
        return
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        print(f"cannot drop caches: {err}", file=sys.stderr)


def measure(
    name: str, cmd: list[str], args, results: list[dict], out: Path | None = None, note: str = "", env=None
) -> dict:
    drop_caches(args.drop_caches)
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env or os.environ.copy()
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    row = {"name": name, "cmd": " ".join(cmd), "note": note}
    if line is None:
        row |= {"rc": -1, "error": proc.stderr[-2000:]}
    else:
        row |= json.loads(line[2:])
        if row["rc"] != 0:
            row["error"] = proc.stderr[-3000:]
        probe = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if probe:
            row["probe"] = json.loads(probe[-1])
    if out is not None and out.is_dir():
        row["output_bytes"] = folder_bytes(out)
    results.append(row)
    with open(args.workdir / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    status = "ok" if row.get("rc") == 0 else f"FAILED rc={row.get('rc')}"
    print(
        f"   {status}: {row.get('seconds', 0):.1f} s, peak RSS {row.get('maxrss', 0) / 1e9:.2f} GB",
        file=sys.stderr,
    )
    return row


def make_checkpoint(args) -> Path:
    run = args.workdir / "run"
    if (run / "checkpoints" / "latest").is_file():
        return run
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = local_torchrun(
        [str(REPO / "tests" / "dist" / "make_zero3_run.py"), "--out", str(run), "--steps", "0"]
    )
    cmd += [
        "--hidden",
        str(args.hidden),
        "--intermediate",
        str(args.intermediate),
        "--layers",
        str(args.layers),
    ]
    cmd += ["--heads", str(args.heads), "--kv-heads", str(args.kv_heads)]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    print(f"checkpoint made in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return run


def run_all(args) -> list[dict]:
    results: list[dict] = []
    run = make_checkpoint(args)
    step = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    out = args.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    py, shard = sys.executable, args.max_shard_size
    probe = [py, str(REPO / "bench" / "memprobe.py")]

    def ours(name: str, src: Path, dst: str, fmt: str) -> None:
        cmd = [*probe, str(src), str(out / dst), fmt, "--max-shard-size", shard]
        measure(name, cmd, args, results, out / dst)

    ours("ours: ZeRO-3 → BF16", run, "ours-bf16", "bf16")
    ours("ours: ZeRO-3 → FP8", run, "ours-fp8", "fp8")
    ours("ours: BF16 folder → FP8", out / "ours-bf16", "ours-fp8-from-bf16", "fp8")
    cmd = [py, str(step / "zero_to_fp32.py"), str(step), str(out / "ds-fp32"), "--safe_serialization"]
    measure("DeepSpeed zero_to_fp32.py → fp32 safetensors", [*cmd, "--max_shard_size", shard], args, results,
            out / "ds-fp32", note="weights only: no config, tokenizer or template")  # fmt: skip
    if (out / "ds-fp32").is_dir():  # the recipe's manual step: zero_to_fp32 writes no config.json
        shutil.copy(step / "model_config.json", out / "ds-fp32" / "config.json")
    cmd = [py, "-c", DS_SAVE_PRETRAINED, str(out / "ds-fp32"), str(out / "ds-bf16")]
    measure("then transformers from_pretrained(bf16) + save_pretrained", cmd, args, results, out / "ds-bf16",
            note="config.json copied in by hand first")  # fmt: skip
    cmd = [py, "-c", DS_CONVERT_BF16, str(step), str(out / "ds-bf16-direct")]
    measure("DeepSpeed convert_zero_checkpoint_to_state_dict(dtype=bf16)", cmd, args, results,
            out / "ds-bf16-direct", note="weights only")  # fmt: skip
    if args.llmc_python:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        for name, script, dst in (
            ("llm-compressor oneshot FP8_DYNAMIC (BF16 folder in)", LLMC_ONESHOT, "llmc-oneshot"),
            (
                "llm-compressor model_free_ptq FP8_DYNAMIC (BF16 folder in)",
                LLMC_MODEL_FREE,
                "llmc-model-free",
            ),
        ):
            cmd = [args.llmc_python, "-c", script, str(out / "ours-bf16"), str(out / dst)]
            measure(name, cmd, args, results, out / dst, env=env)
    measure("limit: cp -r the checkpoint's ZeRO files", ["cp", "-r", str(step / "ds"), str(out / "copy-ds")], args,
            results, out / "copy-ds")  # fmt: skip
    measure("limit: cp -r the BF16 folder", ["cp", "-r", str(out / "ours-bf16"), str(out / "copy-bf16")], args,
            results, out / "copy-bf16")  # fmt: skip
    return results


def compare_outputs(args) -> dict:
    """Sanity: our BF16 == DeepSpeed's; our FP8 bytes vs llm-compressor's."""
    import torch

    sys.path.insert(0, str(REPO))
    from train.export.reading.tensors import read_safetensors_folder

    out = args.workdir / "out"
    facts: dict = {}
    ours = read_safetensors_folder(out / "ours-bf16")
    if (out / "ds-bf16").is_dir():
        theirs = read_safetensors_folder(out / "ds-bf16")
        facts["bf16_equal_to_deepspeed+transformers"] = set(ours) == set(theirs) and all(
            torch.equal(ours[n].materialize(), theirs[n].materialize()) for n in ours
        )
    for name in ("llmc-oneshot", "llmc-model-free"):
        if not (out / name).is_dir():
            continue
        a, b = read_safetensors_folder(out / "ours-fp8-from-bf16"), read_safetensors_folder(out / name)
        same = total = 0
        for n in a:
            if n in b and a[n].dtype == torch.float8_e4m3fn:
                x, y = a[n].materialize().view(torch.uint8), b[n].materialize().view(torch.uint8)
                same += int((x == y).sum()) if x.shape == y.shape else 0
                total += x.numel()
        facts[f"fp8_bytes_identical_to_{name}"] = f"{same / total:.6%}" if total else "n/a"
        facts[f"{name}_tensor_names_equal"] = set(a) == set(b)
    return facts


def table(results: list[dict], facts: dict, args) -> str:
    lines = [
        "| step | wall time | peak RSS | output | notes |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("rc") != 0:
            err = (r.get("error") or "").strip().splitlines()
            lines.append(f"| {r['name']} | — | — | — | failed: `{err[-1] if err else 'no output'}` |")
            continue
        p = r.get("probe") or {}
        growth = f"growth during the export {p['peak_growth'] / 1e6:.0f} MB; " if p else ""
        lines.append(f"| {r['name']} | {r['seconds']:.1f} s | {r['maxrss'] / 1e9:.2f} GB | "
                     f"{r.get('output_bytes', 0) / 1e9:.2f} GB | {growth}{r.get('note', '')} |")  # fmt: skip
    lines += ["", "Checks: " + ", ".join(f"{k} = {v}" for k, v in facts.items())]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench-export"))
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--max-shard-size", default="1GB")
    p.add_argument("--llmc-python", help="python of a venv with llmcompressor installed")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before each step (root)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.jsonl").unlink(missing_ok=True)
    results = run_all(args)
    facts = compare_outputs(args)
    ckpt = args.workdir / "run" / "checkpoints"
    facts["checkpoint_bytes"] = folder_bytes(ckpt)
    print(table(results, facts, args))
    (args.workdir / "facts.json").write_text(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
