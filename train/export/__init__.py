"""Export trained checkpoints to Hugging Face folders (BF16, FP8, LoRA adapter) and verify them.

Python API (what ``hermes-sft export`` / ``hermes-sft verify`` call)::

    from train.export import export_checkpoint, verify_folder
    result = export_checkpoint("runs/r1", "out/r1-bf16", "bf16")          # -> ExportResult (verified)
    fp8 = export_checkpoint("out/r1-bf16", "out/r1-fp8", "fp8")            # FP8 from the BF16 folder
    report = verify_folder("out/r1-fp8", reference="runs/r1")              # -> VerifyReport
    print(report.table()); assert report.ok

Layout, imports one way (each layer imports only those before it):
``reading`` (checkpoint / folder sources → lazy tensors) → ``writing`` (formats, sharded files, folder
files) → ``verify`` (``report`` types at the bottom, folder checks, model checks) → ``export``
(the orchestrator) → ``cli``.
"""

from __future__ import annotations

from train.export.export import ExportResult, export_checkpoint
from train.export.verify import verify_folder
from train.export.verify.report import VerifyReport, parse_output

__all__ = ["ExportResult", "VerifyReport", "export_checkpoint", "parse_output", "verify_folder"]
