"""The distillation job: train a derived student (tiered or pruned) toward its teacher.

Both models are opened and checked, the pair checked for compatibility and the output claimed
before anything is trained. ``out`` is a working directory: checkpoints there let ``resume``
continue an interrupted run, so after a failure it is kept only when it holds one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError, OutputExistsError
from .calibration import calibration_windows, settle
from .options import CalibrationOptions, DistillSettings

# What must agree for the student to learn the teacher's distribution and hidden states.
_MATCHING_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers")


@dataclass(frozen=True)
class DistillResult:
    teacher: str
    student: str
    out: Path
    steps: int
    final: dict
    seconds: float

    def summary(self) -> str:
        f = self.final
        return (f"distilled {self.student} from {self.teacher}: {self.steps} steps, final loss {f['loss']:.4f} "
                f"(KL {f['kl']:.4f}, hidden MSE {f['hidden_mse']:.4f}); {self.seconds:.1f} s → {self.out}")


def check_pair(teacher, student, settings: DistillSettings) -> None:
    """Refuse a student that cannot be distilled from this teacher, before anything is written."""
    from ..distill import aligned_layers

    hidden = settings.hidden_weight and settings.hidden_layers != "none"
    for name in _MATCHING_FIELDS if hidden else _MATCHING_FIELDS[:1]:
        theirs, ours = getattr(teacher.config, name, None), getattr(student.config, name, None)
        if theirs != ours:
            raise CompressError(
                f"the student's {name} is {ours} but the teacher's is {theirs}: distil a model derived from this teacher"
                + ("" if name == "vocab_size" else " (or pass --hidden-layers none to train on logits only)"))
    aligned_layers(settings.hidden_layers, int(student.config.num_hidden_layers))


def has_checkpoint(out: Path) -> bool:
    from ..distill import latest_checkpoint

    return latest_checkpoint(out) is not None


def distill(teacher, student, settings: DistillSettings, calibration: CalibrationOptions, out: str, *, resume: bool = False,
            overwrite: bool = False, command: str | None = None, progress: bool = True) -> DistillResult:
    """Distil `student` from `teacher` (both `SourceModel`s) on calibration text (its train split by default)."""
    from ..checkpoint.output import claim_output
    from ..distill import distill as train
    from ..distill import distill_card
    from .provenance import source_record, write_provenance

    start = time.perf_counter()
    check_pair(teacher, student, settings)
    calibration = settle(calibration, teacher, builtin_split="train")
    if resume and overwrite:
        raise CompressError("--resume continues --out and --overwrite starts it over: pass one of them")
    target = Path(out)
    if target.is_dir() and any(target.iterdir()) and not (resume or overwrite):
        raise OutputExistsError(f"{target} exists: pass --resume to continue it, --overwrite to start over, or choose another --out")
    with claim_output(out, kind="directory", overwrite=overwrite, reuse=resume, sources=(teacher.path, student.path),
                      what="distilled model") as claimed:
        if resume and not has_checkpoint(claimed.path):
            raise CompressError(f"--resume: {claimed.path} holds no checkpoint to continue from; run without --resume "
                                "(and with --save-every N to make checkpoints)")
        tokenizer = teacher.tokenizer()
        windows, data = calibration_windows(calibration, tokenizer, builtin_split="train")
        if len(windows) < calibration.batch_size:
            raise CompressError(f"only {len(windows)} training windows for --batch-size {calibration.batch_size}: lower one or add text")
        settings = dataclasses.replace(settings, batch_size=calibration.batch_size)
        # Training keeps fp32 master weights; `auto` is the checkpoint's dtype only for the teacher on a GPU.
        teacher_model = teacher.load(dtype=calibration.dtype, device="cpu")
        student_model = student.load(dtype="float32" if calibration.dtype == "auto" else calibration.dtype, device="cpu").train()
        with claimed.in_place(keep_partial=has_checkpoint) as directory:
            final = train(teacher_model, student_model, tokenizer, windows, directory, settings, resume=resume,
                          progress=progress, student_files=Path(student.path))
            student_provenance = Path(student.path) / "compress.json"
            details = {"teacher": teacher.name, "student": student.name, "data": data, "windows": len(windows),
                       "settings": dataclasses.asdict(settings), "final": final,
                       "student_provenance": json.loads(student_provenance.read_text()) if student_provenance.is_file() else None}
            write_provenance(directory, operation="distill", source=source_record(teacher), command=command,
                             card=distill_card(directory, details), **details)
    return DistillResult(teacher.name, student.name, claimed.path, settings.steps, final, time.perf_counter() - start)
