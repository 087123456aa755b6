"""Evaluation: perplexity against an independent computation, the lm-eval bridge offline, the
quality gate's exit codes, comparisons, model cards and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest
import torch

from compress.cli import main
from compress.evals.perplexity import stream_perplexity, text_perplexity
from compress.model_loading import load_model, load_tokenizer
from compress.resolve import demo_model_path
from conftest import build_tiny_model, cli_error


def _reference_perplexity(model, stream: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The transformers documentation's strided loop: labels −100 except the new tokens, model loss."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + max_length, len(stream))
        trg_len = end - prev_end
        input_ids = stream[begin:end][None]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids=input_ids, labels=target).loss
        valid = int((target[:, 1:] != -100).sum())
        nll_sum += float(loss) * valid
        n_tokens += valid
        prev_end = end
        if end == len(stream):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("length,max_length,stride", [(30, 64, 64), (200, 32, 32), (203, 32, 12), (97, 16, 5)])
def test_perplexity_equals_the_documented_strided_computation(length, max_length, stride):
    model = build_tiny_model("mixtral").float()
    stream = torch.randint(3, 64, (length,), generator=torch.Generator().manual_seed(length))
    expected, tokens = _reference_perplexity(model, stream, max_length, stride)
    result = stream_perplexity(model, stream, max_length, stride, batch_size=3)
    assert result.tokens == tokens
    if stride < max_length or length <= max_length:  # overlapping windows leave only the first token unscored
        assert tokens == length - 1
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_bits_per_byte_counts_the_texts_bytes():
    path = demo_model_path()
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    texts = ["Q: What is 2 + 2?\nA: 2 + 2 = 4. The answer is 4.", "def f(x):\n    return x * 2  # ünïcode"]
    result = text_perplexity(model, tokenizer, texts, max_length=64)
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    nll = -float(logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-5)


def test_lm_eval_bridge_runs_a_local_task_offline_and_its_loglikelihoods_are_exact():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from compress.evals.harness import run_lm_eval, transformers_lm

    path = demo_model_path()
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    report = run_lm_eval(transformers_lm(model, tokenizer, batch_size=4), ["compress_arithmetic", "compress_prose_perplexity"],
                         limit=6)
    assert report["compress_arithmetic"]["samples"] == 6
    assert 0 <= report["compress_arithmetic"]["metrics"]["exact_match,final_answer"] <= 1
    assert report["compress_prose_perplexity"]["metrics"]["bits_per_byte,none"] > 0
    assert report["compress_prose_perplexity"]["higher_is_better"]["bits_per_byte,none"] is False

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    pairs = [("Q: What is 75 + 367?\nA:", " 75 + 367 = 442. The answer is 442."), ("def add(a, b):\n", "    return a + b"),
             ("The exception is", " propagated to the caller.")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    for (context, continuation), (logprob, _) in zip(pairs, lm.loglikelihood(requests)):
        trailing = len(context) - len(context.rstrip())  # lm-eval's convention: trailing whitespace joins the continuation
        if trailing:
            context, continuation = context[:-trailing], context[-trailing:] + continuation
        whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([whole])).logits[0].float()
        targets = torch.tensor(whole[len(context_ids):])
        expected = torch.log_softmax(logits[len(context_ids) - 1 : -1], -1).gather(-1, targets[:, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)


def test_chat_templates_go_to_generative_tasks_of_chat_models():
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from compress.errors import CompressError
    from compress.evals.harness import chat_template_tasks

    tasks = ["compress_arithmetic", "compress_prose_perplexity"]  # generate_until, loglikelihood_rolling (their YAML)
    chat, plain = SimpleNamespace(chat_template="{{ messages }}"), SimpleNamespace(chat_template=None)
    assert chat_template_tasks(tasks, "auto", chat) == {"compress_arithmetic"}
    assert chat_template_tasks(tasks, "auto", plain) == set()
    assert chat_template_tasks(tasks, "on", chat) == set(tasks)
    assert chat_template_tasks(tasks, "off", chat) == set()
    with pytest.raises(CompressError, match="has no chat template"):
        chat_template_tasks(tasks, "on", plain)


def test_the_vllm_backend_without_vllm_is_one_line(capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; the interop check (benchmarks/interop) runs this backend")
    err = cli_error(capsys, "eval", "--model", "demo", "--tasks", "perplexity:math", "--backend", "vllm")
    assert "needs vLLM in this environment" in err and "pip install --no-deps moe-compress" in err


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    stats = root / "math.safetensors"
    fast = ["--samples", "8", "--seq-len", "64", "--dtype", "float32", "--quiet"]
    assert main(["profile", "--model", "demo", "--domain", "math", "--out", str(stats), *fast]) == 0
    assert main(["prune", "--model", "demo", "--stats", str(stats), "--keep", "2", "--criterion", "frequency",
                 "--out", str(root / "keep2"), "--quiet"]) == 0
    shutil.copytree(demo_model_path(), root / "demo-copy")
    return root


GATE = ["--tasks", "perplexity:math", "--limit", "200", "--seq-len", "128", "--dtype", "float32", "--quiet"]


def test_gate_passes_an_unchanged_model_and_fails_a_heavily_pruned_one(pruned_demo, capsys):
    card_before = (demo_model_path() / "README.md").read_text()
    assert main(["gate", "--base", "demo", "--candidate", str(pruned_demo / "demo-copy"), *GATE]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main(["gate", "--base", "demo", "--candidate", str(pruned_demo / "keep2"), *GATE]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "band: revise" in out and "failing: perplexity:math perplexity" in out
    card = (pruned_demo / "keep2" / "README.md").read_text()
    assert "## Evaluation" in card and "Quality gate: **fail** (revise)" in card
    records = json.loads((pruned_demo / "keep2" / "compress.json").read_text())["evaluations"]
    assert records[-1]["command"] == "gate" and records[-1]["report"]["tasks"]["perplexity:math"]
    assert (demo_model_path() / "README.md").read_text() == card_before  # the base is never written to


def test_compare_reuses_cached_results_and_draws_a_chart(pruned_demo, tmp_path, capsys):
    argv = ["compare", "--base", "demo", "--candidate", str(pruned_demo / "keep2"), *GATE, "--plot", str(tmp_path / "c.png")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "perplexity:math" in text and "%" in text
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "--model", str(pruned_demo / "keep2"), *GATE, "--json", str(tmp_path / "e.json")]) == 0
    assert "(cached)" in capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["tasks"]["perplexity:math"]["metrics"]["perplexity"] > 1



def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    err = cli_error(capsys, "eval", "--model", "demo", "--tasks", "compress_arithmatic")
    assert "unknown task 'compress_arithmatic'" in err and "compress_arithmetic" in err
    assert "no such directory" in cli_error(capsys, "eval", "--model", str(tmp_path / "missing"), "--tasks", "perplexity:math")
    assert "argument --limit: must be at least 1, not 0" in cli_error(capsys, "eval", "--model", "demo", "--tasks", "perplexity:math",
                                                                      "--limit", "0")


def test_every_run_is_kept_in_the_card_and_limited_ones_are_marked(pruned_demo, capsys):
    """A later gate keeps the earlier comparison; limited runs say so."""
    limited = ["--tasks", "perplexity:math", "--max-tokens", "1000", "--seq-len", "128", "--quiet"]
    assert main(["compare", "--base", "demo", "--candidate", str(pruned_demo / "keep2"), *limited]) == 0
    assert main(["gate", "--base", "demo", "--candidate", str(pruned_demo / "keep2"), *limited]) == 1
    records = json.loads((pruned_demo / "keep2" / "compress.json").read_text())["evaluations"]
    commands = [(r["command"], r["report"]["settings"]["max_tokens"]) for r in records]
    assert ("compare", 1000) in commands and ("gate", 1000) in commands
    card = (pruned_demo / "keep2" / "README.md").read_text()
    assert "### Comparison against `demo` — **limited to 1,000 tokens per perplexity task: not a full evaluation**" in card
    assert "### Quality gate against `demo` — **limited to 1,000 tokens" in card
    assert main(["gate", "--base", "demo", "--candidate", str(pruned_demo / "keep2"), *limited]) == 1  # the same run again
    again = json.loads((pruned_demo / "keep2" / "compress.json").read_text())["evaluations"]
    assert len(again) == len(records)  # replaced, not duplicated


def test_max_tokens_bounds_perplexity_to_the_first_tokens():
    from compress.data.corpus import load_texts
    from compress.data.tokens import token_stream

    path = demo_model_path()
    model, tokenizer = load_model(path, device="cpu"), load_tokenizer(path)
    texts = load_texts("code", "heldout")
    bounded = text_perplexity(model, tokenizer, texts, 64, 32, max_tokens=300)
    reference = stream_perplexity(model, token_stream(tokenizer, texts[:3])[:301], 64, 32)  # independent: a sliced stream
    assert bounded.tokens == reference.tokens == 300
    assert bounded.perplexity == pytest.approx(reference.perplexity, rel=1e-6)


def test_compute_is_float32_on_the_cpu_unless_asked_otherwise():
    assert next(load_model(demo_model_path(), device="cpu").parameters()).dtype == torch.float32  # the checkpoint is bf16
    assert next(load_model(demo_model_path(), dtype="bfloat16", device="cpu").parameters()).dtype == torch.bfloat16
