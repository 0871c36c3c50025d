"""Stage 2 of ``hermes-sft data build`` in parallel: raw rows → sample records.

The raw rows are cut into tasks of consecutive rows. ``num_proc`` forked worker processes take the
next task as soon as they finish one, so a stretch of long (reasoning) samples does not leave one
worker busy while the other idles — which is what fixed contiguous shards (``datasets.map``) did: two
workers gave ~1.5x one worker when the sources were of different lengths. Each task's records go to
their own Arrow file; the parent reads the files back in task order (memory-mapped), so the result
does not depend on the number of workers. Workers inherit the loaded tokenizer (fork), and each runs
its tokenizer on one thread: the processes are the parallelism.

Nothing is kept in memory beyond one task's records per worker.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from data_recipes.pipeline import RECORD_SCHEMA, WorkerContext, get_tokenizer, process_batch, record_batch
from data_recipes.segments import segmenter_for
from data_recipes.template_engine import compiled_template

BATCH_ROWS = 128  # rows per process_batch call (one batched tokenizer call per render setting)
TASKS_PER_WORKER = 16  # enough tasks that the last one to finish costs a few percent at most
MAX_TASK_ROWS = 4096

_WORKER: dict[str, object] = {}  # per process: the raw table, the output folder, the context, the function
BatchFn = Callable[[dict[str, list], WorkerContext], dict[str, list]]


def task_ranges(num_rows: int, num_proc: int) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges: ~``TASKS_PER_WORKER`` per worker, whole batches, at least one."""
    per_task = math.ceil(num_rows / max(1, num_proc * TASKS_PER_WORKER) / BATCH_ROWS) * BATCH_ROWS
    per_task = min(MAX_TASK_ROWS, max(BATCH_ROWS, per_task))
    return [(start, min(num_rows, start + per_task)) for start in range(0, num_rows, per_task)] or [(0, 0)]


def read_stream(path: Path) -> pa.Table:
    """An Arrow IPC stream file as a memory-mapped table (no copy)."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # the map lives as long as the table


def render_records(
    raw_path: Path,
    out_dir: Path,
    ctx: WorkerContext,
    num_proc: int,
    progress: bool,
    process: BatchFn = process_batch,
):
    """Render every raw row into sample records with ``process`` (:func:`process_batch` for SFT rows,
    ``preference.process_pair_batch`` for pairs); returns them as one memory-mapped ``Dataset``."""
    import datasets
    from datasets.table import MemoryMappedTable, concat_tables

    out_dir.mkdir(parents=True, exist_ok=True)
    segmenter_for(get_tokenizer(ctx.tokenizer))  # loaded once, here: the forked workers inherit them,
    compiled_template()  # with the compiled chat template
    _init_worker(raw_path, out_dir, ctx, process, single=num_proc <= 1)
    tasks = list(enumerate(task_ranges(_raw_table().num_rows, num_proc)))
    bar = tqdm(total=_raw_table().num_rows, desc="render + tokenize", unit=" rows", disable=not progress)
    with bar:
        for rows in _run_all(tasks, (raw_path, out_dir, ctx, process), num_proc):
            bar.update(rows)
    # One Dataset over the memory-mapped task files (Dataset.from_file per file costs ~8 ms each).
    return datasets.Dataset(
        concat_tables([MemoryMappedTable.from_file(str(_task_file(out_dir, i))) for i, _ in tasks])
    )


def _run_all(tasks, init: tuple, num_proc: int) -> Iterator[int]:
    if num_proc <= 1 or len(tasks) == 1:
        yield from map(_run_task, tasks)
        return
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the OOM killer raises
    # BrokenProcessPool here instead of leaving the build waiting forever for its task.
    pool = ProcessPoolExecutor(
        min(num_proc, len(tasks)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(*init, False),
    )
    try:
        for done in as_completed([pool.submit(_run_task, task) for task in tasks]):
            yield done.result()  # the first error (an audit failure, a bug) is raised here
    except BrokenProcessPool as err:
        raise RuntimeError(
            f"a render worker died ({err}); out of memory? Rerun with fewer workers (--num-proc)"
        ) from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(raw_path: Path, out_dir: Path, ctx: WorkerContext, process: BatchFn, single: bool) -> None:
    if not single:  # one tokenizer thread per worker process
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(raw=read_stream(raw_path), out_dir=out_dir, ctx=ctx, process=process)


def _raw_table() -> pa.Table:
    return _WORKER["raw"]  # type: ignore[return-value]


def _task_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"records-{index:06d}.arrow"


def _run_task(task: tuple[int, tuple[int, int]]) -> int:
    """Render one task's rows into its Arrow file; returns the number of rows done."""
    index, (start, stop) = task
    ctx: WorkerContext = _WORKER["ctx"]  # type: ignore[assignment]
    path = _task_file(_WORKER["out_dir"], index)  # type: ignore[arg-type]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
        writer.write_table(RECORD_SCHEMA.empty_table())
        for first in range(start, stop, BATCH_ROWS):
            rows = _raw_table().slice(first, min(BATCH_ROWS, stop - first)).to_pydict()
            writer.write_batch(record_batch(_WORKER["process"](rows, ctx)))  # type: ignore[operator]
    return stop - start
