"""`compress distill`: train a derived student (tiered or pruned) toward its teacher."""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..checkpoint.files import read_config
from ..errors import CompressError, OutputExistsError
from ..resolve import resolve_model
from .calibration import add_calibration_arguments, calibration_windows, check_calibration_arguments

EPILOG = """examples:
  compress distill --teacher demo --student out/demo-tiered --domain math --steps 200 --out out/demo-tiered-distilled
  compress distill --teacher demo --student out/demo-math-keep4 --domain math --steps 200 --lr 3e-4 --out out/keep4-distilled
  compress distill ... --save-every 50 --out DIR          (interrupted? run it again with --resume)
  accelerate launch -m compress distill --teacher openai/gpt-oss-20b --student ./tiered --domain math --steps 2000 --out ./tiered-d

Loss = T^2 * KL(teacher || student) at temperature T (default 2) + 0.1 * MSE of the hidden states at
aligned layers (--hidden-weight, --hidden-layers). Training text: the built-in corpus's train split
of --domain, or --dataset. OUT gets the student, distill_log.jsonl, distill_loss.png and compress.json.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("distill", help="distil a derived (tiered or pruned) student from its teacher",
                                   description="Knowledge distillation of a student checkpoint from its teacher, on accelerate.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the original model (directory, Hub id or `demo`)")
    parser.add_argument("--student", required=True, help="the derived checkpoint to train (directory)")
    parser.add_argument("--domain", required=True, help="training text domain (math, code, general built in; others with --dataset)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T (default: 2)")
    parser.add_argument("--hidden-weight", type=float, default=0.1, help="weight of the hidden-state MSE (default: 0.1)")
    parser.add_argument("--hidden-layers", default="all", help="aligned layers for the MSE: all, none or e.g. 2,5 (default: all)")
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps, for --resume (default: end only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order and initialisation (default: 0)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_calibration_arguments(parser, samples_help="training windows")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from ..distill import DistillSettings, distill
    from ..model_loading import load_model, load_tokenizer

    start = time.perf_counter()
    teacher_ref, student_ref = resolve_model(args.teacher), resolve_model(args.student)
    out = Path(args.out).resolve()
    if out in (Path(teacher_ref.path).resolve(), Path(student_ref.path).resolve()):
        raise CompressError("--out must differ from the teacher and the student")
    if out.exists() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise OutputExistsError(f"{out} exists: pass --resume to continue it, --overwrite to start over, or choose another --out")
    for name in ("steps", "grad_accum"):
        if getattr(args, name) < 1:
            raise CompressError(f"--{name.replace('_', '-')} must be at least 1")
    check_calibration_arguments(args, read_config(teacher_ref.path))
    tokenizer = load_tokenizer(teacher_ref.path)
    windows, data = calibration_windows(args, tokenizer, builtin_split="train")
    if len(windows) < args.batch_size:
        raise CompressError(f"only {len(windows)} training windows for --batch-size {args.batch_size}: lower one or add text")
    dtype = torch.float32 if args.dtype == "auto" else args.dtype
    teacher = load_model(teacher_ref.path, dtype="float32" if args.dtype == "auto" else args.dtype, device="cpu")
    try:
        student = AutoModelForCausalLM.from_pretrained(student_ref.path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise CompressError(f"cannot load the student {student_ref.path} ({str(exc).splitlines()[0]})") from None
    if teacher.config.vocab_size != student.config.vocab_size:
        raise CompressError("the teacher and the student have different vocabularies: distil a model derived from this teacher")
    settings = DistillSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                               temperature=args.temperature, hidden_weight=args.hidden_weight, hidden_layers=args.hidden_layers,
                               save_every=args.save_every, seed=args.seed)
    final = distill(teacher, student, tokenizer, windows, out, settings, resume=args.resume, progress=not args.quiet,
                    student_files=Path(student_ref.path))
    student_provenance = Path(student_ref.path) / "compress.json"
    (out / "compress.json").write_text(json.dumps({
        "tool": "moe-compress", "operation": "distill",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher_ref.name, "student": student_ref.name, "data": data, "windows": len(windows),
        "command": getattr(args, "command_line", None),
        "settings": asdict(settings), "final": final,
        "student_provenance": json.loads(student_provenance.read_text()) if student_provenance.is_file() else None,
    }, indent=2) + "\n")
    print(f"distilled {student_ref.name} from {teacher_ref.name}: {args.steps} steps, final loss {final['loss']:.4f} "
          f"(KL {final['kl']:.4f}, hidden MSE {final['hidden_mse']:.4f}); {time.perf_counter() - start:.1f} s → {out}")
    return 0
