"""`compress distill`: train a derived student (tiered or pruned) toward its teacher."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import CompressError, OutputExistsError
from .calibration import add_calibration_arguments, calibration_windows, check_calibration_arguments, check_calibration_source
from .options import MODEL_HELP, non_negative_float, non_negative_int, positive_float, positive_int

EPILOG = """examples:
  compress distill --teacher demo --student out/demo-tiered --domain math --steps 200 --out out/demo-tiered-distilled
  compress distill --teacher demo --student out/demo-math-keep4 --domain math --steps 200 --lr 3e-4 --out out/keep4-distilled
  compress distill ... --save-every 50 --out DIR          (interrupted? run it again with --resume)
  accelerate launch -m compress distill --teacher openai/gpt-oss-20b --student ./tiered --domain math --steps 2000 --out ./tiered-d

Loss = T^2 * KL(teacher || student) at temperature T (default 2) + 0.1 * MSE of the hidden states at
aligned layers (--hidden-weight, --hidden-layers). Training text: the built-in corpus's train split
of --domain, or --dataset. OUT gets the student, distill_log.jsonl, distill_loss.png, compress.json
and a model card. An interrupted run keeps OUT only when it holds a checkpoint to resume from.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distil a derived (tiered or pruned) student from its teacher",
                                   description="Knowledge distillation of a student checkpoint from its teacher, on accelerate.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help=f"the original model: {MODEL_HELP}")
    parser.add_argument("--student", required=True, help="the derived checkpoint to train (directory)")
    parser.add_argument("--domain", required=True, help="training text domain (math, code, general built in; others with --dataset)")
    parser.add_argument("--steps", type=positive_int, required=True, help="optimizer steps")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step (default: 1)")
    parser.add_argument("--temperature", type=positive_float, default=2.0, help="distillation temperature T (default: 2)")
    parser.add_argument("--hidden-weight", type=non_negative_float, default=0.1, help="weight of the hidden-state MSE (default: 0.1)")
    parser.add_argument("--hidden-layers", default="all", help="aligned layers for the MSE: all, none or e.g. 2,5 (default: all)")
    parser.add_argument("--save-every", type=non_negative_int, default=0, help="checkpoint every N steps, for --resume (default: end only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order and initialisation (default: 0)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="start over in --out if it is an earlier moe-compress output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_calibration_arguments(parser, samples_help="training windows")
    parser.set_defaults(run=run)


# What must agree for the student to learn the teacher's distribution and hidden states.
_MATCHING_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers")


def check_pair(teacher_config, student_config, hidden_layers: str, hidden_weight: float) -> None:
    """Refuse a student that cannot be distilled from this teacher, before anything is written."""
    from ..distill import aligned_layers

    fields = _MATCHING_FIELDS if hidden_weight and hidden_layers != "none" else _MATCHING_FIELDS[:1]
    for name in fields:
        teacher, student = getattr(teacher_config, name, None), getattr(student_config, name, None)
        if teacher != student:
            raise CompressError(
                f"the student's {name} is {student} but the teacher's is {teacher}: distil a model derived from this teacher"
                + ("" if name == "vocab_size" else " (or pass --hidden-layers none to train on logits only)"))
    aligned_layers(hidden_layers, int(student_config.num_hidden_layers))


def has_checkpoint(out: Path) -> bool:
    from ..distill import latest_checkpoint

    return latest_checkpoint(out) is not None


def run(args) -> int:
    from ..checkpoint.files import read_config
    from ..checkpoint.output import claim_output
    from ..distill import DistillSettings, distill, write_card
    from ..model_info import model_config
    from ..model_loading import check_checkpoint, load_model, load_tokenizer
    from ..resolve import resolve_model

    start = time.perf_counter()
    teacher_ref = resolve_model(args.teacher, flag="--teacher")
    student_ref = resolve_model(args.student, flag="--student")
    for reference in (teacher_ref, student_ref):
        check_checkpoint(reference.path)
    check_pair(model_config(teacher_ref.path), model_config(student_ref.path), args.hidden_layers, args.hidden_weight)
    check_calibration_arguments(args, read_config(teacher_ref.path))
    check_calibration_source(args, builtin_split="train")
    if args.resume and args.overwrite:
        raise CompressError("--resume continues --out and --overwrite starts it over: pass one of them")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise OutputExistsError(f"{out} exists: pass --resume to continue it, --overwrite to start over, or choose another --out")
    with claim_output(args.out, kind="directory", overwrite=args.overwrite, reuse=args.resume,
                      sources=(teacher_ref.path, student_ref.path), what="distilled model") as claimed:
        if args.resume and not has_checkpoint(claimed.path):
            raise CompressError(f"--resume: {claimed.path} holds no checkpoint to continue from; run without --resume "
                                "(and with --save-every N to make checkpoints)")
        tokenizer = load_tokenizer(teacher_ref.path)
        windows, data = calibration_windows(args, tokenizer, builtin_split="train")
        if len(windows) < args.batch_size:
            raise CompressError(f"only {len(windows)} training windows for --batch-size {args.batch_size}: lower one or add text")
        settings = DistillSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                   temperature=args.temperature, hidden_weight=args.hidden_weight,
                                   hidden_layers=args.hidden_layers, save_every=args.save_every, seed=args.seed)
        # Training needs fp32 master weights; `auto` is the checkpoint's dtype only for the teacher on a GPU.
        teacher = load_model(teacher_ref.path, dtype=args.dtype, device="cpu")
        student = load_model(student_ref.path, dtype="float32" if args.dtype == "auto" else args.dtype, device="cpu").train()
        with claimed.in_place(keep_partial=has_checkpoint) as out:
            final = distill(teacher, student, tokenizer, windows, out, settings, resume=args.resume, progress=not args.quiet,
                            student_files=Path(student_ref.path))
            student_provenance = Path(student_ref.path) / "compress.json"
            provenance = {
                "tool": "moe-compress", "operation": "distill",
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "teacher": teacher_ref.name, "student": student_ref.name, "data": data, "windows": len(windows),
                "command": getattr(args, "command_line", None),
                "settings": asdict(settings), "final": final,
                "student_provenance": json.loads(student_provenance.read_text()) if student_provenance.is_file() else None,
            }
            (out / "compress.json").write_text(json.dumps(provenance, indent=2) + "\n")
            write_card(out, provenance)
    print(f"distilled {student_ref.name} from {teacher_ref.name}: {args.steps} steps, final loss {final['loss']:.4f} "
          f"(KL {final['kl']:.4f}, hidden MSE {final['hidden_mse']:.4f}); {time.perf_counter() - start:.1f} s → {claimed.path}")
    return 0
