"""`--model` resolution: a local directory, ``demo``, or a Hugging Face Hub repository id.

Hub downloads fetch only what moe-compress reads (top-level safetensors weights and their index,
config, tokenizer, chat template, generation config, the model card), never pickle files, through
huggingface_hub's cache so a second run is offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ModelNotFoundError

DEMO_NAME = "demo"
HUB_ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template*",
    "README.md",
]
# Sub-folders hold other formats of the same weights (gpt-oss: original/, metal/), never what we read.
HUB_IGNORE_PATTERNS = ["*/*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and what the user called it."""

    path: Path
    name: str  # what to show and record as the source: "demo", a Hub id, or the directory
    hub_id: str | None = None


def _named(flag: str, value: str) -> str:
    return f"{flag} {value}" if flag else value


def demo_model_path() -> Path:
    return Path(str(resources.files("compress") / "demo_model"))


def resolve_model(spec: str, revision: str | None = None, flag: str = "--model") -> ResolvedModel:
    """Turn a `--model` value (or the option named by `flag`) into a local directory, downloading
    from the Hub when needed."""
    if spec == DEMO_NAME:
        path = demo_model_path()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"the demo model is missing from this installation ({path}): reinstall moe-compress "
                "or rebuild it with `compress train-demo --out DIR`"
            )
        return ResolvedModel(path, DEMO_NAME)
    local = Path(spec).expanduser()
    if local.is_dir():
        return ResolvedModel(local.resolve(), str(local))
    if local.exists():
        raise ModelNotFoundError(f"{_named(flag, spec)} is a file; pass the directory that holds config.json and the weights")
    if not _HUB_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"{_named(flag, spec)}: no such directory, and it is not a Hub id (OWNER/NAME); "
            f"pass a model directory, a Hub id, or `{DEMO_NAME}`"
        )
    return ResolvedModel(_download(spec, revision, flag), spec, hub_id=spec)


def _download(repo_id: str, revision: str | None, flag: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS, ignore_patterns=HUB_IGNORE_PATTERNS
        ))
    except GatedRepoError as exc:
        raise ModelNotFoundError(
            f"{repo_id} is gated on the Hub: accept its licence on the model page, then `hf auth login`"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"{_named(flag, repo_id)}: no such local directory, and no such Hub repository (or it is private: `hf auth login`)"
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"{_named(flag, repo_id)}: not a local directory, and the Hugging Face Hub could not be reached to download it "
            "(offline?); download it elsewhere and pass the directory"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(f"{_named(flag, repo_id)}: downloading from the Hub failed ({exc.__class__.__name__}: {exc})") from exc
