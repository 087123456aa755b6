"""A catalogue of bad inputs across every command.

Each case runs the real command line and must end with exit code 2 and one ``error: ...`` line
saying what was wrong (checked by a phrase), no traceback, nothing new or changed anywhere in the
workspace (no half-written output, staging directory, lock or partial file beside the target) and
the source models byte-for-byte unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.cli import main
from compress.resolve import demo_model_path
from conftest import build_tiny_model

FAST = ["--samples", "4", "--seq-len", "64", "--quiet"]


def _rewrite_weights(directory: Path, change) -> None:
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _copy_demo(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(demo_model_path(), target)
    return target


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """The workspace: sources, broken checkpoints, statistics, plans and outputs the cases use."""
    root = tmp_path_factory.mktemp("bad-inputs")
    w = {"root": root, "src": _copy_demo(root, "src")}
    assert main(["profile", "--model", str(w["src"]), "--domain", "math", "--out", str(root / "math.safetensors"), *FAST]) == 0
    w["stats"] = root / "math.safetensors"
    assert main(["prune", "--model", str(w["src"]), "--stats", str(w["stats"]), "--keep", "8", "--criterion", "frequency",
                 "--out", str(root / "pruned"), "--quiet"]) == 0
    w["pruned"] = root / "pruned"
    assert main(["prune", "--model", str(w["src"]), "--stats", str(w["stats"]), "--keep", "8", "--criterion", "frequency",
                 "--plan-only", "--out", str(root / "plan.json"), "--quiet"]) == 0
    w["plan"] = root / "plan.json"
    plan = json.loads(w["plan"].read_text())

    w["missing"] = _copy_demo(root, "missing-weight")
    _rewrite_weights(w["missing"], lambda t: t.pop("model.layers.2.self_attn.q_proj.weight"))
    w["unexpected"] = _copy_demo(root, "unexpected-weight")
    _rewrite_weights(w["unexpected"], lambda t: t.__setitem__("model.layers.0.mlp.extra.weight", torch.zeros(3)))
    w["misshaped"] = _copy_demo(root, "misshaped-weight")
    _rewrite_weights(w["misshaped"], lambda t: t.__setitem__("model.layers.1.self_attn.k_proj.weight",
                                                              torch.zeros(5, 7, dtype=torch.bfloat16)))
    w["lying"] = _copy_demo(root, "lying-config")
    config = json.loads((w["lying"] / "config.json").read_text())
    (w["lying"] / "config.json").write_text(json.dumps({**config, "num_local_experts": 32}))
    w["truncated"] = _copy_demo(root, "truncated")
    weights = w["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    w["config_array"] = _copy_demo(root, "config-array")
    (w["config_array"] / "config.json").write_text("[1, 2, 3]")
    mixtral = build_tiny_model("mixtral")
    mixtral.save_pretrained(root / "mixtral")
    w["mixtral"] = root / "mixtral"
    import transformers

    dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    dense.save_pretrained(root / "dense")
    w["dense"] = root / "dense"

    assert main(["merge", "--model", str(w["src"]), "--domain", "math", "--keep", "8", "--plan-only", "--out",
                 str(root / "merge-plan.json"), *FAST]) == 0
    merge_plan = json.loads((root / "merge-plan.json").read_text())
    assert main(["convert", "tiered", "--model", str(w["src"]), "--stats", str(w["stats"]), "--plan-only", "--out",
                 str(root / "tiered-plan.json"), "--quiet"]) == 0
    tiered_plan = json.loads((root / "tiered-plan.json").read_text())

    def variant(name: str, plan: dict, change) -> None:
        changed = json.loads(json.dumps(plan))
        change(changed)
        (root / name).write_text(json.dumps(changed))

    groups = len(merge_plan["layers"]["0"])
    variant("merge-weights-flat.json", merge_plan, lambda p: p["weights"].__setitem__("0", [1.0] * groups))
    variant("merge-weight-negative.json", merge_plan, lambda p: p["weights"]["0"][0].__setitem__(0, -1.0))
    variant("merge-weight-nan.json", merge_plan, lambda p: p["weights"]["0"][0].__setitem__(0, float("nan")))
    variant("merge-layer-superscript.json", merge_plan, lambda p: (p["layers"].__setitem__("²", p["layers"]["0"]),
                                                                    p["weights"].__setitem__("²", p["weights"]["0"])))
    variant("merge-source-edited.json", merge_plan, lambda p: p["source"].update(
        num_experts=8, experts_per_layer={layer: 8 for layer in p["source"]["experts_per_layer"]}))
    variant("tiered-no-teams.json", tiered_plan, lambda p: p["layers"]["0"].update(teams=[], mixing=[]))
    variant("tiered-empty-team.json", tiered_plan, lambda p: [layer.update(teams=[[], *layer["teams"][1:]],
                                                                           mixing=[[], *layer["mixing"][1:]])
                                                              for layer in p["layers"].values()])
    for name, value in (("nan", float("nan")), ("negative", -1.0), ("inf", float("inf"))):
        variant(f"tiered-mixing-{name}.json", tiered_plan, lambda p, value=value: p["layers"]["0"]["mixing"][0].__setitem__(0, value))
    (root / "notes.png").write_text("my picture\n")
    (root / "notes.txt").write_text("my notes\n")
    w["notes"] = root / "notes.txt"
    (root / "plan-array.json").write_text("[1, 2]")
    (root / "plan-float.json").write_text(json.dumps({**plan, "layers": {**plan["layers"], "0": [0.5, *plan["layers"]["0"][1:]]}}))
    (root / "plan-broken.json").write_text("{not json")
    (root / "plan-other-model.json").write_text(json.dumps({**plan, "source": {**plan["source"], "fingerprint": "sha256:0"}}))
    (root / "bad-recipe.yaml").write_text("tiers: [0-1:4\n  team_size: 2\n")
    (root / "unknown-key-recipe.yaml").write_text("teams: 3\n")
    stats_bytes = w["stats"].read_bytes()
    (root / "stats-truncated.safetensors").write_bytes(stats_bytes[: len(stats_bytes) // 2])
    (root / "user-dir").mkdir()
    (root / "user-dir" / "notes.txt").write_text("do not delete\n")
    (root / "home").mkdir()
    (root / "home" / "diary.txt").write_text("private\n")
    (root / "someone-elses").mkdir()
    (root / "someone-elses" / "data.bin").write_bytes(b"\x00\x01")
    w["hashes"] = {name: _tree_hash(w[name]) for name in ("src", "pruned", "mixtral")}
    return w


def _tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root` (hidden ones included) with its size and time."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


# (case id, argv with {name} placeholders for workspace paths, a phrase the error line must contain)
CASES = [
    # --- data loss and wrong results -------------------------------------------------------------
    ("prune-out-dot-overwrite", "prune --model {src} --stats {stats} --keep 8 --out . --overwrite", "is the current directory"),
    ("prune-out-empty", "prune --model {src} --stats {stats} --keep 8 --out=", "--out is empty"),
    ("prune-out-home", "prune --model {src} --stats {stats} --keep 8 --out ~ --overwrite", "is your home directory"),
    ("prune-out-root", "prune --model {src} --stats {stats} --keep 8 --out / --overwrite", "is the root directory"),
    ("prune-out-source", "prune --model {src} --stats {stats} --keep 8 --out {src} --overwrite", "is the source model"),
    ("prune-out-inside-source", "prune --model {src} --stats {stats} --keep 8 --out {src}/pruned", "is the source model or inside it"),
    ("prune-out-parent-of-source", "prune --model {src} --stats {stats} --keep 8 --out {root} --overwrite", "contains the source model"),
    ("prune-overwrite-foreign-dir", "prune --model {src} --stats {stats} --keep 8 --out {root}/someone-elses --overwrite",
     "not a moe-compress output"),
    ("prune-existing-without-overwrite", "prune --model {src} --stats {stats} --keep 8 --out {pruned}", "pass --overwrite"),
    ("info-missing-weight", "info {missing}", "is missing 1 tensor the model needs"),
    ("profile-missing-weight", "profile --model {missing} --domain math --out {root}/x.safetensors", "is missing 1 tensor the model needs"),
    ("prune-missing-weight", "prune --model {missing} --domain math --keep 8 --out {root}/x", "is missing 1 tensor the model needs"),
    ("eval-missing-weight", "eval --model {missing} --tasks perplexity:math", "is missing 1 tensor the model needs"),
    ("compare-base-missing-weight", "compare --base {missing} --candidate {pruned} --tasks perplexity:math",
     "is missing 1 tensor the model needs"),
    ("compare-candidate-missing-weight", "compare --base {src} --candidate {missing} --tasks perplexity:math",
     "is missing 1 tensor the model needs"),
    ("gate-candidate-missing-weight", "gate --base {src} --candidate {missing} --tasks perplexity:math",
     "is missing 1 tensor the model needs"),
    ("analyze-missing-weight", "analyze trace --model {missing} --prompt hi", "is missing 1 tensor the model needs"),
    ("convert-missing-weight", "convert tiered --model {missing} --stats {stats} --out {root}/x", "is missing 1 tensor the model needs"),
    ("distill-teacher-missing-weight", "distill --teacher {missing} --student {pruned} --domain math --steps 1 --out {root}/x",
     "is missing 1 tensor the model needs"),
    ("distill-student-missing-weight", "distill --teacher {src} --student {missing} --domain math --steps 1 --out {root}/x",
     "is missing 1 tensor the model needs"),
    ("eval-unexpected-weight", "eval --model {unexpected} --tasks perplexity:math", "holds 1 tensor its model does not have"),
    ("eval-misshaped-weight", "eval --model {misshaped} --tasks perplexity:math", "1 tensor does not have the shape config.json implies"),
    ("info-config-lies-about-experts", "info {lying}", "config.json says 32 experts in layer 0 but its weights hold 16"),
    ("eval-config-lies-about-experts", "eval --model {lying} --tasks perplexity:math", "config.json says 32 experts in layer 0"),
    ("prune-plan-only-onto-directory", "prune --model {src} --stats {stats} --keep 8 --plan-only --out {pruned} --overwrite",
     "is a directory"),
    ("profile-overwrite-foreign-file", "profile --model {src} --domain math --out {notes} --overwrite", "not a statistics file"),
    ("stats-merge-overwrite-foreign-file", "stats merge {stats} -o {notes} --overwrite", "not a statistics file"),
    # --- tracebacks that must become one line ---------------------------------------------------
    ("eval-truncated", "eval --model {truncated} --tasks perplexity:math", "is truncated"),
    ("gate-truncated", "gate --base {src} --candidate {truncated} --tasks perplexity:math", "is truncated"),
    ("compare-truncated", "compare --base {truncated} --candidate {src} --tasks perplexity:math", "is truncated"),
    ("analyze-truncated", "analyze topk --model {truncated} --domain math", "is truncated"),
    ("profile-truncated", "profile --model {truncated} --domain math --out {root}/x.safetensors", "is truncated"),
    ("distill-truncated", "distill --teacher {src} --student {truncated} --domain math --steps 1 --out {root}/x", "is truncated"),
    ("info-truncated", "info {truncated}", "is truncated"),
    ("prune-truncated", "prune --model {truncated} --stats {stats} --keep 8 --out {root}/x", "is truncated"),
    ("merge-missing-weight", "merge --model {missing} --domain math --keep 8 --out {root}/x", "is missing 1 tensor the model needs"),
    ("merge-truncated", "merge --model {truncated} --domain math --keep 8 --out {root}/x", "is truncated"),
    ("merge-out-source", "merge --model {src} --domain math --keep 8 --out {src} --overwrite", "is the source model"),
    ("merge-existing-without-overwrite", "merge --model {src} --domain math --keep 8 --out {pruned}", "pass --overwrite"),
    ("merge-plan-is-a-prune-plan", "merge --model {src} --plan {root}/plan-float.json --out {root}/x", "is not a merge plan"),
    ("merge-dense-model", "merge --model {dense} --keep 2 --domain math --out {root}/x", "is a dense model"),
    ("merge-keep-zero", "merge --model {src} --domain math --keep 0 --out {root}/x", "--keep: must be at least 1"),
    ("prune-keep-list-repeats", "prune --model {src} --stats {stats} --keep 4,4 --out {root}/x", "repeats a value"),
    ("profile-out-under-proc", "profile --model {src} --domain math --out /proc/moe-compress/x.safetensors", "cannot create --out"),
    ("profile-out-under-a-file", "profile --model {src} --domain math --out {notes}/x.safetensors", "which is a file"),
    ("prune-out-under-a-file", "prune --model {src} --stats {stats} --keep 8 --out {notes}/pruned", "which is a file"),
    ("stats-plot-to-a-file", "stats plot {stats} -o {notes}", "is a file: name a directory"),
    ("prune-plan-is-an-array", "prune --model {src} --plan {root}/plan-array.json --out {root}/x", "is not a prune plan"),
    ("convert-bad-recipe-yaml", "convert tiered --model {src} --stats {stats} --recipe {root}/bad-recipe.yaml --out {root}/x",
     "is not valid YAML"),
    ("convert-recipe-unknown-key", "convert tiered --model {src} --stats {stats} --recipe {root}/unknown-key-recipe.yaml --out {root}/x",
     "unknown key 'teams'"),
    ("push-offline-with-token", "push {pruned} --repo someone/demo-pruned", "HF_HUB_OFFLINE"),
    ("distill-student-of-another-architecture", "distill --teacher {src} --student {mixtral} --domain math --steps 1 --out {root}/x",
     "vocab_size"),
    ("distill-negative-lr", "distill --teacher {src} --student {pruned} --domain math --steps 1 --lr -1 --out {root}/x",
     "--lr: must be greater than 0"),
    ("eval-stride-beyond-window", "eval --model {src} --tasks perplexity:math --stride 100000", "--stride 100000 is longer than"),
    # --- accepted nonsense --------------------------------------------------------------------------
    ("gate-negative-ppl-gap", "gate --base {src} --candidate {pruned} --tasks perplexity:math --max-ppl-gap -0.1",
     "--max-ppl-gap: must be 0 or more"),
    ("gate-negative-drop", "gate --base {src} --candidate {pruned} --tasks perplexity:math --max-drop -1", "--max-drop: must be 0 or more"),
    ("prune-plan-float-expert-id", "prune --model {src} --plan {root}/plan-float.json --out {root}/x", "0.5, which is not an expert id"),
    ("stats-merge-the-same-file-twice", "stats merge {stats} {stats} -o {root}/twice.safetensors",
     "merging would count those tokens twice"),
    ("prune-max-shard-size-zero", "prune --model {src} --stats {stats} --keep 8 --max-shard-size 0 --out {root}/x",
     "--max-shard-size: must be at least 1"),
    # --- misleading messages ---------------------------------------------------------------------------
    ("eval-unknown-perplexity-text", "eval --model {src} --tasks perplexity:klingon",
     "'perplexity:klingon': 'klingon' is not a built-in domain"),
    ("gate-missing-candidate", "gate --base {src} --candidate {root}/nope --tasks perplexity:math", "--candidate"),
    ("compare-missing-candidate", "compare --base {src} --candidate {root}/nope --tasks perplexity:math", "--candidate"),
    ("distill-missing-student", "distill --teacher {src} --student {root}/nope --domain math --steps 1 --out {root}/x", "--student"),
    ("info-config-is-an-array", "info {config_array}", "not a Hugging Face config"),
    ("eval-missing-text-file", "eval --model {src} --tasks perplexity:{root}/missing.txt", "text file"),
    # --- every command, more --------------------------------------------------------------------------
    ("unknown-command", "squash --model demo", "invalid choice: 'squash'"),
    ("unknown-option", "info demo --colour", "unrecognized arguments: --colour"),
    ("info-missing-path", "info {root}/nope", "no such directory"),
    ("info-a-file", "info {notes}", "is a file"),
    ("info-dense-model", "info {dense}", "is a dense model"),
    ("prune-dense-model", "prune --model {dense} --keep 2 --domain math --out {root}/x", "is a dense model"),
    ("profile-unknown-domain", "profile --model {src} --domain klingon --out {root}/x.safetensors",
     "no built-in corpus for domain 'klingon'"),
    ("profile-missing-dataset", "profile --model {src} --domain law --dataset {root}/cases.jsonl --out {root}/x.safetensors",
     "calibration file"),
    ("profile-zero-samples", "profile --model {src} --domain math --samples 0 --out {root}/x.safetensors", "--samples: must be at least 1"),
    ("profile-seq-len-beyond-positions", "profile --model {src} --domain math --seq-len 100000 --out {root}/x.safetensors",
     "beyond the model's 512 positions"),
    ("profile-negative-batch", "profile --model {src} --domain math --batch-size -1 --out {root}/x.safetensors", "--batch-size"),
    ("profile-existing-output", "profile --model {src} --domain math --out {stats}", "pass --overwrite"),
    ("profile-bad-dtype", "profile --model {src} --domain math --dtype float8 --out {root}/x.safetensors", "invalid choice: 'float8'"),
    ("profile-bad-device", "profile --model {src} --domain math --device tpu --out {root}/x.safetensors", "invalid choice: 'tpu'"),
    ("stats-show-missing", "stats show {root}/nope.safetensors", "does not exist"),
    ("stats-show-not-statistics", "stats show {src}/model.safetensors", "is not a routing statistics file"),
    ("stats-show-truncated", "stats show {root}/stats-truncated.safetensors", "not a readable safetensors statistics file"),
    ("stats-show-zero-top", "stats show {stats} --top 0", "--top: must be at least 1"),
    ("stats-plot-bad-layer", "stats plot {stats} -o {root}/plots --layer 99", "layer 99 is not a MoE layer"),
    ("prune-keep-too-many", "prune --model {src} --stats {stats} --keep 17 --out {root}/x", "more than the 16 experts"),
    ("prune-keep-ratio-zero", "prune --model {src} --stats {stats} --keep-ratio 0 --out {root}/x", "--keep-ratio: must be greater than 0"),
    ("prune-unknown-criterion", "prune --model {src} --stats {stats} --keep 8 --criterion loudest --out {root}/x",
     "invalid choice: 'loudest'"),
    ("prune-protect-bad-layer", "prune --model {src} --stats {stats} --keep 8 --protect 99:1 --out {root}/x",
     "layer 99 is not a MoE layer"),
    ("prune-protect-bad-expert", "prune --model {src} --stats {stats} --keep 8 --protect 0:99 --out {root}/x",
     "expert ids run from 0 to 15"),
    ("prune-protect-garbage", "prune --model {src} --stats {stats} --keep 8 --protect everything --out {root}/x", "write LAYER:EXPERT"),
    ("prune-missing-plan", "prune --model {src} --plan {root}/nope.json --out {root}/x", "does not exist"),
    ("prune-plan-broken-json", "prune --model {src} --plan {root}/plan-broken.json --out {root}/x", "is not valid JSON"),
    ("prune-plan-other-model", "prune --model {src} --plan {root}/plan-other-model.json --out {root}/x", "was made for"),
    ("prune-stats-of-other-model", "prune --model {mixtral} --stats {stats} --keep 2 --out {root}/x", "a different model"),
    ("prune-no-keep", "prune --model {src} --stats {stats} --out {root}/x", "say how many experts to keep"),
    ("prune-no-domain", "prune --model {src} --keep 8 --out {root}/x", "pass --domain"),
    ("prune-global-below-top-k", "prune --model {src} --stats {stats} --keep 2 --budget global --criterion frequency --out {root}/x",
     "below the per-layer minimum"),
    ("convert-bad-tiers", "convert tiered --model {src} --stats {stats} --tiers everything --out {root}/x", "--tiers"),
    ("convert-zero-team-size", "convert tiered --model {src} --stats {stats} --team-size 0 --out {root}/x",
     "--team-size: must be at least 1"),
    ("convert-too-many-teams", "convert tiered --model {src} --stats {stats} --tiers 0-5:9 --team-size 2 --out {root}/x",
     "more than the 16 experts"),
    ("convert-agglomerative-odd-teams",
     "convert tiered --model {src} --stats {stats} --clustering agglomerative --team-size 3 --out {root}/x",
     "power of two"),
    ("convert-missing-recipe", "convert tiered --model {src} --stats {stats} --recipe {root}/nope.yaml --out {root}/x", "does not exist"),
    ("distill-zero-steps", "distill --teacher {src} --student {pruned} --domain math --steps 0 --out {root}/x",
     "--steps: must be at least 1"),
    ("distill-bad-hidden-layers", "distill --teacher {src} --student {pruned} --domain math --steps 1 --hidden-layers 99 --out {root}/x",
     "--hidden-layers"),
    ("distill-resume-nothing", "distill --teacher {src} --student {pruned} --domain math --steps 1 --resume --out {root}/x",
     "holds no checkpoint"),
    ("distill-resume-and-overwrite",
     "distill --teacher {src} --student {pruned} --domain math --steps 1 --resume --overwrite --out {root}/x",
     "pass one of them"),
    ("distill-existing-output", "distill --teacher {src} --student {pruned} --domain math --steps 1 --out {root}/someone-elses",
     "pass --resume"),
    ("eval-empty-tasks", "eval --model {src} --tasks ,", "--tasks is empty"),
    ("eval-unknown-lm-eval-task", "eval --model {src} --tasks compress_arithmatic", "did you mean"),
    ("eval-seq-len-one", "eval --model {src} --tasks perplexity:math --seq-len 1", "--seq-len must be at least 2"),
    ("eval-json-into-a-directory", "eval --model {src} --tasks perplexity:math --json {root}/user-dir", "is a directory"),
    ("compare-plot-under-a-file", "compare --base {src} --candidate {pruned} --tasks perplexity:math --plot {notes}/c.png",
     "which is a file"),
    ("analyze-unknown", "analyze tea-leaves --model {src}", "unknown analysis 'tea-leaves'"),
    ("analyze-trace-without-prompt", "analyze trace --model {src}", "needs --prompt"),
    ("analyze-ablate-bad-layer", "analyze ablate --model {src} --experts 99:1 --domain math", "layer 99 is not a MoE layer"),
    ("analyze-topk-zero", "analyze topk --model {src} --k 0 --domain math", "every k must be between 1 and the 16"),
    ("analyze-similarity-bad-layer", "analyze similarity --model {src} --layer 99", "--layer 99 is not a MoE layer"),
    ("analyze-unknown-domain", "analyze topk --model {src} --domain klingon", "--domain 'klingon'"),
    ("analyze-needs-model", "analyze trace --prompt hi", "needs --model"),
    ("push-missing-directory", "push {root}/nope --repo someone/x --dry-run", "is not a directory"),
    ("push-bad-repo-id", "push {pruned} --repo not-a-repo-id --dry-run", "is not a Hub repository id"),
    ("push-incomplete", "push {src} --repo someone/x --dry-run", "is not a complete derived checkpoint"),
    ("train-demo-report-without-training", "train-demo --out {root}/user-dir --report-only", "holds no training.json"),
    ("train-demo-missing-recipe", "train-demo --out {root}/x --recipe {root}/nope.yaml", "does not exist"),
    # --- the newest features: sizes, plans, charts (issue 24) -----------------------------------------
    ("prune-keep-ratios-round-to-one-count",
     "prune --model {src} --stats {stats} --criterion frequency --keep-ratio 0.5,0.51 --out {root}/x",
     "--keep-ratio 0.5,0.51 comes to 8 of the 16 experts per layer more than once"),
    ("merge-keep-ratios-round-to-one-count", "merge --model {src} --domain math --keep-ratio 0.5,0.51 --out {root}/x",
     "comes to 8 of the 16 experts per layer more than once"),
    ("prune-frontier-keeps-every-expert", "prune --model {src} --stats {stats} --criterion frequency --keep 8,16 --out {root}/x",
     "keeping 16 experts keeps every one"),
    ("prune-reconstruct-from-stats-alone", "prune --model {src} --stats {stats} --keep 8 --out {root}/x",
     "which --stats does not hold: pass --domain too"),
    ("merge-plan-weights-not-per-member", "merge --model {src} --plan {root}/merge-weights-flat.json --out {root}/x",
     '"weights" must map each MoE layer to one list of weights per group'),
    ("merge-plan-negative-weight", "merge --model {src} --plan {root}/merge-weight-negative.json --out {root}/x",
     "has merge weight -1.0: weights must be positive finite numbers"),
    ("merge-plan-nan-weight", "merge --model {src} --plan {root}/merge-weight-nan.json --out {root}/x",
     "has merge weight nan"),
    ("merge-plan-layer-not-a-number", "merge --model {src} --plan {root}/merge-layer-superscript.json --out {root}/x",
     "layer '²' is not a decoder-layer number"),
    ("merge-plan-source-edited", "merge --model {src} --plan {root}/merge-source-edited.json --out {root}/x",
     'the plan\'s "source" says layer 0 has 8 experts, but the model has 16'),
    ("merge-plan-with-keep", "merge --model {src} --plan {root}/merge-plan.json --keep 4 --out {root}/x",
     "--keep is decided by the plan"),
    ("merge-plan-with-grouping-and-router", "merge --model {src} --plan {root}/merge-plan.json --grouping m-smoe "
     "--router weighted --out {root}/x", "--grouping and --router are decided by the plan"),
    ("prune-plan-with-criterion", "prune --model {src} --plan {plan} --criterion frequency --out {root}/x",
     "--criterion is decided by the plan"),
    ("convert-plan-with-team-size", "convert tiered --model {src} --plan {root}/tiered-plan.json --team-size 2 --out {root}/x",
     "--team-size is decided by the plan"),
    ("convert-plan-layer-without-teams", "convert tiered --model {src} --plan {root}/tiered-no-teams.json --out {root}/x",
     "layer 0 has no teams or an empty team"),
    ("convert-plan-empty-teams", "convert tiered --model {src} --plan {root}/tiered-empty-team.json --out {root}/x",
     "has no teams or an empty team"),
    *[(f"convert-plan-mixing-{name}", f"convert tiered --model {{src}} --plan {{root}}/tiered-mixing-{name}.json --out {{root}}/x",
       "mixing weights must be finite float32 numbers, 0 or more") for name in ("nan", "negative", "inf")],
    ("compare-frontier-not-an-image", "compare --base {src} --candidate {pruned} --tasks perplexity:math --frontier {notes}",
     "a chart is written as png, svg, pdf"),
    ("compare-frontier-onto-model-weights",
     "compare --base {src} --candidate {pruned} --tasks perplexity:math --frontier {src}/model.safetensors",
     "a chart is written as png, svg, pdf"),
    ("compare-frontier-inside-the-base", "compare --base {src} --candidate {pruned} --tasks perplexity:math --frontier {src}/f.png",
     "is the source model or inside it"),
    ("compare-plot-into-a-candidate",
     "compare --base {src} --candidate {pruned} --tasks perplexity:math --plot {pruned}/expert_usage.png --overwrite",
     "is the source model or inside it"),
    ("compare-plot-over-a-users-file", "compare --base {src} --candidate {pruned} --tasks perplexity:math --plot {root}/notes.png",
     "exists: pass --overwrite"),
    ("compare-overwrite-a-users-file",
     "compare --base {src} --candidate {pruned} --tasks perplexity:math --plot {root}/notes.png --overwrite",
     "is not a chart written by moe-compress"),
    ("compare-two-charts-one-file",
     "compare --base {src} --candidate {pruned} --tasks perplexity:math --plot {root}/c.png --frontier {root}/c.png",
     "--plot and --frontier both name"),
    ("compare-frontier-of-another-base", "compare --base {mixtral} --candidate {pruned} --tasks perplexity:math --frontier {root}/f.png",
     "--frontier draws models derived from --base"),
]


def _argv(template: str, ws: dict) -> list[str]:
    import shlex

    paths = {key: str(value) for key, value in ws.items() if isinstance(value, Path)}
    return [part.format(**paths) for part in shlex.split(template)]


@pytest.mark.parametrize("case, template, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ws, case, template, phrase, capsys, monkeypatch):
    monkeypatch.chdir(ws["root"] / "user-dir")
    monkeypatch.setenv("HOME", str(ws["root"] / "home"))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    before = _snapshot(ws["root"])
    capsys.readouterr()
    status = main(_argv(template, ws))
    err = capsys.readouterr().err
    assert status == 2, (status, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert phrase in err, err
    assert _snapshot(ws["root"]) == before  # nothing written, removed or left beside any target


def test_a_second_writer_to_a_locked_target_fails_at_once(ws, capsys):
    """The lock as another running prune holds it: the second writer stops before any work."""
    target = ws["root"] / "locked"
    lock_path = ws["root"] / ".locked.lock"
    with open(lock_path, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("4242\n")
        holder.flush()
        before = _snapshot(ws["root"])
        capsys.readouterr()
        assert main(_argv("prune --model {src} --stats {stats} --keep 8 --quiet --out", ws) + [str(target)]) == 2
        err = capsys.readouterr().err
        assert "another moe-compress process (pid 4242) is writing" in err and err.count("\n") == 1
        assert _snapshot(ws["root"]) == before
    lock_path.unlink()


def test_the_user_directory_survives_out_dot(ws):
    """The reported data loss: `--out . --overwrite` in a directory with the user's files."""
    assert (ws["root"] / "user-dir" / "notes.txt").read_text() == "do not delete\n"
    assert (ws["root"] / "home" / "diary.txt").read_text() == "private\n"


def test_sources_are_byte_for_byte_unchanged(ws):
    assert {name: _tree_hash(ws[name]) for name in ws["hashes"]} == ws["hashes"]


def test_the_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    commands = {template.split()[0] for _, template, _ in CASES}
    assert {"info", "profile", "stats", "prune", "convert", "distill", "eval", "compare", "gate", "analyze", "push",
            "train-demo"} <= commands
