"""Recipe: train the demo MoE (gpt-oss architecture) on the built-in corpus.

`compress train-demo` runs it. The YAML beside this file (``demo_model.yaml``) holds every setting;
the output directory is a normal Hugging Face checkpoint plus ``training.json`` (the recipe, step
count, loss curve, per-domain held-out perplexity, the expert-usage divergence table) and a model
card. Training is seeded, but CPU kernels are not bit-reproducible across machines, so a rerun
gives a model of the same quality, not the same bytes.
"""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from compress.checkpoint.output import claim_output
from compress.data.corpus import corpus_fingerprint, load_texts
from compress.data.tokens import token_stream, token_windows
from compress.errors import CompressError
from compress.evals.perplexity import heldout_perplexity
from compress.stats.profile import profile_windows
from compress.stats.summary import domain_divergence_table

EOS_TOKEN = "<|endoftext|>"
USAGE_PLOT = "expert_usage.png"


def default_recipe_path() -> Path:
    return Path(str(resources.files("compress.recipes") / "demo_model.yaml"))


def load_recipe(path: str | Path | None = None) -> dict:
    """The recipe at `path` (default: the packaged one), checked key by key against the default."""
    default = yaml.safe_load(Path(default_recipe_path()).read_text())
    if path is None:
        return default
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise CompressError(f"recipe {path} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read recipe {path} ({exc})") from None
    _check_like(default, recipe, f"recipe {path}")
    return recipe


def _check_like(default, given, where: str) -> None:
    """`given` must have the shape of `default`: the same keys, and values of the same kinds."""
    if isinstance(default, dict):
        if not isinstance(given, dict):
            raise CompressError(f"{where} must be a mapping with keys {', '.join(default)}")
        missing, unknown = [k for k in default if k not in given], [k for k in given if k not in default]
        if missing or unknown:
            raise CompressError(f"{where}: " + (f"missing {', '.join(missing)}" if missing else f"unknown key {unknown[0]!r}")
                                + " (compare with recipes/demo_model.yaml)")
        for key, value in default.items():
            _check_like(value, given[key], f"{where}: {key}")
        return
    numbers = (int, float)
    same = isinstance(given, numbers) and not isinstance(given, bool) if isinstance(default, numbers) and not isinstance(default, bool) \
        else isinstance(given, type(default))
    if not same:
        raise CompressError(f"{where} must be a {type(default).__name__}, not {given!r}")


def build_tokenizer(vocab_size: int, domains: list[str]):
    """A byte-level BPE trained on the corpus's train split, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((text for domain in domains for text in load_texts(domain, "train")), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=512
    )


def build_model(recipe: dict, tokenizer):
    from transformers import GptOssConfig, GptOssForCausalLM

    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = GptOssConfig(
        vocab_size=len(tokenizer), eos_token_id=eos, pad_token_id=eos, bos_token_id=None, **recipe["model"]
    )
    torch.manual_seed(recipe["seed"])
    return GptOssForCausalLM(config)


def _lr_at(step: int, train: dict) -> float:
    if step < train["warmup_steps"]:
        return train["lr"] * (step + 1) / train["warmup_steps"]
    progress = (step - train["warmup_steps"]) / max(1, train["steps"] - train["warmup_steps"])
    floor = train["min_lr_ratio"]
    return train["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(recipe: dict, out_dir: Path, overwrite: bool = False) -> dict:
    """Train the demo model and write it, with its report, to `out_dir` (checked before training,
    written atomically after)."""
    with claim_output(out_dir, kind="directory", overwrite=overwrite, what="demo model") as claimed:
        training, model, tokenizer = _train(recipe)
        with claimed.write() as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return write_report(claimed.path)


def _train(recipe: dict):
    train_cfg = recipe["training"]
    torch.manual_seed(recipe["seed"])
    tokenizer = build_tokenizer(recipe["tokenizer"]["vocab_size"], train_cfg["domains"])
    model = build_model(recipe, tokenizer)
    streams = {d: token_stream(tokenizer, load_texts(d, "train")) for d in train_cfg["domains"]}

    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    seq_len, batch_size = train_cfg["seq_len"], train_cfg["batch_size"]
    domains = train_cfg["domains"]
    losses = []
    model.train()
    started = time.time()
    progress = tqdm(range(train_cfg["steps"]), desc="train demo", unit="step")
    for step in progress:
        rows = []
        for row in range(batch_size):
            stream = streams[domains[row % len(domains)]]
            start = int(torch.randint(0, len(stream) - seq_len, (1,), generator=generator))
            rows.append(stream[start : start + seq_len])
        batch = torch.stack(rows)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, train_cfg)
        output = model(input_ids=batch, labels=batch, output_router_logits=True)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(round(float(output.loss), 4))
        if step % 20 == 0:
            progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    minutes = (time.time() - started) / 60

    model.eval()
    model.to(getattr(torch, train_cfg["save_dtype"]))
    training = {
        "recipe": recipe,
        "steps": train_cfg["steps"],
        "train_minutes": round(minutes, 1),
        "corpus": corpus_fingerprint(),
        "loss_every_100_steps": losses[::100] + [losses[-1]],
    }
    return training, model, tokenizer


def write_report(model_dir: Path) -> dict:
    """Evaluate a trained demo checkpoint and add the figures to its training.json and model card.

    The untrained baseline is rebuilt from the recipe's seed, so the report needs only the checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    report = json.loads((model_dir / "training.json").read_text())
    recipe = report["recipe"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    report.update(evaluate(model, tokenizer, recipe, plot_path=model_dir / USAGE_PLOT))
    (model_dir / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (model_dir / "README.md").write_text(model_card(report))
    return report


def evaluate(model, tokenizer, recipe: dict, plot_path: Path | None = None) -> dict:
    """Held-out perplexity per domain and the domain-divergence table, trained vs untrained;
    with `plot_path`, also a heatmap of the trained model's expert usage per domain."""
    evaluation, train_cfg = recipe["evaluation"], recipe["training"]
    domains, seq_len = train_cfg["domains"], train_cfg["seq_len"]
    perplexity = {
        d: round(heldout_perplexity(model, tokenizer, load_texts(d, "heldout"), seq_len, evaluation["heldout_windows"]), 2)
        for d in domains
    }
    calibration = {d: load_texts(d, "calibration") for d in domains}
    untrained = build_model(recipe, tokenizer).to(model.dtype).eval()  # same seed: the initialisation trained from
    usage = {
        name: {d: selection_counts(m, tokenizer, texts, evaluation["usage_tokens"], seq_len) for d, texts in calibration.items()}
        for name, m in (("trained", model), ("untrained", untrained))
    }
    if plot_path is not None:
        plot_usage(usage["trained"], plot_path)
    return {
        "heldout_perplexity": perplexity,
        "domain_divergence": {
            "metric": "Jensen-Shannon divergence (bits) between domains' top-k selection distributions, mean over domain pairs",
            **{name: [round(x, 4) for x in domain_divergence_table(counts)] for name, counts in usage.items()},
        },
    }


def selection_counts(model, tokenizer, texts: list[str], tokens: int, seq_len: int) -> torch.Tensor:
    """Top-k selections per MoE layer and expert [layers, E] over the first `tokens` tokens of `texts`."""
    windows = token_windows(token_stream(tokenizer, texts, max_tokens=tokens), seq_len, max(1, tokens // seq_len))
    stats = profile_windows(model, windows, batch_size=8, model_name="demo", domain="", data="", progress=False)
    return stats.stacked("selections")


def plot_usage(usage: dict[str, torch.Tensor], path: Path) -> None:
    """One heatmap per domain: MoE layer × expert, share of the layer's top-k selections."""
    from compress.stats.plots import plot_layer_heatmaps

    shares = {domain: counts.double() / counts.sum(dim=1, keepdim=True) for domain, counts in usage.items()}
    plot_layer_heatmaps(shares, list(range(next(iter(usage.values())).shape[0])), path, label="share of selections")


def model_card(report: dict) -> str:
    recipe = report["recipe"]
    m, t = recipe["model"], recipe["training"]
    ppl = "\n".join(f"| {d} | {p} |" for d, p in report["heldout_perplexity"].items())
    div = report["domain_divergence"]
    rows = "\n".join(
        f"| {layer} | {a:.4f} | {b:.4f} |" for layer, (a, b) in enumerate(zip(div["untrained"], div["trained"]))
    )
    return f"""---
library_name: transformers
tags: [moe, gpt_oss, demo]
---
# moe-compress demo model

A small gpt-oss-architecture Mixture-of-Experts model ({m['num_hidden_layers']} layers, hidden {m['hidden_size']},
{m['num_local_experts']} experts, top-{m['num_experts_per_tok']}, a {recipe['tokenizer']['vocab_size']}-token byte-level BPE)
trained by `recipes/demo_model.yaml` on the built-in corpus's train split ({', '.join(t['domains'])}).
It is the default model of moe-compress's commands and the trained model its quality tests use.

- Steps: {report['steps']} of {t['batch_size']}×{t['seq_len']} tokens, AdamW lr {t['lr']}, aux loss {m['router_aux_loss_coef']}
  ({report['train_minutes']} minutes on the machine that trained it); corpus: {report['corpus']}
- Reproduce: `compress train-demo --out DIR` (the recipe is installed with the package)

## Held-out perplexity (per token)

| domain | perplexity |
|---|---|
{ppl}

## Routing is domain-dependent

{div['metric']}, on the calibration split:

| layer | untrained | trained |
|---|---|---|
{rows}

Expert usage of the trained model per domain (share of each layer's top-k selections):

![expert usage]({USAGE_PLOT})
"""
