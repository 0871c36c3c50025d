"""``hermes-sft data build``: mixture config → packed, tokenized ``datasets`` folder + manifest.

Stages (all intermediate data lives in Arrow files on disk, so memory stays bounded by batch sizes
plus a few numpy columns of one number per sample):

1. **read**: every source streams ``(origin, json_text)`` rows into one Arrow file (text, so mixed
   schemas are never null-padded); each source's rows are counted and hashed;
2. **render**: ``num_proc`` worker processes (:mod:`data_recipes.workers`) run
   :func:`data_recipes.pipeline.process_batch` (normalize → recipe → render → audit → label rules),
   one record per sample, failures included;
3. **select**: drops (worker errors, length filters, too few trained tokens, exact duplicates) are
   decided on numpy columns, every sample gets exactly one fate, so
   ``num_samples_in == num_samples_kept + sum(dropped)`` holds per source and in total; then the
   seeded mixture (weights / counts) and the per-source validation split;
4. **pack**: global FFD (:mod:`data_recipes.packing`) per split, rows shuffled with the seed;
5. **write**: rows are assembled with vectorised Arrow takes (no per-token Python), saved with
   ``DatasetDict.save_to_disk`` into a temporary folder that is renamed to ``--out`` when complete,
   with ``manifest.json`` (see ``docs/architecture.md`` and :mod:`data_recipes.manifest`).

Counting: an *input* is a raw row; a *sample* is what gets rendered. They differ only under
``history: expand``, where one input yields one sample per reply (an input that fails before it is
split counts as one sample). The manifest reports both (``num_inputs``, ``num_samples_in``).
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from data_recipes import manifest as mf
from data_recipes.mixture import MixtureConfig, check_inputs, sample_counts, split_validation
from data_recipes.outdir import check_out, owned_output
from data_recipes.packing import PackPlan, ffd_pack, shuffle_rows
from data_recipes.pipeline import SourceRules, WorkerContext, get_tokenizer, process_batch
from data_recipes.preference import process_pair_batch, sequence_lengths
from data_recipes.sources import SourceSpec, iter_rows, resolve
from data_recipes.workers import render_records

RAW_SCHEMA = pa.schema([("source", pa.int32()), ("origin", pa.string()), ("raw", pa.large_string())])
PACKED_SCHEMA = pa.schema(
    [(c, pa.list_(pa.int32())) for c in ("input_ids", "labels", "position_ids", "seq_lengths")]
)
RAW_BATCH_ROWS = 2048
WRITE_BATCH_ROWS = 256
COMMAND = "data build"


@dataclass
class BuildResult:
    manifest: dict[str, Any]
    out_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


def default_num_proc() -> int:
    """The CPUs this process may use: its CPU affinity (what ``taskset``, cgroups-cpusets and a SLURM
    step grant), capped by ``SLURM_CPUS_PER_TASK`` inside a SLURM job. Not ``os.cpu_count()``: on a
    shared node that counts CPUs the job does not own."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def cpu_seconds() -> float:
    """CPU time of this process and its finished child processes (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def preflight(cfg: MixtureConfig, out_dir: Path, overwrite: bool, inputs: list[Path]) -> list[SourceSpec]:
    """Every source readable, the output folder usable (:func:`data_recipes.outdir.check_out`): checked
    before any work starts."""
    check_out(out_dir, overwrite, COMMAND, inputs)
    return [resolve(s.path, s.hub, s.split, s.subset) for s in cfg.sources]


def build_inputs(cfg: MixtureConfig, extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The build's own inputs (sources, tokenizer, config): ``--out`` may never hold one of them."""
    paths = [s.path for s in cfg.sources if s.path] + ([cfg.tokenizer] if cfg.tokenizer else []) + list(extra)
    return [Path(p).resolve() for p in paths]


def estimate_bytes(specs: list[SourceSpec]) -> int:
    """A rough disk need for ``DiskFullError``: raw rows + sample records + packed rows are each about
    two bytes per source byte (int32 ids and labels per ~4 bytes of text), repeats aside."""
    local = [Path(s.location) for s in specs if s.kind != "hub"]
    return 6 * sum(p.stat().st_size if p.is_file() else _folder_bytes(p) for p in local)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def read_sources(specs: list[SourceSpec], path: Path, progress: bool) -> list[dict[str, Any]]:
    """Stage 1: stream every source's rows into one Arrow file; returns per-source input stats."""
    stats = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, RAW_SCHEMA) as writer:
        for i, spec in enumerate(specs):
            digest, n = mf.content_hasher(), 0
            origins: list[str] = []
            raws: list[str] = []
            for origin, raw in tqdm(
                iter_rows(spec), desc=f"read {spec.display}", unit=" rows", disable=not progress
            ):
                digest.update(raw.encode("utf-8", errors="surrogatepass") + b"\0")  # NUL: never in JSON text
                origins.append(origin)
                raws.append(raw)
                n += 1
                if len(raws) == RAW_BATCH_ROWS:
                    _write_raw(writer, i, origins, raws)
                    origins, raws = [], []
            _write_raw(writer, i, origins, raws)
            stats.append({"num_inputs": n, "content_hash": digest.hexdigest()})
    return stats


def _write_raw(
    writer: pa.ipc.RecordBatchStreamWriter, source: int, origins: list[str], raws: list[str]
) -> None:
    if origins:
        columns = [
            pa.array([source] * len(origins), pa.int32()),
            pa.array(origins),
            pa.array(raws, pa.large_string()),
        ]
        writer.write_batch(pa.record_batch(columns, schema=RAW_SCHEMA))


def render_samples(cfg: MixtureConfig, raw_path: Path, work: Path, num_proc: int, progress: bool):
    """Stage 2: raw rows to sample records in ``num_proc`` workers (a memory-mapped Dataset)."""
    ctx = WorkerContext(
        sources=tuple(SourceRules(s.format, s.recipe or "", s.options) for s in cfg.sources),
        history=cfg.history,
        tokenizer=cfg.tokenizer,
        check=cfg.check_mode,
        check_rate=cfg.check_rate,
    )
    process = process_pair_batch if cfg.kind == "preference" else process_batch
    return render_records(raw_path, work / "records", ctx, num_proc, progress, process)


@dataclass
class Selection:
    """Stage 3 result: the fate of every sample record and the chosen train / validation items."""

    reason: np.ndarray  # object array, "" = kept
    train: np.ndarray  # record indices, with repeats
    validation: np.ndarray
    selected: np.ndarray  # distinct record indices selected by the mixture


def decide_drops(cfg: MixtureConfig, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Each record's drop reason ("" = kept): worker errors, length filters, trained tokens, duplicates."""
    reason = cols["error"].copy()
    ok = reason == ""
    rules = [
        (cols["length"] > cfg.max_tokens, "too_long"),
        (cols["length"] < cfg.min_tokens, "too_short"),
        (cols["num_trained"] == 0, "no_trained_tokens"),
        (cols["num_trained"] < cfg.min_trained_tokens, "too_few_trained"),
    ]
    for hit, name in rules:
        mask = ok & hit
        reason[mask] = name
        ok &= ~mask
    if cfg.dedup and ok.any():
        kept = np.flatnonzero(ok)
        keys = np.stack([cols["digest_hi"][kept], cols["digest_lo"][kept]], axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        dup = np.ones(len(kept), dtype=bool)
        dup[first] = False
        reason[kept[dup]] = "duplicate"
    return reason


def select(cfg: MixtureConfig, cols: dict[str, np.ndarray]) -> Selection:
    reason = decide_drops(cfg, cols)
    kept = reason == ""
    train, val, selected = [], [], []
    for s, src in enumerate(cfg.sources):
        pool = np.flatnonzero(kept & (cols["source"] == s))
        counts = sample_counts(len(pool), src, np.random.default_rng([cfg.seed, s, 0]), cfg.max_repeat)
        chosen, reps = pool[counts > 0], counts[counts > 0]
        is_train, is_val = split_validation(
            chosen, cfg.validation_fraction, np.random.default_rng([cfg.seed, s, 1])
        )
        train.append(np.repeat(chosen[is_train], reps[is_train]))
        val.append(chosen[is_val])
        selected.append(chosen)
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return Selection(reason=reason, train=cat(train), validation=cat(val), selected=cat(selected))


def pack_split(
    items: np.ndarray, lengths: np.ndarray, cfg: MixtureConfig, salt: int
) -> tuple[PackPlan, np.ndarray]:
    """Stage 4: FFD plan over the split's items; returns the (shuffled) plan and record index per slot."""
    plan = shuffle_rows(ffd_pack(lengths[items], cfg.max_seq_len), [cfg.seed, 2, salt])
    return plan, items[plan.items]


def packed_batches(
    samples, plan: PackPlan, records: np.ndarray, lengths: np.ndarray, chosen: np.ndarray
) -> Iterator[pa.RecordBatch]:
    """Stage 5: packed rows as Arrow record batches, built with takes and offsets (no per-token loop).
    A preference pair is one record and two sequences (positions restart at its rejected side)."""
    ids_col, labels_col = samples.data.column("input_ids"), samples.data.column("labels")
    for first in range(0, plan.num_rows, WRITE_BATCH_ROWS):
        last = min(first + WRITE_BATCH_ROWS, plan.num_rows)
        lo, hi = plan.row_offsets[first], plan.row_offsets[last]
        rec = records[lo:hi]
        lens = lengths[rec].astype(np.int64)
        seq_lens, seqs_per_record = sequence_lengths(lens, chosen[rec])
        row_samples = plan.row_offsets[first : last + 1] - lo
        token_offsets = np.concatenate([[0], np.cumsum(lens)])[row_samples].astype(np.int32)
        seq_offsets = np.concatenate([[0], np.cumsum(seqs_per_record)])[row_samples].astype(np.int32)
        take = pa.array(rec, pa.int64())
        ids = pa.concat_arrays(ids_col.take(take).chunks).flatten()
        labels = pa.concat_arrays(labels_col.take(take).chunks).flatten()
        starts = np.repeat(np.cumsum(seq_lens) - seq_lens, seq_lens)
        positions = (np.arange(int(seq_lens.sum())) - starts).astype(np.int32)
        columns = [
            pa.ListArray.from_arrays(token_offsets, ids),
            pa.ListArray.from_arrays(token_offsets, labels),
            pa.ListArray.from_arrays(token_offsets, pa.array(positions)),
            pa.ListArray.from_arrays(seq_offsets, pa.array(seq_lens.astype(np.int32))),
        ]
        yield pa.record_batch(columns, schema=PACKED_SCHEMA)


def write_split(
    samples, plan: PackPlan, records: np.ndarray, cols: dict[str, np.ndarray], path: Path, progress: bool
):
    import datasets

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, PACKED_SCHEMA) as writer:
        writer.write_table(PACKED_SCHEMA.empty_table())
        total = -(-plan.num_rows // WRITE_BATCH_ROWS)
        batches = packed_batches(samples, plan, records, cols["length"], cols["chosen_length"])
        for batch in tqdm(batches, total=total, desc=f"write {path.stem}",
                          unit=" chunks", disable=not progress):  # fmt: skip
            writer.write_batch(batch)
    return datasets.Dataset.from_file(str(path))


def build(
    cfg: MixtureConfig,
    out_dir: str | Path,
    *,
    num_proc: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    inputs: Iterable[str | os.PathLike] = (),
) -> BuildResult:
    """Run the whole build; raises ``ValueError`` for user errors (bad source, ``--strict`` drops).

    ``inputs``: more paths ``--out`` must not hold (the config file); the sources and the tokenizer
    are always protected. See :mod:`data_recipes.outdir` for what ``overwrite`` may replace."""
    import datasets

    out = Path(out_dir)
    protected = build_inputs(cfg, inputs)
    specs = preflight(cfg, out, overwrite, protected)
    tokenizer = get_tokenizer(cfg.tokenizer)  # fails early on a bad tokenizer path
    num_proc = num_proc or default_num_proc()
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        with owned_output(out, COMMAND, overwrite, protected, estimate_bytes(specs)) as staging:
            (staging / ".work").mkdir()
            manifest, timings = run_stages(cfg, specs, staging, tokenizer, num_proc, strict, progress)
            shutil.rmtree(staging / ".work")
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return BuildResult(manifest=manifest, out_dir=out, timings=timings)


def run_stages(
    cfg: MixtureConfig,
    specs: list[SourceSpec],
    staging: Path,
    tokenizer,
    num_proc: int,
    strict: bool,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Stages 1-5 into ``staging`` (scratch files in ``staging/.work``), then the manifest; returns it
    and the stage timings."""
    import datasets

    work = staging / ".work"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    inputs = read_sources(specs, work / "raw.arrow", progress)
    check_inputs(cfg, [i["num_inputs"] for i in inputs])
    timings["read_s"] = time.perf_counter() - t
    t, cpu = time.perf_counter(), cpu_seconds()
    samples = render_samples(cfg, work / "raw.arrow", work, num_proc, progress)
    timings["render_s"] = time.perf_counter() - t
    timings["render_cpu_s"] = cpu_seconds() - cpu  # all workers: what a shared machine cannot distort
    t = time.perf_counter()
    cols = mf.columns(samples)
    sel = select(cfg, cols)
    mf.enforce(cfg, sel.reason, cols, samples, strict)
    mf.require_training_samples(cfg, sel, samples)
    splits, plans = {}, {}
    for salt, (name, items) in enumerate((("train", sel.train), ("validation", sel.validation))):
        plans[name] = pack_split(items, cols["length"], cfg, salt)
    timings["select_pack_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for name, (plan, records) in plans.items():
        splits[name] = write_split(samples, plan, records, cols, work / f"{name}.arrow", progress)
    empty = {name: 1 for name, split in splits.items() if len(split) == 0}  # one (empty) shard, loadable
    datasets.DatasetDict(splits).save_to_disk(str(staging), num_shards=empty)
    timings["write_s"] = time.perf_counter() - t
    manifest = mf.make_manifest(cfg, specs, inputs, cols, sel, plans, samples, tokenizer, num_proc, timings)
    mf.write_manifest(manifest, staging / "manifest.json")
    return manifest, timings
