"""The built-in offline corpus: text by domain, with train / calibration / held-out splits.

Nothing here downloads anything, so profiling, pruning, evaluation and the tests run on a machine
without the Hub:

* ``math``    arithmetic and word problems with worked answers, generated from a seeded RNG;
* ``code``    the running Python installation's standard-library sources (top-level ``*.py``);
* ``general`` English prose from the same installation (``pydoc_data.topics``, the reference
  manual's topic texts), cut into paragraphs.

Splits are disjoint: generated problems use a different seed per split, stdlib files and prose
chunks are assigned to a split by a hash of their name (a document always lands in the same
split), and a later split drops any text an earlier one already has. The code and prose depend on
the Python version that runs them; `corpus_fingerprint` names it so statistics files can record
where their text came from.
"""

from __future__ import annotations

import hashlib
import random
import sys
import sysconfig
from functools import cache
from pathlib import Path

from ..errors import DataError

DOMAINS = ("math", "code", "general")
SPLITS = ("train", "calibration", "heldout")

# Share of documents per split for the file- and paragraph-based domains (by name hash).
_SPLIT_SHARES = {"train": 0.8, "calibration": 0.1, "heldout": 0.1}
# Generated math problems per split.
_MATH_PROBLEMS = {"train": 40_000, "calibration": 3_000, "heldout": 3_000}  # before deduplication
_PROSE_CHUNK_CHARS = 1_500


def load_texts(domain: str, split: str) -> list[str]:
    """The documents of one domain and split, in a fixed order."""
    if domain not in DOMAINS:
        raise DataError(f"unknown built-in domain {domain!r}: choose one of {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return list(_deduplicated(domain, split))


@cache
def _deduplicated(domain: str, split: str) -> tuple[str, ...]:
    """A split without the documents that an earlier split (train, then calibration) already has.

    Generated problems can repeat across seeds and the reference manual repeats some passages
    under several topics; held-out figures must never be measured on training text. (Small problem
    kinds, such as the percentages, are rarer in the later splits as a result.)
    """
    earlier = SPLITS[: SPLITS.index(split)]
    seen = {text for other in earlier for text in _deduplicated(domain, other)}
    return tuple(text for text in _LOADERS[domain](split) if text not in seen)


def corpus_fingerprint() -> str:
    """What the built-in corpus depends on: the Python version whose stdlib and docs it reads."""
    return f"builtin-corpus/python-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def _split_of(name: str) -> str:
    """A stable split assignment from a document's name (80/10/10)."""
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, share in _SPLIT_SHARES.items():
        edge += share
        if bucket < edge:
            return split
    return SPLITS[-1]


@cache
def _code(split: str) -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise DataError(f"no standard-library sources found in {stdlib}: the code domain needs them")
    texts = []
    for path in files:
        if _split_of(f"code/{path.name}") != split:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue  # an unreadable stdlib file is not worth failing the corpus for
    return tuple(texts)


@cache
def _general(split: str) -> tuple[str, ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip the docs
        raise DataError("pydoc_data.topics is missing from this Python: the general domain needs it") from exc
    texts = []
    for topic in sorted(topics):
        for index, chunk in enumerate(_paragraph_chunks(topics[topic], _PROSE_CHUNK_CHARS)):
            if _split_of(f"general/{topic}/{index}") == split:
                texts.append(chunk)
    return tuple(texts)


def _paragraph_chunks(text: str, max_chars: int) -> list[str]:
    """Consecutive paragraphs joined up to about `max_chars` characters."""
    chunks, current = [], ""
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if current and len(current) + len(paragraph) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks


@cache
def _math(split: str) -> tuple[str, ...]:
    rng = random.Random(f"moe-compress/math/{split}")
    return tuple(_math_problem(rng) for _ in range(_MATH_PROBLEMS[split]))


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena")
_ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cookies", "cards", "shells", "stamps")


def _math_problem(rng: random.Random) -> str:
    kind = rng.choice(("add", "sub", "mul", "div", "chain", "word_buy", "word_share", "percent"))
    if kind == "add":
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        return f"Q: What is {a} + {b}?\nA: {a} + {b} = {a + b}. The answer is {a + b}."
    if kind == "sub":
        a, b = sorted((rng.randint(2, 999), rng.randint(2, 999)), reverse=True)
        return f"Q: What is {a} - {b}?\nA: {a} - {b} = {a - b}. The answer is {a - b}."
    if kind == "mul":
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        return f"Q: What is {a} * {b}?\nA: {a} * {b} = {a * b}. The answer is {a * b}."
    if kind == "div":
        b, q, r = rng.randint(2, 12), rng.randint(2, 99), 0
        if rng.random() < 0.5:
            r = rng.randint(1, b - 1)
        a = b * q + r
        tail = f"{a} / {b} = {q} remainder {r}." if r else f"{a} / {b} = {q}."
        answer = f"{q} remainder {r}" if r else f"{q}"
        return f"Q: What is {a} divided by {b}?\nA: {tail} The answer is {answer}."
    if kind == "chain":
        a, b, c = rng.randint(2, 50), rng.randint(2, 50), rng.randint(2, 9)
        s = a + b
        return f"Q: Compute ({a} + {b}) * {c}.\nA: {a} + {b} = {s}. {s} * {c} = {s * c}. The answer is {s * c}."
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if kind == "word_buy":
        have, buy, give = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 30)
        total = have + buy
        give = min(give, total)
        return (
            f"Q: {name} has {have} {item}. {name} gets {buy} more and then gives away {give}. "
            f"How many {item} does {name} have now?\n"
            f"A: {have} + {buy} = {total}. {total} - {give} = {total - give}. The answer is {total - give}."
        )
    if kind == "word_share":
        people, each = rng.randint(2, 9), rng.randint(2, 25)
        total = people * each
        return (
            f"Q: {name} shares {total} {item} equally among {people} friends. "
            f"How many {item} does each friend get?\n"
            f"A: {total} / {people} = {each}. The answer is {each}."
        )
    price, percent = rng.randint(2, 40) * 10, rng.choice((10, 20, 25, 50))
    off = price * percent // 100
    return (
        f"Q: A toy costs {price} dollars and is on sale for {percent}% off. What is the sale price?\n"
        f"A: {percent}% of {price} is {off}. {price} - {off} = {price - off}. The answer is {price - off}."
    )


_LOADERS = {"math": _math, "code": _code, "general": _general}
