"""Read raw rows from local files, ``datasets`` folders and the Hub, as ``(origin, json_text)`` pairs.

Every reader streams: JSONL line by line, a JSON array element by element (an incremental decoder,
not ``json.load``), Parquet and ``datasets`` folders in record batches, the Hub with
``streaming=True``. Rows are passed on as JSON *text*, unparsed for JSONL, so that

* a malformed line (or array element: reading resumes at the next one) is not an exception here: the
  builder's workers fail to parse it and count it (``malformed_json``) with its ``file:line``; so is a
  line whose bytes are not UTF-8 (``invalid_utf8``);
* heterogeneous rows (tool schemas, argument dicts of different shapes) are never forced into one
  Arrow struct type, which is how other pipelines null-pad or reject them.

``origin`` is ``file:line`` for JSONL/JSON (1-based line where the row starts), ``file:row`` for
Parquet and ``datasets`` folders (1-based row index), ``hub:NAME[split]:row`` for the Hub.

:func:`resolve` checks a source before any work starts: missing or unreadable files, unknown
extensions, a folder that is not a ``datasets`` folder, and Hub names while offline are clear errors.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

SourceKind = Literal["jsonl", "json", "parquet", "datasets", "hub"]
CHUNK_CHARS = 1 << 20
MAX_INDENT = 256  # longest line prefix kept across buffer refills (JSON arrays)
BATCH_ROWS = 1024
OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
# A row whose bytes are not UTF-8 is passed on as this marker + a description (a NUL never starts JSON
# text), so the worker counts it as an ``invalid_utf8`` drop with its file:line like any bad row.
NOT_UTF8 = "\x00not utf-8: "


@dataclass(frozen=True)
class SourceSpec:
    """A resolved source: what kind of reader, where, and how origins are written."""

    kind: SourceKind
    location: str
    display: str
    """Prefix of every origin: the path as the user sees it, or ``hub:NAME``."""
    split: str = "train"
    subset: str | None = None


def _display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _kind_of_file(path: Path) -> SourceKind:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"{path}: unknown file type (expected .jsonl, .json, .parquet, optionally .gz)")


def _offline() -> str | None:
    return next(
        (v for v in OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")), None
    )


def resolve(
    path: str | None = None, hub: str | None = None, split: str = "train", subset: str | None = None
) -> SourceSpec:
    """Check that a source can be read and say how; raises ``ValueError`` naming it otherwise."""
    if hub is not None:
        if var := _offline():
            raise ValueError(
                f"source hub:{hub}: the Hub is offline ({var}=1); download the dataset and use `path:` instead"
            )
        _open_hub(hub, split, subset)  # resolves the dataset's files now, so a bad name fails early
        return SourceSpec("hub", hub, f"hub:{hub}[{split}]", split, subset)
    assert path is not None
    p = Path(path)
    if not p.exists():
        raise ValueError(f"source {path}: file not found")
    if p.is_dir():
        if not any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise ValueError(f"source {path}: a folder must be written by datasets' save_to_disk")
        _load_datasets_dir(p, split)
        return SourceSpec("datasets", str(p), _display_path(p), split)
    kind = _kind_of_file(p)
    try:
        with _open_text(p) as f:
            f.read(1)
        if kind == "parquet":
            import pyarrow.parquet as pq

            pq.ParquetFile(p)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"source {path}: not readable ({err})") from err
    except Exception as err:  # pyarrow raises its own error types for a corrupt footer
        raise ValueError(f"source {path}: not a readable {kind} file ({err})") from err
    return SourceSpec(kind, str(p), _display_path(p))


def _undecodable(raw: str) -> str | None:
    """Where a text row read with ``errors="surrogateescape"`` holds a byte that was not UTF-8."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"byte 0x{ord(raw[err.start]) & 0xFF:02x} at char {err.start} is not UTF-8"
    return None


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape")
    if path.name.lower().endswith(".parquet"):
        return open(path, encoding="latin-1")  # only probed for readability
    return open(path, encoding="utf-8", errors="surrogateescape")  # bad bytes: see NOT_UTF8


def iter_rows(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    """``(origin, json_text)`` for every row of the source, in order.

    A row whose bytes are not UTF-8 is passed on as :data:`NOT_UTF8` + a description (a counted drop).
    A file that cannot be read to its end (a truncated or corrupt ``.gz``, an I/O error) raises
    ``ValueError`` naming the file and the last row read: a damaged file is never silently cut short."""
    readers = {
        "jsonl": _iter_jsonl,
        "json": _iter_json,
        "parquet": _iter_parquet,
        "datasets": _iter_datasets,
        "hub": _iter_hub,
    }
    last = None
    try:
        for origin, raw in readers[spec.kind](spec):
            last = origin
            if not raw.isascii() and (bad := _undecodable(raw)):  # isascii: the fast path, a C scan
                raw = NOT_UTF8 + bad
            yield origin, raw
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as err:
        after = f"after {last}" if last else "before its first row"
        hint = (
            "truncated or corrupt"
            if isinstance(err, EOFError | zlib.error | gzip.BadGzipFile)
            else "unreadable"
        )
        if isinstance(err, UnicodeDecodeError):
            hint = "not UTF-8 text"
        raise ValueError(
            f"source {spec.display}: reading failed {after}: the file is {hint} ({type(err).__name__}: {err}); "
            "fix or re-download it"
        ) from err


def _iter_jsonl(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    with _open_text(Path(spec.location)) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield f"{spec.display}:{n}", line


def _iter_json(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    """A ``.json`` file: a top-level array, streamed element by element; anything else is JSON Lines."""
    with _open_text(Path(spec.location)) as f:
        head = f.read(CHUNK_CHARS)
        if not head.lstrip().startswith("["):  # not an array: JSON Lines with a .json name
            lines = itertools.chain(io.StringIO(head + f.readline()), f)  # the head may end mid-line
            for n, line in enumerate(lines, start=1):
                if line.strip():
                    yield f"{spec.display}:{n}", line
            return
        yield from _iter_json_array(f, head, spec.display)


def _iter_json_array(f: IO[str], buf: str, display: str) -> Iterator[tuple[str, str]]:
    """The elements of a top-level array, one at a time, with the line each starts on.

    A malformed element is passed on as text (the worker counts it as ``malformed_json`` with its
    line) and reading resumes at the next element: the next line that opens an object at the broken
    element's indentation (how JSON writers lay out arrays of rows). Where that cannot be found (an
    array written on one line, a file cut short) the file is refused as a whole, naming the line: an
    array is never read halfway."""
    decoder = json.JSONDecoder()
    pos = buf.index("[") + 1
    line = 1 + buf.count("\n", 0, pos)
    eof = False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            line += buf[pos] == "\n"
            pos += 1
        if pos >= len(buf) and not eof:
            buf, pos, eof = _refill(f, buf, pos)
            continue
        if pos >= len(buf):
            raise ValueError(f"{display}:{line}: the JSON array is not closed: the file is truncated")
        if buf[pos] == "]":
            _check_rest(f, buf[pos + 1 :], display, line)
            return
        try:
            _, end = decoder.raw_decode(buf, pos)
            error = None
        except json.JSONDecodeError as err:
            end, error = len(buf), err
        resume = _next_element(buf, pos) if error else -1
        if end >= len(buf) and resume < 0 and not eof:  # maybe just cut by the chunk boundary: read on
            buf, pos, eof = _refill(f, buf, pos)
            continue
        if error is not None:
            if resume < 0:
                raise ValueError(
                    f"{display}:{line}: malformed element in the JSON array ({error.msg}), and the next "
                    "element cannot be found after it (one-line array or truncated file): fix the element "
                    "or convert the file to JSON Lines"
                )
            end = resume
        yield f"{display}:{line}", buf[pos:end].rstrip(" \t\r\n,")
        line += buf.count("\n", pos, end)
        pos = end


def _next_element(buf: str, pos: int) -> int:
    """Where the element after the one starting at ``pos`` starts: the next line that opens an object
    at the same indentation; -1 if the element does not start its line or no such line is buffered."""
    newline = buf.rfind("\n", 0, pos)
    indent = buf[newline + 1 : pos]
    if newline < 0 or indent.strip():
        return -1
    hit = buf.find(f"\n{indent}{{", pos)
    return hit + 1 if hit >= 0 else -1


def _check_rest(f: IO[str], rest: str, display: str, line: int) -> None:
    """Nothing but whitespace may follow the array's closing bracket."""
    while True:
        if rest.strip():
            raise ValueError(f"{display}:{line}: content after the end of the JSON array")
        rest = f.read(CHUNK_CHARS)
        if not rest:
            return


def _refill(f: IO[str], buf: str, pos: int) -> tuple[str, int, bool]:
    """More text after ``buf[pos:]``; the current line's start (its newline and indentation) is kept
    so that :func:`_next_element` still sees the indentation of the element at ``pos``."""
    chunk = f.read(CHUNK_CHARS)
    keep = buf.rfind("\n", 0, pos)
    keep = keep if keep >= 0 and pos - keep <= MAX_INDENT else pos
    return buf[keep:] + chunk, pos - keep, not chunk


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _dump(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=_json_default)


def _iter_parquet(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(spec.location).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield f"{spec.display}:{n}", _dump(row)


def _load_datasets_dir(path: Path, split: str):
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # datasets raises FileNotFoundError or its own errors for a broken folder
        raise ValueError(f"source {path}: not a readable datasets folder ({err})") from err
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise ValueError(f"source {path}: no split {split!r} (has {sorted(ds)})")
        ds = ds[split]
    return ds


def _iter_batches(ds: Any, display: str) -> Iterator[tuple[str, str]]:
    n = 0
    for batch in ds.iter(batch_size=BATCH_ROWS):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            n += 1
            yield f"{display}:{n}", _dump(dict(zip(keys, values, strict=True)))


def _iter_datasets(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    yield from _iter_batches(_load_datasets_dir(Path(spec.location), spec.split), spec.display)


def _open_hub(name: str, split: str, subset: str | None):
    from datasets import load_dataset

    try:
        return load_dataset(name, subset, split=split, streaming=True)
    except Exception as err:  # network, auth and not-found errors all end the same way for the user
        raise ValueError(
            f"source hub:{name}: cannot open it on the Hub ({type(err).__name__}: {err})"
        ) from err


def _iter_hub(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    yield from _iter_batches(_open_hub(spec.location, spec.split, spec.subset), spec.display)
