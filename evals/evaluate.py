"""`compress eval`'s engine: parse task names, run them on one loaded model, cache the results.

Task names:

* ``perplexity:<domain>`` — the built-in corpus's held-out split (math, code, general);
* ``perplexity:<file>`` — a .txt / .jsonl / .parquet file (``text_field``);
* ``perplexity:<owner/name>`` — a Hub dataset (``split``, ``text_field``);
* anything else — an lm-eval task, group or tag (ours: ``compress_arithmetic``,
  ``compress_code_perplexity``, ``compress_prose_perplexity``, tag ``compress_local``).

Each task's result is cached as JSON under ``$MOE_COMPRESS_CACHE`` (default
``~/.cache/moe-compress``) keyed by the checkpoint (its path, config and every weight file's size
and modification time), the task and the settings, so `compare` and `gate` reuse earlier runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from compress import __version__
from compress.data.calibration import calibration_source, text_source_kind
from compress.data.corpus import DOMAINS, load_texts
from compress.errors import CompressError
from compress.jobs.options import option, positive_int
from compress.model_loading import DTYPE_HELP, DTYPES

PERPLEXITY_PREFIX = "perplexity:"
BACKENDS = ("transformers", "vllm")
PERPLEXITY_METRICS_LOWER_IS_BETTER = {"perplexity": False, "nll": False, "bits_per_byte": False, "tokens": True}


@dataclass(frozen=True)
class EvalSettings:
    """How results are measured (part of each cached result's key); also the commands' flags."""

    limit: int | None = option("documents / examples per task (default: all)", type=positive_int)
    max_tokens: int | None = option("tokens scored per perplexity task (default: all)", type=positive_int)
    batch_size: int = option("sequences per forward pass", 8, type=positive_int)
    seq_len: int | None = option("perplexity window (default: the model's positions, at most 2048)", type=positive_int)
    stride: int | None = option("perplexity window step, at most --seq-len (default: half the window)", type=positive_int)
    dtype: str = option(DTYPE_HELP, "auto", choices=DTYPES)
    text_field: str | None = option("record field(s) of perplexity files / Hub datasets (default: text)")
    split: str = option("Hub dataset split for perplexity", "test")
    backend: str = option("what runs the model: transformers, or vllm (vLLM's engine and lm-eval's vLLM model; run "
                          "from vLLM's own venv)", "transformers", choices=BACKENDS)
    apply_chat_template: str = option("lm-eval prompts through the tokenizer's chat template; auto: for generative "
                                      "tasks when the tokenizer has one", "auto", choices=("auto", "on", "off"))
    max_gen_toks: int | None = option("tokens each lm-eval generation may produce (default: the task's, often 256, "
                                      "which truncates reasoning models)", type=positive_int)


def parse_tasks(text: str) -> list[str]:
    """Task names from ``a,b,c``, each checked; unknown lm-eval names get close matches."""
    tasks = [name.strip() for name in text.split(",") if name.strip()]
    if not tasks:
        raise CompressError("--tasks is empty: name at least one task, e.g. perplexity:math or compress_arithmetic")
    lm_eval_tasks = [name for name in tasks if not name.startswith(PERPLEXITY_PREFIX)]
    for name in tasks:
        source = name[len(PERPLEXITY_PREFIX):]
        if name.startswith(PERPLEXITY_PREFIX) and not source:
            raise CompressError(f"{name!r} names no text: use perplexity:math, perplexity:FILE or perplexity:OWNER/NAME")
        if name.startswith(PERPLEXITY_PREFIX) and source not in DOMAINS:
            try:
                kind = text_source_kind(source, flag=name)
            except CompressError:
                raise CompressError(f"{name!r}: {source!r} is not a built-in domain ({', '.join(DOMAINS)}), an existing "
                                    f".txt/.jsonl/.parquet file or a Hub dataset id (OWNER/NAME)") from None
            if kind == "file":
                calibration_source("eval", source, None, "test", flag=name, what="text")  # exists, readable, not empty
    if lm_eval_tasks:
        from .harness import known_task_names

        known = known_task_names()
        known_set = set(known)
        for name in lm_eval_tasks:
            if name not in known_set:
                close = difflib.get_close_matches(name, known + [f"{PERPLEXITY_PREFIX}{d}" for d in DOMAINS], n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else "; `lm-eval ls tasks` lists lm-eval's tasks"
                raise CompressError(f"unknown task {name!r}{hint}")
    return tasks


def checkpoint_identity(path: Path) -> str:
    """Changes whenever the checkpoint's config or weight files change (no weights are read)."""
    path = Path(path).resolve()
    parts = [str(path), (path / "config.json").read_text() if (path / "config.json").is_file() else ""]
    for file in sorted(path.glob("*.safetensors")):
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("MOE_COMPRESS_CACHE") or Path.home() / ".cache" / "moe-compress") / "eval"


def _cache_file(identity: str, task: str, settings: EvalSettings) -> Path:
    key = json.dumps({"checkpoint": identity, "task": task, "settings": asdict(settings), "version": __version__}, sort_keys=True)
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _perplexity_texts(task: str, settings: EvalSettings) -> tuple[list[str], str]:
    source = task[len(PERPLEXITY_PREFIX):]
    if source in DOMAINS:
        texts, description = load_texts(source, "heldout"), f"built-in corpus: {source} (held-out split)"
    else:
        calibration = calibration_source("eval", source, settings.text_field, settings.split, flag=task, what="text")
        texts, description = calibration.texts, calibration.description
    texts = [text for _, text in zip(range(settings.limit or 10**12), texts)]
    if not texts:
        raise CompressError(f"{task}: the text source holds no documents")
    return texts, description


def window_length(config: dict, settings: EvalSettings) -> int:
    """The perplexity window: ``seq_len``, or the model's positions up to 2,048."""
    return settings.seq_len or min(config.get("max_position_embeddings") or 2048, 2048)


def check_settings(config: dict, settings: EvalSettings) -> None:
    """Refuse settings that do not fit the model, before it is loaded."""
    if settings.backend == "vllm":
        from .vllm_backend import require_vllm

        require_vllm()
    if settings.limit is not None and settings.limit < 1:
        raise CompressError(f"--limit must be at least 1, not {settings.limit}")
    if settings.seq_len is not None and settings.seq_len < 2:
        raise CompressError("--seq-len must be at least 2")
    positions = config.get("max_position_embeddings")
    if settings.seq_len is not None and positions and settings.seq_len > positions:
        raise CompressError(f"--seq-len {settings.seq_len} is beyond the model's {positions} positions: use {positions} or less")
    length = window_length(config, settings)
    if settings.stride is not None and settings.stride > length:
        raise CompressError(f"--stride {settings.stride} is longer than the perplexity window of {length} tokens "
                            f"(--seq-len): use a stride from 1 to {length}")


def evaluate(source, tasks: list[str], settings: EvalSettings, *, device: str = "auto",
             use_cache: bool = True, progress: bool = True, model=None, tokenizer=None) -> dict:
    """{"model": name, "checkpoint": identity, "settings": …, "tasks": {task: result}} for an opened
    `jobs.SourceModel`; the model is loaded only when some task is not cached (or passed in loaded)."""
    check_settings(source.raw_config, settings)
    identity = checkpoint_identity(source.path)
    results: dict[str, dict] = {}
    for task in tasks:
        cached = _cache_file(identity, task, settings)
        if use_cache and cached.is_file():
            results[task] = {**json.loads(cached.read_text()), "cached": True}
    missing = [task for task in tasks if task not in results]
    if missing:
        max_length = window_length(source.raw_config, settings)
        perplexity_tasks = [t for t in missing if t.startswith(PERPLEXITY_PREFIX)]
        lm_eval_tasks = [t for t in missing if not t.startswith(PERPLEXITY_PREFIX)]
        lm = None
        if settings.backend == "vllm":  # one engine for both kinds of task
            from .vllm_backend import VllmScorer, engine_length, lm_eval_model

            length = engine_length(source.raw_config, max_length if perplexity_tasks else None, settings.seq_len)
            if lm_eval_tasks:
                lm = lm_eval_model(source.path, settings.dtype, length, settings.batch_size)
            model = VllmScorer(lm.model) if lm is not None else VllmScorer.load(source.path, settings.dtype, length)
            tokenizer = source.tokenizer()
        elif model is None:
            model, tokenizer = source.load(dtype=settings.dtype, device=device), source.tokenizer()
        fresh = {}
        for task in perplexity_tasks:
            from .perplexity import text_perplexity

            texts, description = _perplexity_texts(task, settings)
            start = time.perf_counter()
            result = text_perplexity(model, tokenizer, texts, max_length, settings.stride or max(1, max_length // 2),
                                     settings.batch_size, progress=progress, max_tokens=settings.max_tokens)
            fresh[task] = {
                "metrics": result.to_dict(),
                "higher_is_better": dict(PERPLEXITY_METRICS_LOWER_IS_BETTER),
                "samples": len(texts),
                "data": description,
                "seconds": round(time.perf_counter() - start, 2),
            }
        if lm_eval_tasks:
            from .harness import chat_template_tasks, run_lm_eval, transformers_lm

            if lm is None:
                lm = transformers_lm(model, tokenizer, batch_size=settings.batch_size, max_length=settings.seq_len)
            fresh.update(run_lm_eval(lm, lm_eval_tasks, limit=settings.limit, max_gen_toks=settings.max_gen_toks,
                                     chat_tasks=chat_template_tasks(lm_eval_tasks, settings.apply_chat_template, tokenizer)))
        for task, result in fresh.items():
            path = _cache_file(identity, task, settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            results[task] = result
    return {"model": source.name, "checkpoint": identity, "settings": asdict(settings), "tool_version": __version__,
            "tasks": {task: results[task] for task in results}}
