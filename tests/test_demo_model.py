"""The committed demo model: loads in stock transformers, generates, has real quality, and routes
differently per domain (unlike its untrained initialisation)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.cli import main
from compress.data.corpus import load_texts
from compress.recipes.demo_model import build_model, selection_counts
from compress.resolve import demo_model_path
from compress.stats.summary import domain_divergence_table

DOMAINS = ("math", "code", "general")


@pytest.fixture(scope="module")
def demo():
    path = demo_model_path()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_checkpoint_is_small_complete_and_documented():
    path = demo_model_path()
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json", "README.md", "expert_usage.png"} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) < 20 * 2**20
    report = json.loads((path / "training.json").read_text())
    assert report["steps"] == report["recipe"]["training"]["steps"] >= 1000
    assert set(report["heldout_perplexity"]) == set(DOMAINS)
    assert len(report["domain_divergence"]["trained"]) == report["recipe"]["model"]["num_hidden_layers"]
    assert "compress train-demo" in (path / "README.md").read_text()


def test_info_on_demo(capsys):
    assert main(["info", "demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["num_layers"], info["top_k"]) == ("gpt_oss", 6, 4)
    assert set(info["experts_per_layer"].values()) == {16}
    assert 5_000_000 < info["parameters"]["total"] < 6_000_000


def test_generates_worked_arithmetic(demo):
    """Greedy answers to held-out problems follow the worked-answer format and are sometimes right
    (an untrained model never is)."""
    model, tokenizer = demo
    problems = load_texts("math", "heldout")[:20]
    formatted = correct = 0
    for problem in problems:
        question, answer = problem.split("\nA:")
        ids = tokenizer(question + "\nA:", return_tensors="pt").input_ids
        output = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(output[0, ids.shape[1]:]).split(tokenizer.eos_token)[0]
        formatted += "The answer is " in text
        correct += text.strip().endswith("The answer is " + answer.split("The answer is ")[1])
    assert formatted >= 18, formatted
    assert correct >= 2, correct


def _perplexity(model, tokenizer, texts, windows=16, seq_len=128):
    """exp(mean NLL) from a plain forward and cross_entropy (independent of compress.evals)."""
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(ids) >= windows * seq_len:
            break
    batch = torch.tensor(ids[: windows * seq_len]).view(windows, seq_len)
    with torch.no_grad():
        logits = model(input_ids=batch).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return math.exp(float(nll))


def test_heldout_perplexity_shows_a_trained_model(demo):
    model, tokenizer = demo
    ppl = {domain: _perplexity(model, tokenizer, load_texts(domain, "heldout")) for domain in DOMAINS}
    # Untrained, every domain sits near the vocabulary size (2,048); trained, far below.
    assert ppl["math"] < 5, ppl
    assert ppl["code"] < 100, ppl
    assert ppl["general"] < 100, ppl


def test_routing_is_domain_dependent_unlike_the_untrained_model(demo):
    model, tokenizer = demo
    report = json.loads((demo_model_path() / "training.json").read_text())
    untrained = build_model(report["recipe"], tokenizer).eval()  # the recipe's seeded initialisation
    calibration = {domain: load_texts(domain, "calibration") for domain in DOMAINS}
    trained_table = domain_divergence_table({d: selection_counts(model, tokenizer, t, 8192, 128) for d, t in calibration.items()})
    untrained_table = domain_divergence_table({d: selection_counts(untrained, tokenizer, t, 8192, 128) for d, t in calibration.items()})
    print("\nlayer  untrained  trained (JS divergence between domains, bits)")
    for layer, (before, after) in enumerate(zip(untrained_table, trained_table)):
        print(f"{layer:5d}  {before:9.4f}  {after:7.4f}")
    assert all(after > before for before, after in zip(untrained_table, trained_table))
    assert sum(trained_table) > 1.5 * sum(untrained_table)
