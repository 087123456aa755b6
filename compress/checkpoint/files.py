"""The non-weight files of a checkpoint: config, tokenizer, chat template, generation config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import CheckpointError

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "compress.json"  # what moe-compress did: in every checkpoint it writes, and only there
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30  # what transformers' save_pretrained writes by default
# Copied unchanged into every derived checkpoint.
SUPPORT_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}: it is not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not an object: it is not a Hugging Face config")
    return config


def write_config(directory: str | Path, config: dict) -> None:
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_support_files(source: str | Path, target: str | Path) -> list[str]:
    """Copy the tokenizer, chat template and generation config that exist in `source`."""
    copied = []
    for name in SUPPORT_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied
