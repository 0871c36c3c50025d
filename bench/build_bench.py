"""Build throughput (tokens/s) of render + tokenize + labels, vs the raw tokenizer and TRL, side by side.

    python bench/build_bench.py                                  # 3,000 conversations
    python bench/build_bench.py --n 15000 --num-proc 2 --repeat 3   # what docs/benchmarks.md records

Same conversations for all (synthetic, Hermes-like: 3.5 : 1.6 reasoning : plain, reasoning ≈ 5x
longer, multi-sentence text with varied words):

* **hermes-sft**: the ``render`` stage of ``hermes-sft data build`` (``num_proc`` worker processes:
  parse, normalize, recipe check, Jinja render, segment encode, labels, checks) with the default
  checks (``check: sample``), with ``check: full`` and ``check: false``, and with one worker; the whole
  build (read → render → select → pack → write, the tokenizer already loaded, as for the raw encode);
* **raw tokenizer**: ``tokenizer(texts)`` of the exact rendered strings, batched, Rust-parallel on
  ``num_proc`` threads, in a fresh process, measured before and after ours (the reference is their
  mean rate): the upper limit for anything that tokenizes text;
* **TRL**: ``SFTTrainer._prepare_dataset`` (trl 1.x) with ``assistant_only_loss=True``, our tokenizer and
  template (which has ``{% generation %}`` markers), ``dataset_num_proc`` = the same process count.

With ``--repeat k`` every pipeline runs k times, interleaved, and its fastest run counts (on a shared
machine the fastest run is the least disturbed one). The script also checks that ``check: full``,
``check: false`` and one worker write exactly the default build's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from data_recipes.build import build, cpu_seconds
from data_recipes.formats.detect import to_conversation
from data_recipes.mixture import load_mixture
from data_recipes.pipeline import get_tokenizer
from data_recipes.render import RenderOptions, render_text

WORDS = [
    "model", "token", "packing", "gradient", "schema", "reasoning", "answer", "budget", "sample", "value",
    "check", "length", "number", "system", "result", "step", "total", "square", "prime", "divisor", "city",
    "weather", "rate", "amount", "order", "item", "field",
]  # fmt: skip


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + f" {rng.randint(0, 9999)}."


def text(rng: random.Random, mean_sentences: float) -> str:
    n = max(1, int(rng.lognormvariate(0, 0.6) * mean_sentences))
    return " ".join(sentence(rng) for _ in range(n))


def conversations(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    reasoning, plain = [], []
    for i in range(n):
        question = text(rng, 3)
        if i % 51 < 35:
            reasoning.append({"messages": [{"role": "user", "content": question},
                              {"role": "assistant", "reasoning_content": text(rng, 40), "content": text(rng, 6)}]})  # fmt: skip
        else:
            plain.append({"messages": [{"role": "user", "content": question},
                          {"role": "assistant", "content": text(rng, 9)}]})  # fmt: skip
    return reasoning, plain


def bench_ours(folder: Path, name: str, num_proc: int, check: str) -> tuple[float, float, int, float]:
    """``(render stage s, whole build s, tokens, render stage CPU s)`` of one build into ``folder/name``."""
    cfg = load_mixture(folder / "mix.yaml", [f"check={check}"])
    t = time.perf_counter()
    result = build(cfg, folder / name, num_proc=num_proc, progress=False, overwrite=True)
    total = time.perf_counter() - t
    assert sum(result.manifest["dropped"].values()) == 0, result.manifest["dropped"]
    timings = result.timings
    return timings["render_s"], total, result.manifest["num_tokens"], timings["render_cpu_s"]


def same_rows(a: Path, b: Path) -> bool:
    import datasets

    x, y = datasets.load_from_disk(str(a)), datasets.load_from_disk(str(b))
    return all(x[s].data.table.equals(y[s].data.table) for s in ("train", "validation"))


def bench_raw(rows: list[dict], tokenizer) -> tuple[float, int, float]:
    texts = []
    for row in rows:
        _, conv = to_conversation(row, "openai", "")
        texts.append(render_text(conv, RenderOptions(thinking=conv.messages[-1].reasoning is not None))[0])
    t, cpu = time.perf_counter(), time.process_time()  # process_time: every thread of this process
    n = 0
    for i in range(0, len(texts), 1000):
        n += sum(len(ids) for ids in tokenizer(texts[i : i + 1000], add_special_tokens=False)["input_ids"])
    return time.perf_counter() - t, n, time.process_time() - cpu


def bench_trl(rows: list[dict], tokenizer, num_proc: int, folder: Path) -> tuple[float, int, float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    messages = []
    for row in rows:
        msgs = [dict(m) for m in row["messages"]]
        messages.append({"messages": json.dumps(msgs)})
    ds = Dataset.from_list(messages).map(lambda r: {"messages": json.loads(r["messages"])})
    args = SFTConfig(output_dir=str(folder / "trl"), assistant_only_loss=True, dataset_num_proc=num_proc,
                     max_length=None, bf16=False, use_cpu=True, report_to=[])  # fmt: skip
    fake = types.SimpleNamespace(
        chat_template=tokenizer.chat_template, completion_only_loss=False, _tokenizer=tokenizer
    )
    t, cpu = time.perf_counter(), cpu_seconds()
    out = SFTTrainer._prepare_dataset(fake, ds, tokenizer, args, False, None, "train")
    elapsed, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    return elapsed, sum(len(x) for x in out["input_ids"]), cpu


PIPELINES = {  # name: (num_proc = args.num_proc or 1, check)
    "default": (None, "sample"),
    "full": (None, "full"),
    "off": (None, "false"),
    "one": (1, "sample"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="conversations")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per pipeline; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # after HF_DATASETS_OFFLINE is set: datasets reads it at import

    datasets.disable_progress_bars()
    load_before = os.getloadavg()
    reasoning, plain = conversations(args.n, args.seed)
    best: dict[str, tuple] = {}  # the fastest run (wall) of each pipeline
    cpu: dict[str, float] = {}  # the least CPU time of each pipeline's runs
    raws = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, rows in (("reasoning", reasoning), ("plain", plain)):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "mix.yaml").write_text("validation_fraction: 0.01\nsources:\n  - {path: reasoning.jsonl, recipe: reasoning}\n"
                                         "  - {path: plain.jsonl, recipe: plain}\n")  # fmt: skip
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # our workers and TRL's are forked: one thread each
        t = time.perf_counter()
        tokenizer = get_tokenizer(None)  # loaded once, before any timing, as for the raw encode
        load_s = time.perf_counter() - t
        for _ in range(args.repeat):
            raws.append(raw_in_subprocess(reasoning + plain, args.num_proc))
            for name, (procs, check) in PIPELINES.items():
                run = bench_ours(folder, name, procs or args.num_proc, check)
                best[name] = min(best.get(name, run), run)
                cpu[name] = min(cpu.get(name, run[3]), run[3])
            trl = bench_trl(reasoning + plain, tokenizer, args.num_proc, folder)
            best["trl"] = min(best.get("trl", trl), trl)  # (seconds, tokens, cpu)
            cpu["trl"] = min(cpu.get("trl", trl[2]), trl[2])
        raws.append(raw_in_subprocess(reasoning + plain, args.num_proc))
        identical = {name: same_rows(folder / "default", folder / name) for name in ("full", "off", "one")}
    report(args, best, cpu, raws, identical, (load_s, load_before))


def report(args, best, cpu, raws, identical, loads) -> None:
    load_s, load_before = loads
    tokens = best["default"][2]
    raw_rate = sum(n / s for s, n, _ in raws) / len(raws)
    raw_cpu_rate = max(n / c for _, n, c in raws)
    cpus = len(os.sched_getaffinity(0))
    print(f"{args.n:,} conversations, {tokens:,} tokens, {args.num_proc} processes, {cpus} CPUs, "
          f"repeat {args.repeat}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"tokenizer load {load_s:.2f} s (not timed below)\n")  # fmt: skip
    print("| pipeline | time (s) | tokens/s | vs raw | CPU (s) | tokens per CPU-s | vs raw (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [(f"raw tokenizer batch encode (Rust, {args.num_proc} threads), run {i + 1}", s, n, c)
            for i, (s, n, c) in enumerate(raws)]  # fmt: skip
    rows += [
        (f"hermes-sft render stage, default checks (check: sample), {args.num_proc} workers",
         best["default"][0], tokens, cpu["default"]),
        ("hermes-sft render stage, check: full", best["full"][0], tokens, cpu["full"]),
        ("hermes-sft render stage, check: false", best["off"][0], tokens, cpu["off"]),
        ("hermes-sft render stage, default checks, 1 worker", best["one"][0], tokens, cpu["one"]),
        ("hermes-sft whole build (read → render → select → pack → write)", best["default"][1], tokens, None),
        ("TRL SFTTrainer._prepare_dataset, assistant_only_loss", best["trl"][0], best["trl"][1], cpu["trl"]),
    ]  # fmt: skip
    for name, seconds, n, c in rows:
        cpu_cols = f"{c:.2f} | {n / c:,.0f} | {n / c / raw_cpu_rate:.2f}x" if c else " | | "
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {n / seconds / raw_rate:.2f}x | {cpu_cols} |")
    render_rate = tokens / best["default"][0]
    goals = [
        ("render stage (default checks) vs raw", render_rate / raw_rate, 0.8),
        ("render stage (default checks) vs TRL", render_rate / (best["trl"][1] / best["trl"][0]), 3.0),
        ("whole build vs raw", tokens / best["default"][1] / raw_rate, 0.65),
        (f"{args.num_proc} workers vs 1 worker (render stage)", best["one"][0] / best["default"][0], 1.8),
        ("render stage (default checks) vs raw, per CPU-second", tokens / cpu["default"] / raw_cpu_rate, 0.8),
        ("render stage (default checks) vs TRL, per CPU-second",
         tokens / cpu["default"] / (best["trl"][1] / cpu["trl"]), 3.0),
    ]  # fmt: skip
    print("\n| goal | measured | target | |\n|---|---:|---:|---|")
    for name, value, target in goals:
        print(f"| {name} | {value:.2f}x | ≥ {target}x | {'met' if value >= target else 'NOT met'} |")
    for name, same in identical.items():
        print(
            f"| rows of `{name}` == rows of the default build | {'identical' if same else 'DIFFERENT'} | | |"
        )


def raw_in_subprocess(rows: list[dict], threads: int) -> tuple[float, int, float]:
    """The raw encode in a fresh process, so the Rust thread pool is not disabled by earlier forks."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    repo = str(Path(__file__).resolve().parents[1])
    code = (
        f"import json, sys; sys.path.insert(0, {repo!r})\n"
        "from bench.build_bench import bench_raw\nfrom data_recipes.tokenizer import load_tokenizer\n"
        f"rows = [json.loads(l) for l in open({f.name!r})]\nprint(json.dumps(bench_raw(rows, load_tokenizer())))\n"
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    os.unlink(f.name)
    seconds, n, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, n, cpu


if __name__ == "__main__":
    main()
