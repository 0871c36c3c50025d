"""``export_checkpoint``: a run / checkpoint / model folder → a BF16, FP8 or LoRA-adapter folder.

Order of work (each step can only fail before the next starts):

1. resolve the input and check it (complete checkpoint, weights match the model config, LoRA base
   fits, FP8 layers quantizable, output folder free, enough disk) — nothing is written yet;
2. stream the weights into a hidden temporary folder next to the target, shard by shard;
3. write config.json, generation_config.json, the training tokenizer + template, the model card;
4. verify the folder (unless disabled) and put the verification table in the model card;
5. rename the temporary folder to the target. Any exception on the way deletes it.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from train.export.reading.source import Source, Weights, open_weights, resolve_source
from train.export.reading.tensors import (
    DEFAULT_CHUNK_BYTES,
    LazyTensor,
    adapter_tensors,
    export_adapter_config,
)
from train.export.verify import verify_folder
from train.export.verify.report import Reference, VerifyReport
from train.export.writing.folder import (
    CardInfo,
    atomic_output_dir,
    check_target,
    model_card,
    write_config,
    write_generation_config,
    write_outputs,
    write_tokenizer,
)
from train.export.writing.formats import (
    Fp8Plan,
    bf16_outputs,
    fp8_outputs,
    plan_fp8,
    write_quantization_config,
)
from train.fileio import write_json
from train.safetensors_io import ShardedWriter, parse_size

FORMATS = ("bf16", "fp8")


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    """``bf16``, ``fp8`` or ``lora-adapter``."""
    source: str
    num_tensors: int
    num_params: int
    total_bytes: int
    num_shards: int
    seconds: float
    peak_rss_mb: float
    """Peak resident memory of this process so far (includes whatever ran before the export)."""
    quantized_layers: int = 0
    notes: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.verify is None or self.verify.ok

    def summary(self) -> str:
        lines = [
            f"exported {self.source}",
            f"  -> {self.out_dir} ({self.format}): {self.num_tensors} tensors, {self.num_params:,} parameters, "
            f"{self.total_bytes / 1e9:.3f} GB in {self.num_shards} file(s)",
            f"  {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB"
            + (f", {self.quantized_layers} Linear layers in FP8" if self.quantized_layers else ""),
        ]
        lines += [f"  note: {n}" for n in self.notes]
        if self.verify is not None:
            lines.append(f"  verify: {'PASS' if self.verify.ok else 'FAIL'}")
        return "\n".join(lines)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_checkpoint(
    src: str | Path,
    out: str | Path,
    fmt: str = "bf16",
    *,
    merge_lora: bool = False,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    verify: bool = True,
    base_model: str | Path | None = None,
    model_config: str | Path | None = None,
    fp8_ignore: list[str] | tuple[str, ...] = (),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> ExportResult:
    """Export ``src`` (run dir, checkpoint, DeepSpeed save dir or HF folder) to ``out``.

    ``fmt``: ``bf16`` or ``fp8``. A LoRA source exports its adapter alone (PEFT layout) unless
    ``merge_lora``; FP8 always merges. Raises ValueError for bad input, before writing anything.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    start = time.perf_counter()
    shard_bytes = parse_size(max_shard_size)
    source = resolve_source(src, model_config, base_model)
    out = Path(out).expanduser().resolve()
    protect = [p for p in (source.path, source.checkpoint_dir, source.hf_dir, source.base_model_dir) if p]
    check_target(out, overwrite, protect)
    weights = open_weights(source)
    notes = [*source.notes, *weights.notes]
    adapter_only = source.is_lora and not merge_lora and fmt == "bf16"
    if source.is_lora and fmt == "fp8" and not merge_lora:
        notes.append("FP8 needs full weights: the LoRA adapter was merged into the base")
    job = _Job(source, weights, out, shard_bytes, chunk_bytes, progress, notes)
    if not adapter_only:
        job.tensors = weights.model()
        if fmt == "fp8":
            job.plan = plan_fp8(source.model_config, job.tensors, list(fp8_ignore))
    try:
        with atomic_output_dir(out, overwrite) as tmp:
            result = _export_into(tmp, job, verify)
    except OSError as err:  # a full disk, a file-size limit, a vanished folder
        raise ValueError(f"writing {out} failed ({err}); nothing was left at {out}") from err
    result.seconds = time.perf_counter() - start
    result.peak_rss_mb = peak_rss_mb()
    if result.verify is not None:
        result.verify.folder = out
    return result


@dataclass
class _Job:
    source: Source
    weights: Weights
    out: Path
    shard_bytes: int
    chunk_bytes: int
    progress: bool
    notes: list[str]
    tensors: dict[str, LazyTensor] | None = None
    """The full model to write (None: the LoRA adapter alone)."""
    plan: Fp8Plan | None = None


def _export_into(tmp: Path, job: _Job, verify: bool) -> ExportResult:
    source = job.source
    if job.tensors is None:
        written, fmt = _write_adapter(tmp, job), "lora-adapter"
    else:
        written, fmt = _write_model(tmp, job), ("fp8" if job.plan else "bf16")
    job.notes += write_tokenizer(tmp, source.tokenizer_dir)[1]
    write_generation_config(tmp)
    num_params = sum(math.prod(s.shape) for shard in written.shards for s in shard.specs)
    info = CardInfo(
        name=job.out.name,
        fmt=fmt,
        source=source.describe(),
        step=source.step,
        base_model=str(source.base_model_dir) if source.base_model_dir else None,
        manifest=source.manifest,
        run_yaml=source.run_yaml,
        num_params=num_params,
        total_bytes=written.file_bytes,
        num_shards=len(written.shards),
        fp8_ignore=job.plan.ignore if job.plan else [],
        kept_bf16=job.plan.kept_bf16 if job.plan else [],
        notes=job.notes,
    )
    (tmp / "README.md").write_text(model_card(info), encoding="utf-8")
    report = None
    if verify:
        reference = Reference(source.describe(), job.weights, source.tokenizer_dir, source.manifest)
        report = verify_folder(tmp, reference=reference, progress=job.progress, display_name=job.out.name)
        info.verify_rows = report.rows_for_card()
        (tmp / "README.md").write_text(model_card(info), encoding="utf-8")
    return ExportResult(
        out_dir=job.out,
        format=fmt,
        source=source.describe(),
        num_tensors=sum(len(s.specs) for s in written.shards),
        num_params=num_params,
        total_bytes=written.file_bytes,
        num_shards=len(written.shards),
        seconds=0.0,
        peak_rss_mb=0.0,
        quantized_layers=len(job.plan.quantize) if job.plan else 0,
        notes=job.notes,
        verify=report,
    )


def _write_model(tmp: Path, job: _Job) -> ShardedWriter:
    assert job.tensors is not None
    if job.plan is not None:
        outputs = fp8_outputs(job.tensors, job.plan, job.chunk_bytes)
    else:
        outputs = bf16_outputs(job.tensors, job.chunk_bytes)
    writer = write_outputs(tmp, outputs, job.shard_bytes, job.progress)
    write_config(tmp, job.source.model_config, job.weights.layout.architecture)
    if job.plan is not None:
        write_quantization_config(tmp, job.plan)
    return writer


def _write_adapter(tmp: Path, job: _Job) -> ShardedWriter:
    source, weights = job.source, job.weights
    assert weights.adapter is not None and source.adapter_config is not None
    tensors = adapter_tensors(weights.adapter)
    writer = write_outputs(
        tmp, bf16_outputs(tensors), 1 << 62, job.progress, single_file="adapter_model.safetensors"
    )
    base = (
        str(source.base_model_dir)
        if source.base_model_dir
        else source.adapter_config.get("base_model_name_or_path")
    )
    write_json(
        tmp / "adapter_config.json", export_adapter_config(source.adapter_config, base), sort_keys=False
    )
    return writer
