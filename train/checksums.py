"""File checksums for checkpoints and exports: every file written is hashed into the folder's manifest.

xxHash3-128 (``xxhash``): ~10 GB/s per core, so hashing costs far less than writing the bytes. A
checkpoint records ``{"algorithm", "files": {relative path: hex digest}}`` under ``checksums`` in
``hermes_state.json``; an export records the same object in ``checksums.json``. Resume, export and
``verify`` recompute and compare, naming the first file that differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xxhash

from train.fileio import write_json

ALGORITHM = "xxh3_128"
FOLDER_FILE = "checksums.json"
"""An exported folder's checksums (every other file in it)."""
CHUNK = 16 << 20


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every regular file under ``folder`` as a sorted POSIX relative path, minus the names in ``skip``."""
    skip = set(skip)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in skip
    )


def digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: file_digest(folder / name) for name in names}


def manifest(files: dict[str, str]) -> dict[str, Any]:
    return {"algorithm": ALGORITHM, "files": dict(sorted(files.items()))}


def mismatches(folder: Path, recorded: dict[str, Any]) -> list[str]:
    """What differs from ``recorded`` (a :func:`manifest`): one line per missing or changed file."""
    if recorded.get("algorithm") != ALGORITHM:
        return [f"{folder}: checksums use {recorded.get('algorithm')!r}; this version checks {ALGORITHM}"]
    problems = []
    for name, expected in recorded.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing (listed in the checksums)")
        elif file_digest(path) != expected:
            problems.append(f"{path}: checksum mismatch (the file changed after it was written: corrupt)")
    return problems


def write_folder_checksums(folder: Path) -> dict[str, Any]:
    """Hash every file of ``folder`` (but this file) into ``folder/checksums.json``; returns the manifest."""
    recorded = manifest(digests(folder, tree_files(folder, skip=[FOLDER_FILE])))
    write_json(folder / FOLDER_FILE, recorded)
    return recorded


def folder_problems(folder: Path) -> list[str] | None:
    """Mismatches against ``folder/checksums.json``; None when the folder has no checksums file."""
    path = folder / FOLDER_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"{path}: unreadable ({err})"]
    return mismatches(folder, recorded)


SAMPLES, SAMPLE_BYTES = 64, 64 << 10


def weights_fingerprint(folder: Path) -> str:
    """Which weights a model folder holds, cheaply: every weight file's name, size, first MiB (the
    safetensors header) and 64 blocks of 64 KiB spread over it. Two models of the same shape differ in
    every block (another init or fine-tune); reading 4 MiB per file costs nothing next to a 70B load.
    An identity, not an integrity check (a flipped bit between the samples goes unseen: that is what
    :func:`mismatches` is for)."""
    h = xxhash.xxh3_128()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            for i in range(SAMPLES):
                f.seek(size * i // SAMPLES)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]
