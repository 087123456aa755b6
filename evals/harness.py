"""The lm-eval bridge: any lm-eval task, run on a model object that is already loaded.

lm-eval's `HFLM` wraps the loaded model and tokenizer, so the project's own model classes
(non-uniform pruned, tiered) evaluate exactly like stock ones, and `lm_eval.simple_evaluate` runs
the tasks. The offline tasks in ``evals/tasks/`` (``compress_arithmetic``,
``compress_code_perplexity``, ``compress_prose_perplexity``, tag ``compress_local``) are added
through lm-eval's ``include_path``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from compress.errors import CompressError

LOCAL_TASKS = Path(__file__).parent / "tasks"


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise CompressError("lm-eval tasks need lm-eval: pip install 'moe-compress[eval]'") from None
    return lm_eval


@lru_cache(maxsize=1)
def task_manager():
    _lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS))


def known_task_names() -> list[str]:
    """Every task, group and tag lm-eval knows, ours included."""
    return list(task_manager().all_tasks)


def transformers_lm(model, tokenizer, *, batch_size: int, max_length: int | None = None):
    """lm-eval's model over a model and tokenizer already loaded by transformers."""
    _lm_eval()
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def is_generative(task: str) -> bool:
    """Whether lm-eval scores the task on generated text (``output_type: generate_until``)."""
    entry = task_manager().task_index.get(task)
    return bool(entry is not None and entry.cfg and entry.cfg.get("output_type") == "generate_until")


def chat_template_tasks(tasks: list[str], apply_chat_template: str, tokenizer) -> set[str]:
    """The tasks whose prompts go through the tokenizer's chat template: ``on`` all, ``off`` none,
    ``auto`` the generative ones when the tokenizer has a template (a chat model answers a question
    asked in its own format; log-likelihood tasks score the raw continuation)."""
    if apply_chat_template == "off" or (apply_chat_template == "auto" and not getattr(tokenizer, "chat_template", None)):
        return set()
    if apply_chat_template == "on":
        if not getattr(tokenizer, "chat_template", None):
            raise CompressError("--apply-chat-template on: the model's tokenizer has no chat template")
        return set(tasks)
    return {task for task in tasks if is_generative(task)}


def run_lm_eval(lm, tasks: list[str], *, limit: int | None, chat_tasks: set[str] = frozenset(),
                max_gen_toks: int | None = None) -> dict:
    """{task: {"metrics": {name: value}, "higher_is_better": {name: bool}, "samples": n}} from lm-eval's
    model `lm`; `chat_tasks` get the chat template, `max_gen_toks` bounds every generation.

    Metric names are lm-eval's ``metric,filter`` keys; standard errors are left out.
    """
    lm_eval = _lm_eval()
    report = {}
    for templated in (False, True):
        batch = [task for task in tasks if (task in chat_tasks) == templated]
        if not batch:
            continue
        output = lm_eval.simple_evaluate(
            model=lm, tasks=batch, limit=limit, task_manager=task_manager(), log_samples=False, bootstrap_iters=0,
            apply_chat_template=templated, gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        )
        for task, values in output["results"].items():
            metrics = {key: float(value) for key, value in values.items()
                       if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
            better = output.get("higher_is_better", {}).get(task, {})
            report[task] = {
                "metrics": metrics,
                "higher_is_better": {key: bool(better.get(key.split(",")[0], True)) for key in metrics},
                "samples": output.get("n-samples", {}).get(task, {}).get("effective"),
                "chat_template": templated,
            }
    return report
