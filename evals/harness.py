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


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None, batch_size: int, max_length: int | None = None) -> dict:
    """{task: {"metrics": {name: value}, "higher_is_better": {name: bool}, "samples": n}}.

    Metric names are lm-eval's ``metric,filter`` keys; standard errors are left out.
    """
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, limit=limit, task_manager=task_manager(), log_samples=False, bootstrap_iters=0,
    )
    report = {}
    for task, values in output["results"].items():
        metrics = {key: float(value) for key, value in values.items()
                   if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        better = output.get("higher_is_better", {}).get(task, {})
        report[task] = {
            "metrics": metrics,
            "higher_is_better": {key: bool(better.get(key.split(",")[0], True)) for key in metrics},
            "samples": output.get("n-samples", {}).get(task, {}).get("effective"),
        }
    return report
