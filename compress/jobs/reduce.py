"""The one driver of the reduction jobs: resolve the sizes → claim the output → check the options
against the source → plan (calibrating when the method needs it) → compensate → write →
provenance and card, for one size or a size frontier. Nothing is computed before every check has
passed; the claim (a lock and a check of the path) comes first so a bad --out fails in a second.

A method (``jobs.prune.PRUNE``, ``jobs.merge.MERGE``, ``jobs.tiered.TIERED_METHOD``) is a small object (`Method`): it checks its
options against the source and says which calibration its plan needs, loads a plan file, makes a
plan for an integer `keep`, turns a plan into the merge plan compensation fits, and writes its
checkpoint. Everything else is here, once: frontier sizes (``keep`` resolved to an integer once
per size, `frontier.sizes`), the refusals shared by every method, the claim and its scratch
space, and the loop over sizes. Methods are registered by name in `METHODS`, in the manner of
mergekit's merge methods.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..errors import CompressError
from ..families.derived import TIERED
from .frontier import FrontierResult, Size, sizes, write_index
from .options import CalibrationOptions, OutputOptions
from .reduction import checked_statistics, compensation, keep_count


class Method:
    """What a reduction method provides (see the module docstring); `name` is its operation."""

    name: str  # "prune", "merge": compress.json's operation and the frontier index's
    model_what: str  # the output, in messages: "pruned model"
    plan_what: str  # the plan file, in messages: "plan file"
    plan_format: str  # the "format" its plan files declare
    sized = True  # its options say how many experts to keep (--keep / --keep-ratio, frontiers); else one size, keep None
    compensable = True  # --compensate applies (its options have `compensate`)

    def check(self, source, options, keep: int | None, calibration: CalibrationOptions | None, stats, plan) -> CalibrationOptions | None:
        """Refuse option mistakes before any work; the calibration settled for planning (None when none is needed)."""
        raise NotImplementedError

    def load_plan(self, plan, source):
        raise NotImplementedError

    def make_plan(self, source, options, keep: int, *, stats, calibration, command, progress, spill=None):
        """(plan, statistics) for one size (`spill`: where refitted tensors may be written)."""
        raise NotImplementedError

    def compensation_plan(self, plan):
        """The `merging.MergePlan` that compensation fits for `plan`."""
        raise NotImplementedError

    def fits_router(self, options, plan) -> bool:
        """Whether the output's router rows are fitted on calibration text (a merge's ``--router fitted``)."""
        return False

    def planned_fits(self, plan) -> dict | None:
        """What the plan's own pass already fitted ({layer: `CompensationFit`}: a merge's router rows
        and compensation), or None."""
        return None

    def write(self, source, plan, staging: Path, options, *, stats, fits, command, progress, max_shard_size):
        """The checkpoint of `plan` in `staging`, with provenance and card; its description."""
        raise NotImplementedError

    def result(self, plan, stats, fits, out: Path, before, after, seconds: float):
        raise NotImplementedError


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def fit_calibration(source, options, calibration: CalibrationOptions | None, plan_only: bool,
                    fits_router: bool = False) -> CalibrationOptions | None:
    """The settled calibration ``--compensate`` (or a fitted router) fits on (None without either),
    refused before any work when it cannot run."""
    from .calibration import settle

    if not options.compensate and (not fits_router or plan_only):
        return None
    if options.compensate and plan_only:
        raise CompressError("--compensate is fitted while the checkpoint is written: drop --plan-only, or apply the plan "
                            "later with --plan PLAN --compensate")
    if options.compensate and source.derived == TIERED:
        raise CompressError("--compensate refits experts of plain MoE layers; a tiered model is pruned by whole teams without it")
    if calibration is None or calibration.domain is None:
        what = "--compensate fits" if options.compensate else "fitted router rows are fitted"
        raise CompressError(f"{what} on calibration text: pass --domain (math, code, general or your own with --dataset)")
    return settle(calibration, source)


def reduce(method: Method, source, options, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
           stats=None, plan=None, plan_only: bool = False, command: str | None = None, progress: bool = True):
    """Run `method` on `source` (see the module docstring); `plan_only` writes the plan to
    ``output.out``. Several sizes (``keep`` or ``keep_ratio`` a tuple) write a size frontier and
    return a `frontier.FrontierResult`; `stats` and `plan` are files or the objects themselves."""
    from ..checkpoint.output import claim_output
    from ..pruning.plan import plan_file_format

    several = sizes(options, source) if method.sized else None
    if several is not None and (plan is not None or plan_only):
        raise CompressError("a size frontier (several --keep or --keep-ratio values) makes one plan per size: drop --plan / --plan-only")
    each = several or [Size(options, None if plan is not None or not method.sized else keep_count(options, source))]
    plan = method.load_plan(plan, source) if plan is not None else None
    fitting = fit_calibration(source, options, calibration, plan_only, method.fits_router(options, plan)) if method.compensable else None
    kind, what = ("file", method.plan_what) if plan_only else ("directory", method.model_what)
    recognise = (lambda path: plan_file_format(path) == method.plan_format) if plan_only else None
    with claim_output(output.out, kind=kind, overwrite=output.overwrite, sources=(source.path,), recognise=recognise,
                      what=what) as claimed, (claimed.scratch() if fitting and options.compensate else contextlib.nullcontext()) as spill:
        stats = checked_statistics(stats, source) if stats is not None else None
        planning = [method.check(source, size.options, size.keep, calibration, stats, plan) for size in each][-1]
        with claimed.write() as staging:
            if several is None:
                return _one(method, source, each[0], output, staging, claimed.path, stats=stats, plan=plan, plan_only=plan_only,
                            planning=planning, fitting=fitting, spill=spill, command=command, progress=progress)
            results = []
            for size in several:
                (staging / size.name).mkdir()
                results.append(_one(method, source, size, output, staging / size.name, claimed.path / size.name, stats=stats,
                                    planning=planning, fitting=fitting, spill=spill, command=command, progress=progress))
                stats = results[-1].stats  # one profile serves every size
            write_index(staging, method.name, source, command, [result.out.name for result in results])
    return FrontierResult(claimed.path, results)


def _one(method: Method, source, size: Size, output: OutputOptions, staging: Path, out: Path, *, stats=None, plan=None,
         plan_only: bool = False, planning=None, fitting=None, spill: Path | None, command: str | None = None,
         progress: bool = True):
    """One size: the plan (unless given), its compensation, and the checkpoint (or plan file) in `staging`."""
    start = time.perf_counter()
    if plan is None:
        plan, stats = method.make_plan(source, size.options, size.keep, stats=stats, calibration=planning, command=command, spill=spill,
                                       progress=progress)
    if plan_only:
        plan.save(staging)
        return method.result(plan, stats, None, out, source.info, None, time.perf_counter() - start)
    fits = method.planned_fits(plan)
    if fitting and fits is None:  # not fitted in the plan's own pass (see `merging.requests.MergeRequest`): a pass of its own
        fits = compensation(source, method.compensation_plan(plan), fitting, spill, compensate=size.options.compensate,
                            progress=progress)
    after = method.write(source, plan, staging, size.options, stats=stats, fits=fits, command=command, progress=progress,
                         max_shard_size=output.max_shard_size)
    return method.result(plan, stats, fits, out, source.info, after, time.perf_counter() - start)
