"""`compress info`: the right numbers for every family, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GptOssConfig, LlamaConfig, PhimoeConfig

from compress.cli import main
from compress.families import get_family
from compress.model_info import count_parameters, meta_model
from conftest import FAMILIES, MOE_LAYERS, SAVED_LAYOUT, SHARED_EXPERTS, tiny_config


@pytest.mark.parametrize("family_name", FAMILIES)
def test_info_reports_the_loaded_models_numbers(family_name, tiny_checkpoints, capsys):
    model, directory = tiny_checkpoints[family_name]
    assert main(["info", str(directory), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    family = get_family(family_name)
    loaded = AutoModelForCausalLM.from_pretrained(directory)
    moe_layers = family.moe_layer_indices(loaded)
    assert info["family"] == family_name
    assert info["num_layers"] == model.config.num_hidden_layers
    assert info["moe_layers"] == moe_layers == MOE_LAYERS[family_name]
    assert info["experts_per_layer"] == {str(layer): 6 for layer in moe_layers}
    assert info["top_k"] == 2
    assert info["shared_experts_per_layer"] == SHARED_EXPERTS[family_name]
    assert info["key_layout"] == SAVED_LAYOUT[family_name]
    assert info["mxfp4"] is False and info["shards"] > 1
    params = info["parameters"]
    # Independent count on the real loaded model: all parameters, and experts by module walk.
    assert params["total"] == sum(p.numel() for p in loaded.parameters())
    routed = sum(p.numel() for n, p in loaded.named_parameters() if ".experts." in n and "shared" not in n)
    assert params["routed_experts"] == routed
    assert params["active"] == params["total"] - routed + routed * 2 // 6
    embed = loaded.get_input_embeddings().weight.numel()
    tied = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight  # then the embedding is the output layer too
    assert params["active_excluding_embeddings"] == params["active"] - (0 if tied else embed)
    if family_name == "qwen2_moe":
        shared = sum(p.numel() for n, p in loaded.named_parameters() if ".shared_expert" in n)
        assert params["shared_experts"] == shared > 0


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "train-demo" in out and "routing statistics -> plan" in out


def test_info_human_output(tiny_checkpoints, capsys):
    assert main(["info", str(tiny_checkpoints["deepseek_v3"][1])]) == 0
    out = capsys.readouterr().out
    assert "(deepseek_v3, DeepseekV3ForCausalLM)" in out
    assert "MoE layers: 1-2 (2)" in out
    assert "6 per MoE layer, top-2 per token" in out
    assert "expert keys: per_expert; MXFP4: no" in out


def test_real_gpt_oss_parameter_counts_on_the_meta_device():
    """gpt-oss-20b's published config: 20.9B total; OpenAI's "3.6B active" excludes the input embeddings."""
    config = GptOssConfig(num_hidden_layers=24, num_local_experts=32, vocab_size=201088, hidden_size=2880,
                          intermediate_size=2880, head_dim=64, num_attention_heads=64, num_key_value_heads=8,
                          num_experts_per_tok=4)
    counts = count_parameters(meta_model(config), get_family("gpt_oss"), config)
    assert round(counts.total / 1e9, 3) == 20.915
    assert round(counts.routed_experts / 1e9, 3) == 19.117
    assert round(counts.active_excluding_embeddings / 1e9, 2) == 3.61
    assert round(counts.active / 1e9, 2) == 4.19


def test_published_active_parameter_figures_on_the_meta_device():
    """gpt-oss-120b (OpenAI: 117B total, 5.1B active) and DeepSeek-V3 (671B total, 37B active)."""
    from transformers import DeepseekV3Config

    config = GptOssConfig(num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4)
    counts = count_parameters(meta_model(config), get_family("gpt_oss"), config)
    assert round(counts.total / 1e9, 3) == 116.829
    assert round(counts.active_excluding_embeddings / 1e9, 1) == 5.1
    config = DeepseekV3Config()  # the defaults are DeepSeek-V3's published sizes
    counts = count_parameters(meta_model(config), get_family("deepseek_v3"), config)
    assert round(counts.total / 1e9) == 671
    assert round(counts.active / 1e9) == 38 and round(counts.active_excluding_embeddings / 1e9) == 37


def _cli(*args, cwd=None):
    """Run the installed CLI in a fresh process, as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, env=env, cwd=cwd)


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_inputs_give_one_line_errors_and_exit_2(tmp_path, tiny_checkpoints):
    dense = tmp_path / "dense"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(dense)
    unsupported = tmp_path / "phimoe"
    AutoModelForCausalLM.from_config(PhimoeConfig(vocab_size=32, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                                                  num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                                  num_experts_per_tok=2)).save_pretrained(unsupported)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    source = tiny_checkpoints["olmoe"][1]
    last_shard = sorted(source.glob("*.safetensors"))[-1]
    for path in source.iterdir():
        data = path.read_bytes()
        (truncated / path.name).write_bytes(data[:-100] if path == last_shard else data)  # an interrupted download
    cases = [
        (tmp_path / "does-not-exist", ["no such directory"]),
        (dense, ["dense model", "llama"]),
        (unsupported, ["'phimoe' is not supported", "sparsemixer routing"]),
        (truncated, ["truncated", "re-download"]),
        ("someone/not-on-this-machine", ["Hub could not be reached"]),
    ]
    for model, fragments in cases:
        _assert_one_line_error(_cli("info", str(model)), *fragments)


def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_checkpoints):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_checkpoints["mixtral"][1] / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, directory / "pytorch_model.bin")
    _assert_one_line_error(_cli("info", str(directory)), "safetensors only")


def test_config_that_disagrees_with_the_weights(tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config("mixtral"))
    model.config.num_local_experts = 8  # the weights hold 6
    model.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    _assert_one_line_error(_cli("info", str(tmp_path)), "says 8 experts", "hold 6")
