"""Documents of the offline lm-eval tasks: the held-out split of the built-in corpus.

lm-eval calls these through ``custom_dataset: !function local_data.<name>`` in the task YAMLs, so
the tasks need no download and run wherever moe-compress is installed.
"""

from __future__ import annotations


def _dataset(rows: list[dict]):
    import datasets

    return {"test": datasets.Dataset.from_list(rows)}


def math_problems(**_):
    """Generated arithmetic and word problems: question, worked answer, final number."""
    from compress.data.corpus import load_texts

    rows = []
    for text in load_texts("math", "heldout"):
        question, worked = text.split("\nA:", 1)
        rows.append({"question": question, "worked_answer": worked.strip(), "answer": worked.rsplit("The answer is ", 1)[1].rstrip(". ")})
    return _dataset(rows)


def code_documents(**_):
    from compress.data.corpus import load_texts

    return _dataset([{"text": text} for text in load_texts("code", "heldout")])


def prose_documents(**_):
    from compress.data.corpus import load_texts

    return _dataset([{"text": text} for text in load_texts("general", "heldout")])
