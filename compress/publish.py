"""Publishing a derived checkpoint to the Hugging Face Hub: completeness check, model card, upload.

The card is a `huggingface_hub.ModelCard`: YAML metadata (``base_model`` when the source is a Hub
model, ``license`` inherited from the source's card, ``tags`` with ``moe`` and the method,
``pipeline_tag``, ``model-index`` from the evaluation `compress eval` / `compare` / `gate` stored in
``compress.json``) over the body the derived checkpoint already carries (what was done, the
expert-usage picture, evaluation table, how to load it), plus the exact command that produced it.
Uploads go through `HfApi.upload_folder`, which with hf_xet streams large folders in several
commits and resumes an interrupted upload when run again. The token comes from huggingface_hub's
standard sources (``HF_TOKEN``, ``hf auth login``) and is never printed or written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint.reader import INDEX_FILE, SINGLE_FILE, CheckpointReader
from .errors import CheckpointError, CompressError

REPORT_FILE = "report.html"  # `compress push --report`: the routing report, linked from the card
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
METHOD_TAGS = {"prune": "pruned", "merge": "merged", "convert tiered": "tiered-moe", "distill": "distilled"}
# The Hub's own values of base_model_relation; a pruned or converted model is none of them, so the
# Hub is left to infer it (tags say what was done). A distilled student is trained: a fine-tune.
BASE_MODEL_RELATION = {"distill": "finetune"}


def card_license(directory: Path) -> str | None:
    """The ``license`` of a model card's metadata, or None."""
    from huggingface_hub import ModelCard

    path = Path(directory) / "README.md"
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path, ignore_metadata_errors=True).data.license
    except Exception:  # a card without front matter, or unreadable metadata: no license to inherit
        return None


def missing_parts(directory: Path) -> list[str]:
    """What keeps `directory` from being a complete derived checkpoint (empty when complete)."""
    directory = Path(directory)
    missing = [name for name in ("config.json", "compress.json") if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in (SINGLE_FILE, INDEX_FILE)):
        missing.append(f"the weights ({SINGLE_FILE} or {INDEX_FILE})")
    else:
        try:
            CheckpointReader(directory).close()
        except CheckpointError as exc:
            missing.append(str(exc))
    if (directory / "config.json").is_file():
        auto_map = json.loads((directory / "config.json").read_text()).get("auto_map", {})
        for reference in auto_map.values():
            module = reference.split(".")[0] + ".py"
            if not (directory / module).is_file():
                missing.append(f"{module} (named in auto_map)")
    return missing


def files_to_upload(directory: Path) -> tuple[list[Path], list[Path]]:
    """(files to upload, files left out): every top-level file but hidden ones and the card
    (rebuilt); training checkpoints stay home. Safetensors files that are not the checkpoint's
    weights (statistics that earlier versions wrote under a ``.safetensors`` name) are left
    out: vLLM and SGLang load every ``*.safetensors`` file of a repository without an index."""
    directory = Path(directory)
    try:
        reader = CheckpointReader(directory)
        shards = set(reader.files)
        reader.close()
    except CheckpointError:  # an incomplete checkpoint pushed with --force: nothing to tell apart
        shards = None
    files, left_out = [], []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name == "README.md":
            continue
        weights_glob = path.suffix == ".safetensors" and shards is not None and path.name not in shards
        (left_out if weights_glob else files).append(path)
    return files, left_out


def _hub_id(name: str | None) -> str | None:
    return name if name and REPO_ID.match(name) and not Path(name).exists() else None


def _source_of(provenance: dict) -> dict:
    """The original model: a distilled student's provenance points through its student's."""
    if provenance.get("operation") == "distill":
        return {"model": provenance.get("teacher"),
                "license": ((provenance.get("student_provenance") or {}).get("source") or {}).get("license")}
    return provenance.get("source") or {}


def eval_results(provenance: dict, model_name: str):
    """The card's model-index: this model's results from full evaluations only (limited runs are
    shown in the card's text, marked as such, but are not published as benchmark results)."""
    from huggingface_hub import EvalResult

    from .evals.model_card import full_results

    results = []
    for task, metrics in full_results(provenance).items():
        for metric, value in metrics.items():
            name = metric.split(",")[0]
            if name in ("tokens", "sample_len"):
                continue
            results.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task,
                                      metric_type=name, metric_value=round(float(value), 6)))
    return results


@dataclass
class PushPlan:
    files: list[Path]
    card: object  # huggingface_hub.ModelCard
    left_out: list[Path]  # safetensors files that engines would take for weights
    report: str | None = None  # the routing report's HTML, uploaded as REPORT_FILE


def build_card(directory: Path, repo_id: str, report: bool = False):
    """The complete model card for `directory` published as `repo_id` (linking the routing report
    when one is uploaded with it)."""
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    provenance = json.loads((directory / "compress.json").read_text())
    operation = provenance.get("operation", "prune")
    source = _source_of(provenance)
    config = json.loads((directory / "config.json").read_text())
    base = config.get("model_type", "").split("_moe_compress")[0].split("_tiered")[0]
    tags = ["moe", "moe-compress", METHOD_TAGS.get(operation, operation), base]
    data = ModelCardData(
        base_model=_hub_id(source.get("model")), license=source.get("license"), library_name="transformers",
        pipeline_tag="text-generation", tags=[t for t in dict.fromkeys(tags) if t], model_name=repo_id,
        eval_results=eval_results(provenance, repo_id) or None,
    )
    if operation in BASE_MODEL_RELATION and data.base_model:
        data.base_model_relation = BASE_MODEL_RELATION[operation]
    body = (directory / "README.md").read_text() if (directory / "README.md").is_file() else f"# {repo_id}\n"
    body = re.sub(r"\A---\n.*?\n---\n", "", body, flags=re.S)  # the derived card's own metadata is replaced
    if report:
        body = body.rstrip("\n") + (f"\n\n## Routing report\n\n[{REPORT_FILE}]({REPORT_FILE}): the experts kept, dropped or merged "
                                    "in each layer against the routing statistics that chose them, and the evaluations recorded, "
                                    "as one self-contained page (download it and open it in a browser; it needs no network).\n")
    if provenance.get("command") and "## Reproduce" not in body:
        body = body.rstrip("\n") + f"\n\n## Reproduce\n\n```bash\n{provenance['command']}\n```\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def report_for(directory: Path, report: str | bool) -> str:
    """The routing report to upload: `report` is an HTML file written by `compress report`, or True
    for a report made now from `directory` (its statistics, plan and evaluations)."""
    from .routing_report.collect import collect
    from .routing_report.page import is_report_file, render_page

    if report is True:
        return render_page(collect([str(directory)], title=f"{Path(directory).name}: routing report"))
    if not is_report_file(report):
        raise CompressError(f"--report {report} is not a report written by `compress report`: write one with "
                            f"`compress report ... -o FILE`, or pass --report alone to make one from {directory}")
    return Path(report).read_text(encoding="utf-8")


def plan_push(directory: Path, repo_id: str, force: bool = False, report: str | bool | None = None) -> PushPlan:
    directory = Path(directory)
    if not REPO_ID.match(repo_id or ""):
        raise CompressError(f"--repo {repo_id!r} is not a Hub repository id: write OWNER/NAME, e.g. my-org/gpt-oss-20b-math-16")
    if not directory.is_dir():
        raise CompressError(f"{directory} is not a directory: pass the derived checkpoint's directory")
    missing = missing_parts(directory)
    if missing and not force:
        raise CompressError(f"{directory} is not a complete derived checkpoint: missing {'; '.join(missing)} "
                            "(pass --force to push it anyway)")
    if not (directory / "compress.json").is_file():
        raise CompressError(f"{directory} has no compress.json: the card cannot say what was done, so it cannot be pushed")
    files, left_out = files_to_upload(directory)
    if report:
        files = [path for path in files if path.name != REPORT_FILE]  # the report given replaces the folder's own
        report = report_for(directory, report)
    return PushPlan(files, build_card(directory, repo_id, report=bool(report)), left_out, report or None)


def push(directory: Path, repo_id: str, plan: PushPlan, *, private: bool, revision: str | None, commit_message: str | None) -> str:
    """Upload the planned files, then the card (the local directory is never modified)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if get_token() is None:
        raise CompressError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN, then push again")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(directory), revision=revision, repo_type="model",
                          allow_patterns=[p.name for p in plan.files],
                          commit_message=commit_message or "Upload with moe-compress")
        if plan.report is not None:
            api.upload_file(path_or_fileobj=plan.report.encode("utf-8"), path_in_repo=REPORT_FILE, repo_id=repo_id,
                            revision=revision, repo_type="model", commit_message="Routing report from moe-compress")
        plan.card.push_to_hub(repo_id, revision=revision, commit_message="Model card from moe-compress")
    except OfflineModeIsEnabled:
        raise CompressError("the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1): push from a machine online") from None
    except HfHubHTTPError as exc:
        raise CompressError(f"the Hub refused the upload to {repo_id} ({_first_line(exc)}): check the token's write access "
                            "and the repository name") from None
    except Exception as exc:
        if not _network_error(exc):
            raise
        raise CompressError(f"cannot reach the Hugging Face Hub to push {repo_id} ({type(exc).__name__}: {_first_line(exc)}); "
                            "check the network and run it again (an interrupted upload resumes)") from None
    return str(url)


def _network_error(exc: BaseException) -> bool:
    """Connection errors and timeouts, whichever HTTP client huggingface_hub uses underneath."""
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or module in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
