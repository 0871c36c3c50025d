"""Build throughput (tokens/s, 2 processes) of render + tokenize + mask, vs the raw tokenizer and TRL.

    python bench/build_bench.py                 # 3,000 conversations
    python bench/build_bench.py --n 10000 --num-proc 2

Same conversations for all three (synthetic, Hermes-like: 3.5 : 1.6 reasoning : plain, reasoning ≈ 5x
longer, multi-sentence text with varied words):

* **hermes-sft**: the ``render`` stage of ``hermes-sft data build`` (``datasets.map`` with ``num_proc``
  workers: normalize, recipe check, Jinja render, tokenize with offsets, labels, invariant checks),
  and the same with ``check: false``; the whole build (read → render → select → pack → write) too;
* **raw tokenizer**: ``tokenizer(texts)`` of the exact rendered strings, batched, Rust-parallel on the
  same cores: the upper limit for anything that tokenizes text;
* **TRL**: ``SFTTrainer._prepare_dataset`` (trl 1.x) with ``assistant_only_loss=True``, our tokenizer and
  template (which has ``{% generation %}`` markers), ``dataset_num_proc`` = the same process count.
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

from data_recipes.build import build
from data_recipes.formats.detect import to_conversation
from data_recipes.mixture import load_mixture
from data_recipes.render import RenderOptions, render_text
from data_recipes.tokenizer import load_tokenizer

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


def bench_ours(folder: Path, num_proc: int, check: bool) -> tuple[float, float, int]:
    cfg = load_mixture(folder / "mix.yaml", [f"check={str(check).lower()}"])
    t = time.perf_counter()
    result = build(cfg, folder / f"out-{check}", num_proc=num_proc, progress=False)
    total = time.perf_counter() - t
    assert sum(result.manifest["dropped"].values()) == 0, result.manifest["dropped"]
    return result.timings["render_s"], total, result.manifest["num_tokens"]


def bench_raw(rows: list[dict], tokenizer) -> tuple[float, int]:
    texts = []
    for row in rows:
        _, conv = to_conversation(row, "openai", "")
        texts.append(render_text(conv, RenderOptions(thinking=conv.messages[-1].reasoning is not None))[0])
    t = time.perf_counter()
    n = 0
    for i in range(0, len(texts), 1000):
        n += sum(len(ids) for ids in tokenizer(texts[i : i + 1000], add_special_tokens=False)["input_ids"])
    return time.perf_counter() - t, n


def bench_trl(rows: list[dict], tokenizer, num_proc: int, folder: Path) -> tuple[float, int]:
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
    t = time.perf_counter()
    out = SFTTrainer._prepare_dataset(fake, ds, tokenizer, args, False, None, "train")
    elapsed = time.perf_counter() - t
    return elapsed, sum(len(x) for x in out["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="conversations")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets  # after HF_DATASETS_OFFLINE is set: datasets reads it at import

    datasets.disable_progress_bars()
    reasoning, plain = conversations(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, rows in (("reasoning", reasoning), ("plain", plain)):
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "mix.yaml").write_text("validation_fraction: 0\nsources:\n  - {path: reasoning.jsonl, recipe: reasoning}\n"
                                         "  - {path: plain.jsonl, recipe: plain}\n")  # fmt: skip
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # our workers and TRL's are forked: one thread each
        ours = {check: bench_ours(folder, args.num_proc, check) for check in (True, False)}
        tokens = ours[True][2]
        tokenizer = load_tokenizer()
        trl_s, trl_tokens = bench_trl(reasoning + plain, tokenizer, args.num_proc, folder)
    raw_s, raw_tokens = raw_in_subprocess(reasoning + plain)
    print(f"{args.n:,} conversations, {tokens:,} tokens, {args.num_proc} processes, {os.cpu_count()} CPUs\n")
    print("| pipeline | time (s) | tokens/s | vs raw |\n|---|---:|---:|---:|")
    raw_rate = raw_tokens / raw_s
    rows = [
        ("raw tokenizer batch encode (Rust, 2 threads)", raw_s, raw_tokens),
        ("hermes-sft render stage (checks on, default)", ours[True][0], tokens),
        ("hermes-sft render stage (check: false)", ours[False][0], tokens),
        ("hermes-sft whole build (read→render→pack→write)", ours[True][1], tokens),
        ("TRL SFTTrainer._prepare_dataset, assistant_only_loss", trl_s, trl_tokens),
    ]
    for name, seconds, n in rows:
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {n / seconds / raw_rate:.2f}x |")
    print(f"\nours (render stage) vs TRL: {tokens / ours[True][0] / (trl_tokens / trl_s):.2f}x")


def raw_in_subprocess(rows: list[dict]) -> tuple[float, int]:
    """The raw encode in a fresh process, so the Rust thread pool is not disabled by earlier forks."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    repo = str(Path(__file__).resolve().parents[1])
    code = (
        f"import json, sys; sys.path.insert(0, {repo!r})\n"
        "from bench.build_bench import bench_raw\nfrom data_recipes.tokenizer import load_tokenizer\n"
        f"rows = [json.loads(l) for l in open({f.name!r})]\nprint(json.dumps(bench_raw(rows, load_tokenizer())))\n"
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    os.unlink(f.name)
    seconds, n = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, n


if __name__ == "__main__":
    main()
