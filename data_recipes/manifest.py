"""The build manifest (``DATASET_DIR/manifest.json``): accounting, per-source counters, hashes; and
its rendering as tables (``hermes-sft data build`` summary, ``hermes-sft data stats``).

Accounting identities (checked with ``assert`` before the manifest is written):

* ``num_samples_in == num_samples_kept + sum(dropped.values())``, in total and per source;
* ``num_samples_in == num_inputs`` unless ``history: expand`` (one input → one sample per reply);
* ``num_samples_out`` counts samples in the packed dataset with mixture repeats (train + validation);
  ``num_samples_selected`` counts the distinct kept samples the mixture chose.

``ignored_fields`` (in total and per source) maps each non-empty input column that no reader used
(metadata such as ``source`` or ``category``, a preference row's pair columns under a forced format)
to the number of rows that had it, so no column disappears unannounced.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from data_recipes.config_io import to_dict
from data_recipes.mixture import MixtureConfig, config_hash
from data_recipes.tokenizer import template_fingerprint, tokenizer_fingerprint

FORMAT_VERSION = 1
MAX_EXAMPLES = 5


def content_hasher() -> xxhash.xxh3_128:
    """The per-source content hash: XXH3-128 over every row's text as read, each followed by a NUL."""
    return xxhash.xxh3_128()


def content_fingerprint(per_source: dict[str, dict[str, Any]]) -> str:
    """One hash of the dataset's inputs: every source's label, content hash and row count, in config
    order. Two builds with the same fingerprint read the same rows (what training resume compares)."""
    h = xxhash.xxh3_128()
    for label, entry in per_source.items():
        h.update(json.dumps([label, entry["content_hash"], entry["num_inputs"]]).encode() + b"\n")
    return h.hexdigest()


def columns(samples) -> dict[str, np.ndarray]:
    """The per-sample columns selection needs, as numpy arrays (no token lists)."""
    table = samples.data
    out = {}
    for name in ("source", "length", "num_trained", "digest_hi", "digest_lo", "cut", "chosen_length", "fallback",
                 "audited"):  # fmt: skip
        out[name] = table.column(name).to_numpy()
    for name in ("error", "format"):
        out[name] = np.asarray(table.column(name).to_pylist(), dtype=object)
    out["ignored"] = np.empty(len(table), dtype=object)
    out["ignored"][:] = table.column("ignored").to_pylist()
    return out


def ignored_fields(ignored: np.ndarray) -> dict[str, int]:
    """Column name → number of rows in which no reader used it (sorted by count, then name)."""
    counts = Counter(name for names in ignored for name in names)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _examples(idx: np.ndarray, samples, limit: int = MAX_EXAMPLES) -> tuple[list[str], list[str]]:
    take = pa.array(idx[:limit], pa.int64())
    origins = samples.data.column("origin").take(take).to_pylist()
    details = samples.data.column("detail").take(take).to_pylist()
    return origins, [f"{o}: {d}" if d else o for o, d in zip(origins, details, strict=True)]


def drop_summary(reason: np.ndarray, samples, mask: np.ndarray | None = None) -> dict[str, Any]:
    """``dropped`` (reason → count), ``drop_examples`` (reason → first origins), ``drop_details``."""
    sel = reason if mask is None else reason[mask]
    where = np.arange(len(reason)) if mask is None else np.flatnonzero(mask)
    dropped, examples, details = {}, {}, {}
    for name in sorted(set(sel.tolist()) - {""}):
        idx = where[sel == name]
        dropped[name] = len(idx)
        examples[name], details[name] = _examples(idx, samples)
    return {"dropped": dropped, "drop_examples": examples, "drop_details": details}


def enforce(
    cfg: MixtureConfig, reason: np.ndarray, cols: dict[str, np.ndarray], samples, strict: bool
) -> None:
    """``overlong: error`` and ``--strict`` turn drops into a ``ValueError`` that lists them."""
    if strict:
        limited, why = reason != "", "--strict"
    elif cfg.overlong == "error":
        limited, why = reason == "too_long", "overlong: error"
    else:
        return
    if not limited.any():
        return
    summary = drop_summary(np.where(limited, reason, ""), samples)
    lines = [
        f"  {name}: {n} (first: {'; '.join(summary['drop_details'][name][:3])})"
        for name, n in summary["dropped"].items()
    ]
    raise ValueError(f"{why}: {int(limited.sum())} sample(s) would be dropped:\n" + "\n".join(lines))


def require_training_samples(cfg: MixtureConfig, sel, samples) -> None:
    """A build that would write no training sample (all weights / counts zero, every sample dropped)
    is an error that says why, never an empty dataset and exit 0."""
    if len(sel.train):
        return
    kept = int((sel.reason == "").sum())
    summary = drop_summary(sel.reason, samples)
    drops = "; ".join(
        f"{name}: {n} (first: {summary['drop_details'][name][0]})" for name, n in summary["dropped"].items()
    )
    if len(sel.validation):
        why = (
            f"all {len(sel.validation)} selected sample(s) went to validation "
            f"(validation_fraction: {cfg.validation_fraction:g}); lower it or add data"
        )
    elif kept:
        why = f"{kept} sample(s) were kept, but the mixture selects none for training (weights / counts are zero?)"
    else:
        why = f"every one of the {len(sel.reason)} sample(s) was dropped ({drops})"
    raise ValueError(f"the build would write an empty training set: {why}")


def _split_stats(plan, records: np.ndarray, cols: dict[str, np.ndarray], max_seq_len: int) -> dict[str, Any]:
    tokens = int(cols["length"][records].sum())
    pairs = cols["chosen_length"][records] > 0
    extra = {"num_pairs": int(pairs.sum())} if pairs.any() else {}
    return {
        **extra,
        "num_rows": plan.num_rows,
        "num_samples": len(records),
        "num_tokens": tokens,
        "num_trained_tokens": int(cols["num_trained"][records].sum()),
        "packing_efficiency": tokens / (plan.num_rows * max_seq_len) if plan.num_rows else 1.0,
    }


def _per_source(cfg, specs, inputs, cols, sel, samples) -> dict[str, Any]:
    out_items = np.concatenate([sel.train, sel.validation])
    n = len(cfg.sources)
    tokens = np.bincount(cols["source"][out_items], weights=cols["length"][out_items], minlength=n)
    trained = np.bincount(cols["source"][out_items], weights=cols["num_trained"][out_items], minlength=n)
    per = {}
    for s, (src, spec) in enumerate(zip(cfg.sources, specs, strict=True)):
        mine = cols["source"] == s
        kept = mine & (sel.reason == "")
        formats, fcounts = np.unique(cols["format"][mine].astype(str), return_counts=True)
        entry = {
            "location": spec.display, "recipe": src.recipe, "format": src.format,
            "formats_detected": dict(zip(formats.tolist(), map(int, fcounts), strict=True)),
            "content_hash": inputs[s]["content_hash"], "num_inputs": inputs[s]["num_inputs"],
            "num_samples_in": int(mine.sum()), "num_samples_kept": int(kept.sum()),
            **drop_summary(sel.reason, samples, mine),
            "ignored_fields": ignored_fields(cols["ignored"][mine]),
            "num_length_cut": int((kept & cols["cut"]).sum()),
            "num_samples_selected": int((cols["source"][sel.selected] == s).sum()),
            "num_samples_out": int((cols["source"][out_items] == s).sum()),
            "num_validation": int((cols["source"][sel.validation] == s).sum()),
            "num_tokens": int(tokens[s]), "num_trained_tokens": int(trained[s]),
        }  # fmt: skip
        assert entry["num_samples_in"] == entry["num_samples_kept"] + sum(entry["dropped"].values())
        per[src.label] = entry
    return per


def make_manifest(
    cfg, specs, inputs, cols, sel, plans, samples, tokenizer, num_proc, timings
) -> dict[str, Any]:
    splits = {name: _split_stats(plan, rec, cols, cfg.max_seq_len) for name, (plan, rec) in plans.items()}
    num_rows = sum(s["num_rows"] for s in splits.values())
    num_tokens = sum(s["num_tokens"] for s in splits.values())
    totals = drop_summary(sel.reason, samples)
    per_source = _per_source(cfg, specs, inputs, cols, sel, samples)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": cfg.kind,  # preference: every sample is a chosen/rejected pair (two sequences per item)
        "max_seq_len": cfg.max_seq_len,
        "seed": cfg.seed,
        "history": cfg.history,
        "tokenizer": cfg.tokenizer,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "template_fingerprint": template_fingerprint(),
        "config_hash": config_hash(cfg),
        "num_inputs": sum(i["num_inputs"] for i in inputs),
        "num_samples_in": len(sel.reason),
        "num_samples_kept": int((sel.reason == "").sum()),
        **totals,
        "ignored_fields": ignored_fields(cols["ignored"]),
        "num_samples_selected": len(sel.selected),
        "num_samples_out": len(sel.train) + len(sel.validation),
        "num_rows": num_rows,
        "num_tokens": num_tokens,
        "num_trained_tokens": sum(s["num_trained_tokens"] for s in splits.values()),
        "packing_efficiency": num_tokens / (num_rows * cfg.max_seq_len) if num_rows else 1.0,
        "splits": splits,
        "per_source": per_source,
        "content_fingerprint": content_fingerprint(per_source),
        "render": {
            "check": cfg.check_mode,
            "check_rate": cfg.check_rate if cfg.check_mode == "sample" else None,
            "num_audited": int(cols["audited"].sum()),
            "num_fallback": int(cols["fallback"].sum()),
        },
        "num_proc": num_proc,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": to_dict(cfg),
    }
    assert manifest["num_samples_in"] == manifest["num_samples_kept"] + sum(manifest["dropped"].values())
    return manifest


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{dataset_dir}: no manifest.json (not a folder written by `hermes-sft data build`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable manifest ({err}); rebuild the dataset") from err


def tables(manifest: dict[str, Any]) -> list:
    """Rich tables: overview, per source, drops with their first origins."""
    from rich.table import Table

    overview = Table(title="dataset", show_header=False)
    overview.add_column("key", style="bold")
    overview.add_column("value", justify="right")
    for key in ("num_inputs", "num_samples_in", "num_samples_kept", "num_samples_selected", "num_samples_out",
                "num_rows", "num_tokens", "num_trained_tokens"):  # fmt: skip
        overview.add_row(key, f"{manifest[key]:,}")
    overview.add_row("dropped", f"{sum(manifest['dropped'].values()):,}")
    if manifest.get("kind") == "preference":  # a sample is a chosen/rejected pair
        pairs = sum(split.get("num_pairs", 0) for split in manifest["splits"].values())
        overview.add_row("kind / pairs out", f"preference / {pairs:,}")
    overview.add_row("packing_efficiency", f"{manifest['packing_efficiency']:.4%}")
    for name, split in manifest["splits"].items():
        overview.add_row(f"{name} rows / samples", f"{split['num_rows']:,} / {split['num_samples']:,}")
    overview.add_row(
        "max_seq_len / seed / history",
        f"{manifest['max_seq_len']} / {manifest['seed']} / {manifest['history']}",
    )
    overview.add_row(
        "tokenizer / template", f"{manifest['tokenizer_fingerprint']} / {manifest['template_fingerprint']}"
    )
    overview.add_row("config_hash", manifest["config_hash"])
    if "content_fingerprint" in manifest:  # manifests of earlier builds lack it
        overview.add_row("content_fingerprint", manifest["content_fingerprint"])
    if render := manifest.get("render"):  # absent in manifests written before the audit existed
        overview.add_row(
            "checks / audited / exact fallback",
            f"{render['check']} / {render['num_audited']:,} / {render['num_fallback']:,}",
        )

    per = Table(title="per source")
    for col in ("source", "recipe", "in", "kept", "dropped", "out", "val", "tokens", "trained", "cut"):
        per.add_column(col, justify="left" if col in ("source", "recipe") else "right")
    for label, s in manifest["per_source"].items():
        per.add_row(label, s["recipe"], f"{s['num_samples_in']:,}", f"{s['num_samples_kept']:,}",
                    f"{sum(s['dropped'].values()):,}", f"{s['num_samples_out']:,}", f"{s['num_validation']:,}",
                    f"{s['num_tokens']:,}", f"{s['num_trained_tokens']:,}", f"{s['num_length_cut']:,}")  # fmt: skip

    drops = Table(title="dropped samples")
    drops.add_column("reason")
    drops.add_column("count", justify="right")
    drops.add_column("first offenders")
    for reason, count in sorted(manifest["dropped"].items(), key=lambda kv: -kv[1]):
        drops.add_row(reason, f"{count:,}", "\n".join(manifest["drop_details"].get(reason, [])[:3]))
    out = [overview, per, drops] if manifest["dropped"] else [overview, per]
    return out + ([_ignored_table(manifest)] if manifest.get("ignored_fields") else [])


def _ignored_table(manifest: dict[str, Any]):
    from rich.table import Table

    table = Table(title="input columns no reader used (ignored_fields)")
    table.add_column("source")
    table.add_column("column")
    table.add_column("rows", justify="right")
    for label, s in manifest["per_source"].items():
        for name, count in s.get("ignored_fields", {}).items():
            table.add_row(label, name, f"{count:,}")
    return table
