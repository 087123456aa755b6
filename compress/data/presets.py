"""Public Hugging Face Hub datasets that stand for each calibration domain, for real users.

They are used only when asked for and when the Hub is reachable; the built-in corpus
(`corpus.py`) covers math, code and general text offline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError


@dataclass(frozen=True)
class HubDataset:
    repo_id: str
    text_fields: tuple[str, ...]  # joined with blank lines into one calibration text per record
    split: str = "train"
    config: str | None = None


HUB_PRESETS = {
    "math": HubDataset("openai/gsm8k", ("question", "answer"), config="main"),
    "code": HubDataset("theblackcat102/evol-codealpaca-v1", ("instruction", "output")),
    "science": HubDataset("allenai/sciq", ("support", "question", "correct_answer")),
    "health": HubDataset("medalpaca/medical_meadow_wikidoc", ("input", "output")),
    "law": HubDataset("pile-of-law/pile-of-law", ("text",), config="r_legaladvice"),
    "safety": HubDataset("PKU-Alignment/BeaverTails", ("prompt", "response"), split="30k_train"),
    "instruction_following": HubDataset("tatsu-lab/alpaca", ("instruction", "input", "output")),
    "general": HubDataset("Salesforce/wikitext", ("text",), config="wikitext-103-raw-v1"),
}


def preset_for(domain: str) -> HubDataset:
    if domain not in HUB_PRESETS:
        raise DataError(f"no Hub preset for domain {domain!r}: choose one of {', '.join(HUB_PRESETS)} or pass --dataset")
    return HUB_PRESETS[domain]
