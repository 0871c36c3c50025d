"""``hermes-sft demo``: the whole pipeline on the embedded default, on CPU, in a few minutes.

1. build the bundled sample data (``configs/data/sample.yaml``: all five recipes, all three formats);
2. train the tiny Llama with 2-process DeepSpeed ZeRO-3 (``configs/tiny-cpu.yaml``, gloo on CPU);
3. export BF16 and FP8 (compressed-tensors) model folders from the ZeRO-3 checkpoint, verifying each;
4. render a chat with ``thinking=True`` and tools through the *exported* tokenizer, check it against
   the training renderer, let the trained model answer, and parse the answer like vLLM's hermes parser;
5. print a summary of every stage with paths and figures.

Stages 1–2 run the real CLIs in subprocesses (what a user types); export and verify run in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_recipes.messages import conversation_from_openai
from data_recipes.outdir import check_out, write_marker
from data_recipes.render import RenderOptions, render_text
from train.export.export import export_checkpoint
from train.export.verify.report import parse_output

REPO = Path(__file__).resolve().parents[1]
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
DEMO_ENTRIES = ("data", "run", "model-bf16", "model-fp8")
CHAT = [{"role": "user", "content": "Should I take an umbrella in Paris today?"}]


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    ok: bool = True
    figures: list[str] = field(default_factory=list)
    path: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="outputs/demo",
        help="demo folder (an earlier demo output there is replaced; anything else is refused)",
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of the full model")


def _config(relative: str) -> Path:
    path = REPO / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the demo runs from a hermes-sft checkout (configs/ not found)")
    return path


def _run(stage: Stage, cmd: list[str]) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=os.environ.copy())
    stage.seconds = time.perf_counter() - start
    if result.returncode != 0:
        stage.ok = False
        raise RuntimeError(f"stage '{stage.name}' failed (exit {result.returncode}); see the output above")


def build_data(out: Path) -> Stage:
    stage = Stage("data build", path=str(out))
    _run(stage, [*_cli(), "data", "build", str(_config("configs/data/sample.yaml")), "--out", str(out)])
    m = json.loads((out / "manifest.json").read_text())
    dropped = sum(m["dropped"].values())
    stage.figures = [
        f"{m['num_samples_in']} in = {m['num_samples_kept']} kept + {dropped} dropped",
        f"{m['num_rows']} rows, {m['num_tokens']:,} tokens ({m['num_trained_tokens']:,} trained)",
        f"packing efficiency {m['packing_efficiency']:.2%}",
    ]
    return stage


def train_model(data: Path, run_dir: Path, steps: int, nproc: int, lora: bool) -> Stage:
    stage = Stage("train (ZeRO-3)", path=str(run_dir))
    cmd = [*_cli(), "train", str(_config("configs/tiny-cpu.yaml")), "--nproc-per-node", str(nproc)]
    cmd += [f"output_dir={run_dir}", f"data.path={data}", f"schedule.steps={steps}"]
    cmd += [f"checkpoint.every_steps={max(1, steps // 2)}"] + (["lora.enabled=true"] if lora else [])
    _run(stage, cmd)
    s = json.loads((run_dir / "summary.json").read_text())
    first = _first_loss(run_dir)
    stage.figures = [
        f"{nproc} ranks, {s['step']} steps, loss {first:.3f} → {s['final_loss']:.3f}",
        f"eval loss {s['eval_loss']:.3f}" if s.get("eval_loss") is not None else "no eval",
        f"{s['tokens_per_sec_per_device']:,.0f} tokens/s per rank",
    ]
    return stage


def _first_loss(run_dir: Path) -> float:
    with (run_dir / "metrics.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                return float(row["loss"])
    return float("nan")


def export_model(run_dir: Path, out: Path, fmt: str, lora: bool) -> tuple[Stage, Any]:

    stage = Stage(f"export {fmt}", path=str(out))
    start = time.perf_counter()
    result = export_checkpoint(run_dir, out, fmt, merge_lora=lora, overwrite=True, verify=True)
    stage.seconds = time.perf_counter() - start
    if result.verify is not None:
        print(result.verify.table())
    print(result.summary())
    stage.ok = result.ok
    stage.figures = [
        f"{result.num_params:,} params, {result.total_bytes / 1e6:.1f} MB in {result.num_shards} shard(s)",
        f"process peak RSS {result.peak_rss_mb:.0f} MB"
        + (f", {result.quantized_layers} Linear layers FP8" if result.quantized_layers else ""),
        f"verify: {'PASS' if result.verify is not None and result.verify.ok else 'FAIL'}",
    ]
    return stage, result


def chat(model_dir: Path) -> Stage:
    """Serve-side view: the exported tokenizer renders the chat exactly like training, and the model answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = Stage("chat (exported)", path=str(model_dir))
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        CHAT, tools=CHAT_TOOLS, thinking=True, add_generation_prompt=True, tokenize=False
    )
    conv = conversation_from_openai(
        {"messages": [*CHAT, {"role": "assistant", "content": "x"}], "tools": CHAT_TOOLS}
    )
    history = type(conv)(messages=conv.messages[:1], tools=conv.tools)
    ours = render_text(history, RenderOptions(thinking=True), add_generation_prompt=True)[0]
    same = prompt == ours
    print("\nprompt rendered by the exported tokenizer (thinking=True, tools):\n" + prompt)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=24, do_sample=True)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    parsed = parse_output(answer)
    print(f"\nanswer of the tiny demo model (a few steps of training on sample data):\n{answer!r}")
    print(f"parsed like vLLM's hermes parser: {parsed}")
    stage.seconds = time.perf_counter() - start
    stage.ok = same
    stage.figures = [
        f"prompt == training renderer: {'yes' if same else 'NO'}",
        f"{len(tokenizer(prompt)['input_ids'])} prompt tokens, answer parsed without error",
    ]
    return stage


def _cli() -> list[str]:
    return [sys.executable, "-m", "train.cli"]


def print_summary(stages: list[Stage], total: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hermes-sft demo: {'all stages passed' if all(s.ok for s in stages) else 'FAILED'}")
    for column in ("stage", "time", "result", "figures", "path"):
        table.add_column(column)
    for s in stages:
        table.add_row(s.name, f"{s.seconds:.0f}s", "ok" if s.ok else "FAIL", "\n".join(s.figures), s.path)
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
    print(f"total {total:.0f}s")


def run(args: argparse.Namespace) -> int:
    # Only a folder an earlier demo wrote (its marker lists these entries) is ever replaced.
    out = check_out(args.out, overwrite=True, command="demo")
    if out.exists():
        print(f"replacing the previous demo output in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_marker(out, "demo", DEMO_ENTRIES)
    started = time.perf_counter()
    stages: list[Stage] = []
    try:
        stages.append(build_data(out / "data"))
        stages.append(train_model(out / "data", out / "run", args.steps, args.nproc, args.lora))
        for fmt in ("bf16", "fp8"):
            stages.append(export_model(out / "run", out / f"model-{fmt}", fmt, args.lora)[0])
        stages.append(chat(out / "model-bf16"))
    except RuntimeError as err:
        print(f"hermes-sft demo: {err}", file=sys.stderr)
        print_summary(stages, time.perf_counter() - started)
        return 1
    print_summary(stages, time.perf_counter() - started)
    return 0 if all(s.ok for s in stages) else 1
