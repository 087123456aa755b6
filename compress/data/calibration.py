"""Where calibration text comes from: the built-in corpus, a local file, or a Hub dataset.

`calibration_source` turns the CLI's ``--domain`` / ``--dataset`` / ``--text-field`` / ``--split``
into a lazy stream of texts plus a description that is recorded with the statistics. Texts are
produced on demand, so only as much of a large file or a streamed Hub dataset is read as the
requested windows need.

* no ``--dataset``: the built-in corpus of the domain (its calibration split);
* ``--dataset preset``: the domain's public Hub dataset (`presets.py`);
* ``--dataset FILE``: ``.txt`` (documents separated by blank lines), ``.jsonl`` / ``.json`` (one
  JSON object per line) or ``.parquet``;
* ``--dataset OWNER/NAME``: a Hub dataset, streamed through `datasets`.

``--text-field`` names the record field holding the text (default ``text``); several fields,
comma-separated, are joined with blank lines into one text per record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .corpus import DOMAINS, load_texts
from .presets import preset_for

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
DEFAULT_TEXT_FIELD = "text"
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CalibrationSource:
    description: str  # recorded in the statistics' metadata
    texts: Iterable[str]


def calibration_source(
    domain: str, dataset: str | None = None, text_field: str | None = None, split: str = "train",
    builtin_split: str = "calibration", flag: str = "--dataset", what: str = "calibration",
) -> CalibrationSource:
    """The texts for `domain` / `dataset`; `flag` and `what` name the option in error messages."""
    if dataset is None:
        if domain not in DOMAINS:
            raise DataError(
                f"there is no built-in corpus for domain {domain!r} (built in: {', '.join(DOMAINS)}): "
                "pass --dataset FILE_OR_HUB_ID, or --dataset preset for the domain's Hub dataset"
            )
        if text_field:
            raise DataError("--text-field applies to --dataset only; the built-in corpus is plain text")
        return CalibrationSource(f"built-in corpus: {domain} ({builtin_split} split)", load_texts(domain, builtin_split))
    if dataset == "preset":
        preset = preset_for(domain)
        fields = text_field.split(",") if text_field else list(preset.text_fields)
        return _hub_source(preset.repo_id, preset.config, preset.split, fields)
    fields = (text_field or DEFAULT_TEXT_FIELD).split(",")
    if text_source_kind(dataset, flag) == "file":
        return _file_source(Path(dataset).expanduser(), fields, flag, what)
    return _hub_source(dataset, None, split, fields)


def text_source_kind(dataset: str, flag: str = "--dataset") -> str:
    """``"file"`` or ``"hub"``: what a dataset argument names (refused when it is neither)."""
    path = Path(dataset).expanduser()
    if path.exists() or path.suffix in LOCAL_SUFFIXES or dataset.startswith((".", "/", "~")):
        return "file"
    if HUB_DATASET_ID.match(dataset):
        return "hub"
    raise DataError(f"{flag} {dataset!r} is neither an existing file ({', '.join(LOCAL_SUFFIXES)}) nor a Hub dataset id (OWNER/NAME)")


def _file_source(path: Path, fields: list[str], flag: str = "--dataset", what: str = "calibration") -> CalibrationSource:
    if path.is_dir():
        raise DataError(f"{flag} {path} is a directory: pass one {'/'.join(LOCAL_SUFFIXES)} file")
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"cannot read {path}: {what} files must be {', '.join(LOCAL_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty")
    if path.suffix == ".txt":
        return CalibrationSource(f"file: {path}", _text_documents(path))
    records = _parquet_records(path, fields) if path.suffix == ".parquet" else _jsonl_records(path)
    return CalibrationSource(f"file: {path} (field {','.join(fields)})", _record_texts(records, fields, str(path)))


def _text_documents(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    yield from (document.strip() for document in text.split("\n\n") if document.strip())


def _jsonl_records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {number} is not JSON ({exc.msg}): expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is not a JSON object: expected one object per line")
            yield record


def _parquet_records(path: Path, fields: list[str]) -> Iterator[dict]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'moe-compress[data]'") from None
    table = parquet.ParquetFile(path)
    missing = [name for name in fields if name not in table.schema_arrow.names]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r} (columns: {', '.join(table.schema_arrow.names)}): pass --text-field")
    for batch in table.iter_batches(columns=fields):
        yield from batch.to_pylist()


def _record_texts(records: Iterable[dict], fields: list[str], where: str) -> Iterator[str]:
    for record in records:
        missing = [name for name in fields if name not in record]
        if missing:
            raise DataError(f"{where} has no field {missing[0]!r} (fields: {', '.join(record)}): pass --text-field")
        text = "\n\n".join(str(record[name]) for name in fields if record[name] is not None).strip()
        if text:
            yield text


def _hub_source(repo_id: str, config: str | None, split: str, fields: list[str]) -> CalibrationSource:
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading the Hub dataset {repo_id} needs `datasets`: pip install 'moe-compress[data]'") from None
    try:
        records = datasets.load_dataset(repo_id, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types for "not found", "offline", "no such split"
        raise DataError(f"cannot load the Hub dataset {repo_id} (split {split}): {str(exc).splitlines()[0]}") from None
    description = f"hub: {repo_id}" + (f" ({config})" if config else "") + f", split {split}, field {','.join(fields)}"
    return CalibrationSource(description, _record_texts(records, fields, f"the Hub dataset {repo_id}"))
