"""Knowledge distillation of a derived student (tiered or pruned) from its teacher, on accelerate.

Loss per batch = T² · KL(teacher ‖ student) of the next-token distributions at temperature T
(default 2), averaged over tokens, + ``hidden_weight`` (default 0.1) × the mean squared error
between teacher and student hidden states at the aligned layers (default: every decoder layer's
output; students keep the teacher's layer count). All student parameters train — mixing weights
and team routers included.

Built on `accelerate`: ``accelerate launch -m compress distill ...`` runs it data-parallel (DDP) or
sharded (FSDP) unchanged; each process takes its own rows of every global batch. Batches come from
a fixed, seeded order of the token windows, and checkpoints (``OUT/checkpoints/step-N``, through
``accelerator.save_state``) hold model, optimizer and RNG state plus the step, so ``resume``
continues exactly where the run stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import CompressError
from .jobs.options import DistillSettings

LOG_FILE = "distill_log.jsonl"
CURVE_FILE = "distill_loss.png"
CHECKPOINTS = "checkpoints"


def distillation_loss(student_out, teacher_out, settings: DistillSettings) -> tuple[torch.Tensor, dict]:
    t = settings.temperature
    vocab = student_out.logits.shape[-1]
    student_logprobs = F.log_softmax(student_out.logits.float().reshape(-1, vocab) / t, dim=-1)
    teacher_logprobs = F.log_softmax(teacher_out.logits.float().reshape(-1, vocab) / t, dim=-1)
    kl = F.kl_div(student_logprobs, teacher_logprobs, log_target=True, reduction="batchmean") * t * t
    hidden = torch.zeros((), device=kl.device)
    layers = aligned_layers(settings.hidden_layers, len(student_out.hidden_states) - 1)
    if layers and settings.hidden_weight:
        hidden = torch.stack([F.mse_loss(student_out.hidden_states[i + 1].float(), teacher_out.hidden_states[i + 1].float())
                              for i in layers]).mean()
    loss = kl + settings.hidden_weight * hidden
    return loss, {"kl": float(kl.detach()), "hidden_mse": float(hidden.detach())}


def aligned_layers(spec: str, num_layers: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all":
        return list(range(num_layers))
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise CompressError(f"--hidden-layers {spec!r}: use all, none or comma-separated layer indices") from None
    if any(not 0 <= layer < num_layers for layer in layers):
        raise CompressError(f"--hidden-layers {spec!r}: layers run from 0 to {num_layers - 1}")
    return layers


def _batch(windows: torch.Tensor, micro_step: int, rows: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """Rows of global micro-batch `micro_step` for process `rank`: a seeded order, reshuffled every epoch."""
    global_rows = rows * world
    per_epoch = max(1, len(windows) // global_rows)
    epoch, position = divmod(micro_step, per_epoch)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    start = position * global_rows + rank * rows
    return windows[order[start : start + rows]]


def latest_checkpoint(out: Path) -> Path | None:
    steps = sorted((int(p.name.split("-")[1]), p) for p in (out / CHECKPOINTS).glob("step-*") if (p / "step.json").is_file())
    return steps[-1][1] if steps else None


def distill(teacher, student, tokenizer, windows: torch.Tensor, out: Path, settings: DistillSettings, *,
            resume: bool = False, progress: bool = True, student_files: Path | None = None) -> dict:
    """Train `student` toward `teacher` on token `windows`; the final student is saved in `out`."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    accelerator = Accelerator(gradient_accumulation_steps=settings.grad_accum)
    set_seed(settings.seed)
    teacher.eval().requires_grad_(False).to(accelerator.device)
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr)
    student, optimizer = accelerator.prepare(student, optimizer)

    start_step, log_path = 0, out / LOG_FILE
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise CompressError(f"--resume: {out / CHECKPOINTS} holds no checkpoint; start without --resume")
        accelerator.load_state(str(checkpoint))
        start_step = json.loads((checkpoint / "step.json").read_text())["step"]
        if accelerator.is_main_process:  # the log continues from the checkpoint: later lines belong to the abandoned run
            lines = log_path.read_text().splitlines() if log_path.is_file() else []
            log_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= start_step))
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    rows = settings.batch_size
    bar = tqdm(total=settings.steps, initial=start_step, desc="distilling", unit="step",
               disable=not progress or not accelerator.is_main_process)
    record = {}
    for step in range(start_step, settings.steps):
        parts = []
        for micro in range(settings.grad_accum):
            batch = _batch(windows, step * settings.grad_accum + micro, rows, accelerator.process_index,
                           accelerator.num_processes, settings.seed).to(accelerator.device)
            with accelerator.accumulate(student):
                with torch.no_grad():
                    teacher_out = teacher(input_ids=batch, output_hidden_states=True)
                student_out = student(input_ids=batch, output_hidden_states=True)
                loss, parts_of_loss = distillation_loss(student_out, teacher_out, settings)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            parts.append({"loss": float(loss.detach()), **parts_of_loss})
        record = {"step": step + 1, **{key: sum(p[key] for p in parts) / len(parts) for key in parts[0]}}
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if settings.save_every and (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            checkpoint = out / CHECKPOINTS / f"step-{step + 1}"
            accelerator.save_state(str(checkpoint))
            if accelerator.is_main_process:
                (checkpoint / "step.json").write_text(json.dumps({"step": step + 1}))
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_student(accelerator.unwrap_model(student), tokenizer, out, student_files)
        plot_loss_curve(log_path, out / CURVE_FILE)
    return record


def _save_student(student, tokenizer, out: Path, student_files: Path | None) -> None:
    """The trained student in `out`, written beside and then moved over the previous files."""
    staging = out / ".final.partial"
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if student_files is not None:  # the student's own modeling code (auto_map) and provenance travel with it
        for path in Path(student_files).glob("modeling_*.py"):
            shutil.copyfile(path, staging / path.name)
    for path in staging.iterdir():
        path.replace(out / path.name)
    staging.rmdir()


def distill_card(out: Path, provenance: dict) -> str:
    """The distilled checkpoint's model card: what was trained toward what, on which text, how far."""
    settings, final = provenance["settings"], provenance["final"]
    student_source = ((provenance.get("student_provenance") or {}).get("source") or {}).get("model")
    made_by = (provenance.get("student_provenance") or {}).get("operation")
    lineage = f" (itself `compress {made_by}` of `{student_source}`)" if made_by and student_source else ""
    load = ("import compress\ncompress.register()  # the project's model classes; or pass trust_remote_code=True instead\n"
            if any(out.glob("modeling_*.py")) else "")
    return f"""---
base_model: {provenance['teacher']}
library_name: transformers
tags: [moe, distilled, moe-compress]
---
# {provenance['student']}, distilled from {provenance['teacher']}

Trained by `compress distill` toward `{provenance['teacher']}`: the student `{provenance['student']}`{lineage}
learned the teacher's next-token distribution (T² · KL at temperature {settings['temperature']}) plus
{settings['hidden_weight']} × the mean squared error of the hidden states at layers `{settings['hidden_layers']}`.

| | |
|---|---|
| training text | {provenance['data']} ({provenance['windows']} windows) |
| steps | {settings['steps']} × {settings['batch_size']} windows (gradient accumulation {settings['grad_accum']}) |
| learning rate | {settings['lr']} (AdamW), seed {settings['seed']} |
| final loss | {final['loss']:.4f} (KL {final['kl']:.4f}, hidden MSE {final['hidden_mse']:.4f}) |

![distillation loss]({CURVE_FILE})

`{LOG_FILE}` holds the loss of every step; `compress.json` the settings and the student's own provenance.

## How to load

```python
{load}from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```

Quality is not claimed here: measure it with `compress eval` / `compress compare --base {provenance['teacher']}`.
"""


def plot_loss_curve(log_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    steps = [r["step"] for r in records]
    for key in ("loss", "kl", "hidden_mse"):
        ax.plot(steps, [r[key] for r in records], label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title("distillation loss")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
