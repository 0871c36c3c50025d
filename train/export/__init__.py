"""Export trained checkpoints to Hugging Face folders (BF16, FP8, LoRA adapter) and verify them.

Python API (what ``hermes-sft export`` / ``hermes-sft verify`` call)::

    from train.export import export_checkpoint, verify_folder
    result = export_checkpoint("runs/r1", "out/r1-bf16", "bf16")          # -> ExportResult (verified)
    fp8 = export_checkpoint("out/r1-bf16", "out/r1-fp8", "fp8")            # FP8 from the BF16 folder
    report = verify_folder("out/r1-fp8", reference="runs/r1")              # -> VerifyReport
    print(report.table()); assert report.ok

Imports are lazy so that ``import train.export`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.export.export import ExportResult, export_checkpoint
    from train.export.parse import parse_output
    from train.export.verify import VerifyReport, verify_folder

__all__ = ["ExportResult", "VerifyReport", "export_checkpoint", "parse_output", "verify_folder"]

_WHERE = {
    "ExportResult": "train.export.export",
    "export_checkpoint": "train.export.export",
    "VerifyReport": "train.export.verify",
    "verify_folder": "train.export.verify",
    "parse_output": "train.export.parse",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
