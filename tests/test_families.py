"""Family adapters against transformers' own models: routing, module lookup, on-disk keys."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from compress.checkpoint.files import read_config
from compress.checkpoint.reader import CheckpointReader
from compress.errors import UnsupportedModelError
from compress.families import all_families, family_for_config, get_family
from conftest import FAMILIES, MOE_LAYERS, SAVED_LAYOUT, SHARED_EXPERTS, build_tiny_model, tiny_config


def test_every_supported_model_type_is_in_the_test_matrix():
    assert {model_type for family in all_families().values() for model_type in family.model_types} == set(FAMILIES)


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_routing_function_equals_the_router_module(family_name, norm_topk_prob):
    """Our routing from raw logits reproduces the family's router forward exactly, as its MoE block
    calls it (MiniMax-M2's block hands its router the correction bias)."""
    model = build_tiny_model(family_name, norm_topk_prob=norm_topk_prob)
    family = family_for_config(model.config)
    torch.manual_seed(1)
    hidden = torch.randn(1, 37, model.config.hidden_size)
    for layer in family.moe_layer_indices(model):
        router, captured = family.router(model, layer), []
        handle = router.register_forward_hook(lambda module, args, output, captured=captured: captured.append(output))
        with torch.no_grad():
            family.decoder_layers(model)[layer].get_submodule(family.modules["moe"])(hidden)
        handle.remove()
        logits, expected_weights, expected_index = captured[0]
        weights, index = family.route(logits, model.config, family.router_buffers(model, layer))
        # DeepSeek-V3 returns its top-k unsorted: compare per token after sorting by expert id.
        order, expected_order = index.argsort(dim=-1), expected_index.argsort(dim=-1)
        assert torch.equal(index.gather(1, order), expected_index.gather(1, expected_order))
        assert weights.dtype == expected_weights.dtype
        torch.testing.assert_close(weights.gather(1, order), expected_weights.gather(1, expected_order), rtol=0, atol=0)


def test_routing_matches_output_router_logits_in_a_full_forward():
    """The logits transformers returns with output_router_logits route to what the layer used."""
    model = build_tiny_model("deepseek_v3")
    family = family_for_config(model.config)
    input_ids = torch.randint(3, 64, (2, 9))
    captured = {}
    layers = family.moe_layer_indices(model)
    hooks = [
        family.router(model, layer).register_forward_hook(lambda m, i, o, layer=layer: captured.__setitem__(layer, o[2]))
        for layer in layers
    ]
    out = model(input_ids=input_ids, output_router_logits=True)
    for hook in hooks:
        hook.remove()
    assert len(out.router_logits) == len(layers)
    for layer, logits in zip(layers, out.router_logits):
        _, index = family.route(logits, model.config, family.router_buffers(model, layer))
        assert torch.equal(index.sort(dim=-1).values, captured[layer].sort(dim=-1).values)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_moe_layers_and_config_fields(family_name):
    model = build_tiny_model(family_name)
    family = get_family(family_name)
    expected_layers = MOE_LAYERS[family_name]
    assert family.moe_layer_indices(model) == expected_layers
    assert family.num_experts(model.config) == 6
    assert family.num_experts(model.config.to_dict()) == 6
    assert family.top_k(model.config) == 2
    assert family.shared_expert_count(model.config) == SHARED_EXPERTS[family_name]
    for layer in expected_layers:
        for name, tensor in family.expert_tensors_of(family.experts(model, layer)).items():
            assert tensor.shape[family.expert_tensors[name]["expert_dim"]] == 6


@pytest.mark.parametrize("family_name", FAMILIES)
def test_expert_tensor_shapes_in_the_definitions_are_the_modules(family_name):
    """Each definition's ``shape`` of a fused expert tensor (read by compensation and neuron
    alignment) is the module's, on a config whose intermediate sizes differ from the hidden size."""
    model = build_tiny_model(family_name, intermediate_size=48, **({"moe_intermediate_size": 24} if family_name != "gpt_oss" else {}))
    family = get_family(family_name)
    experts = family.experts(model, family.moe_layer_indices(model)[0])
    hidden = model.config.hidden_size
    down = experts.down_proj.shape
    intermediate = down[1] if down[2] == hidden else down[2]
    assert intermediate != hidden
    for name, spec in family.expert_tensors.items():
        if getattr(experts, name, None) is None:
            continue
        dims = [dim.strip() for dim in spec["shape"].split("]")[0].lstrip("[").split(",")]
        sizes = {"E": 6, "H": hidden, "I": intermediate, "2*I": 2 * intermediate}
        assert tuple(getattr(experts, name).shape) == tuple(sizes[dim] for dim in dims), (name, spec["shape"])


def test_qwen2_moe_sparse_step_makes_dense_layers():
    model = build_tiny_model("qwen2_moe", num_hidden_layers=4, decoder_sparse_step=2)
    assert get_family("qwen2_moe").moe_layer_indices(model) == [1, 3]


def test_rewrite_config_sets_every_alias_present():
    family = get_family("gpt_oss")
    raw = {"model_type": "gpt_oss", "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4}
    new = family.rewrite_config(raw, num_experts=8, top_k=3)
    assert new == {"model_type": "gpt_oss", "num_local_experts": 8, "num_experts_per_tok": 3, "experts_per_token": 3}
    assert raw["num_local_experts"] == 32  # the input is not modified
    qwen3 = get_family("qwen3_moe").rewrite_config({"num_local_experts": 128, "num_experts_per_tok": 8}, num_experts=64)
    assert qwen3 == {"num_local_experts": 64, "num_experts": 64, "num_experts_per_tok": 8}  # + the family's own name


@pytest.mark.parametrize("family_name", FAMILIES)
def test_expert_slices_read_lazily_equal_the_loaded_model(family_name, tiny_checkpoints):
    """save_pretrained's per-expert layout (gpt-oss: fused), read through our reader and adapter,
    equals the model transformers loads from the same directory."""
    _, directory = tiny_checkpoints[family_name]
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    family = family_for_config(read_config(directory))
    reader = CheckpointReader(directory)
    assert len(reader.files) > 1  # sharded, with an index
    expected_layout = SAVED_LAYOUT[family_name]
    for layer in family.moe_layer_indices(loaded):
        layout = family.detect_layout(reader, layer)
        assert layout.name == expected_layout
        assert family.count_experts_on_disk(reader, layout, [layer]) == {layer: 6}
        module = family.experts(loaded, layer)
        for name in family.expert_tensors:
            for selection in ([4, 1, 2], [0], list(range(6))):
                got = family.read_module_tensor(reader, layer, name, selection, layout)
                assert torch.equal(got, getattr(module, name)[selection]), (name, selection)
        owners = family.router_tensor_modules(loaded, layer)
        for name, spec in family.router_tensors.items():  # router rows are expert slices too
            key = layout.router_key(layer, name)
            expected = getattr(owners[name], name).index_select(spec["expert_dim"], torch.tensor([5, 0]))
            assert torch.equal(reader.read_experts(key, [5, 0], spec["expert_dim"]), expected)


@pytest.mark.parametrize("family_name", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_fused_on_disk_layout_is_read_too(family_name, tmp_path):
    """A checkpoint written with the module (fused) names loads in transformers and reads the same."""
    model = build_tiny_model(family_name)
    model.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    family = family_for_config(model.config)
    reader = CheckpointReader(tmp_path)
    for layer in family.moe_layer_indices(model):
        layout = family.detect_layout(reader, layer)
        assert layout.name == "fused"
        for name in family.expert_tensors:
            got = family.read_module_tensor(reader, layer, name, [5, 3], layout)
            assert torch.equal(got, getattr(family.experts(loaded, layer), name)[[5, 3]])


def test_classify_key_roles():
    mixtral, deepseek, gpt_oss = get_family("mixtral"), get_family("deepseek_v3"), get_family("gpt_oss")
    role = mixtral.classify_key("model.layers.3.block_sparse_moe.experts.7.w2.weight")
    assert (role.kind, role.layer, role.expert, role.suffix) == ("expert", 3, 7, "w2.weight")
    role = mixtral.classify_key("model.layers.3.mlp.experts.gate_up_proj")
    assert (role.kind, role.layer, role.expert_dim) == ("experts", 3, 0)
    assert mixtral.classify_key("model.layers.3.block_sparse_moe.gate.weight").kind == "router"
    assert mixtral.classify_key("model.layers.3.self_attn.q_proj.weight").kind == "other"
    # DeepSeek's FP8 checkpoints carry per-expert scale tensors: still one expert's tensor.
    role = deepseek.classify_key("model.layers.5.mlp.experts.12.gate_proj.weight_scale_inv")
    assert (role.kind, role.layer, role.expert) == ("expert", 5, 12)
    assert deepseek.classify_key("model.layers.5.mlp.gate.e_score_correction_bias").kind == "router"
    assert deepseek.classify_key("model.layers.5.mlp.shared_experts.down_proj.weight").kind == "other"
    assert get_family("qwen2_moe").classify_key("model.layers.0.mlp.shared_expert_gate.weight").kind == "other"
    role = gpt_oss.classify_key("model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert (role.kind, role.expert_dim, role.suffix) == ("experts", 0, "gate_up_proj_blocks")
    assert gpt_oss.classify_key("model.layers.0.mlp.router.bias").kind == "router"
    # EXAONE-MoE stores its router's correction bias beside the router (transformers moves it at load).
    role = get_family("exaone_moe").classify_key("model.layers.2.mlp.e_score_correction_bias")
    assert (role.kind, role.layer, role.suffix) == ("router", 2, "e_score_correction_bias")


def _routes_to_experts(model_type: str) -> bool:
    """Whether transformers' config class of `model_type` has a field counting routed experts, at its
    top or in a nested config (a multimodal model's text_config, DBRX's ffn_config, an omni model's
    thinker_config.text_config): read from transformers itself, not from our family definitions."""
    try:
        fields = AutoConfig.for_model(model_type).to_dict()
    except Exception:  # a config class that needs arguments to build: not a MoE language model here
        return False

    def counts_experts(config: dict, depth: int) -> bool:
        if any(name in config for name in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
                                           "num_experts_per_tok")):
            return True
        return depth > 0 and any(counts_experts(value, depth - 1) for value in config.values() if isinstance(value, dict))

    return counts_experts(fields, 2)


def test_every_model_type_with_routed_experts_is_supported_or_refused_with_a_reason():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from compress.families.unsupported import UNSUPPORTED

    supported = {model_type for family in all_families().values() for model_type in family.model_types}
    routed = {model_type for model_type in CONFIG_MAPPING_NAMES if _routes_to_experts(model_type)}
    assert not supported & set(UNSUPPORTED), "a model type is both supported and refused"
    assert set(UNSUPPORTED) <= set(CONFIG_MAPPING_NAMES), "refusals of model types transformers no longer has"
    new = sorted(routed - supported - set(UNSUPPORTED))
    assert not new, (f"transformers {transformers.__version__} has MoE model types moe-compress neither supports nor refuses: "
                     f"{new}; add a family definition or a reason in compress/families/unsupported.py")
    assert supported <= routed


def test_info_says_in_one_line_why_a_model_type_is_refused(tmp_path, capsys):
    from compress.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phimoe", "num_local_experts": 16, "num_experts_per_tok": 2}))
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: architecture 'phimoe' is not supported: sparsemixer routing (the second expert chosen after masking " \
                  "the first) has no routing function yet", err


def test_the_readme_table_of_architectures_is_the_registry():
    """Regenerate after changing a definition or a refusal: MOE_COMPRESS_WRITE_README=1 python -m pytest -k readme_table."""
    import os
    from pathlib import Path

    from compress.families.table import markdown

    readme = Path(__file__).parent.parent / "README.md"
    text = readme.read_text()
    begin, end = "<!-- families:begin -->\n", "<!-- families:end -->"
    before, rest = text.split(begin)
    _, after = rest.split(end)
    if os.environ.get("MOE_COMPRESS_WRITE_README"):
        readme.write_text(before + begin + markdown() + end + after)
    assert rest.split(end)[0] == markdown()


def test_unsupported_and_dense_configs_are_named():
    with pytest.raises(UnsupportedModelError, match="dense model"):
        family_for_config({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(UnsupportedModelError, match="without a moe-compress adapter"):
        family_for_config({"model_type": "some_future_moe", "num_local_experts": 8})
    with pytest.raises(UnsupportedModelError, match="'llama4_text' is not supported: the router's score scales each expert's input"):
        family_for_config({"model_type": "llama4_text", "num_local_experts": 16})
    with pytest.raises(UnsupportedModelError, match="did you mean mixtral"):
        get_family("mixtrall")
    assert family_for_config(tiny_config("olmoe")).name == "olmoe"


# What engines that read config.json themselves look for (their model code, e.g. mlx-lm's ModelArgs
# and vLLM's deepseek_v2.py): the family's own count field, top-level rope_theta, DeepSeek's routing.
ENGINE_FIELDS = {"qwen3_moe": {"num_experts": 4}, "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}}


@pytest.mark.parametrize("family_name", FAMILIES)
def test_derived_configs_carry_the_fields_engines_read(family_name, tmp_path):
    tiny_config(family_name).save_pretrained(tmp_path)  # transformers 5 moves or drops these fields
    source, before = read_config(tmp_path), AutoConfig.from_pretrained(tmp_path)
    rewritten = get_family(family_name).rewrite_config(source, num_experts=4, top_k=2)
    rope = source["rope_parameters"]
    if "rope_theta" in rope:
        assert rewritten["rope_theta"] == rope["rope_theta"]
    else:  # one rope per layer type (sliding and full attention): no single value to repeat
        assert "rope_theta" not in rewritten
    for field, value in ENGINE_FIELDS.get(family_name, {}).items():
        assert rewritten[field] == value
    (tmp_path / "config.json").write_text(json.dumps(rewritten))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters == before.rope_parameters  # transformers reads it the same
    assert get_family(family_name).num_experts(loaded) == 4


def test_an_incomplete_family_definition_is_refused_in_one_line():
    import json
    from importlib import resources

    from compress.errors import UnsupportedModelError
    from compress.families.family import MoEFamily

    definition = json.loads(resources.files("compress.families").joinpath("definitions", "mixtral.json").read_text())
    assert MoEFamily.from_definition(definition).name == "mixtral"
    for change, message in ((lambda d: d.pop("routing"), "lacks routing"),
                            (lambda d: d["config"].pop("top_k"), "lacks config.top_k"),
                            (lambda d: d["routing"].update(function="coin_toss"), "names routing function 'coin_toss'"),
                            (lambda d: d.update(model_types=["not_a_model"]), "has no causal LM for any of its model types")):
        broken = json.loads(json.dumps(definition))
        change(broken)
        with pytest.raises(UnsupportedModelError, match=message) as refused:
            MoEFamily.from_definition(broken)
        assert "\n" not in str(refused.value)
    # A model type the installed transformers lacks (a newer one, under vLLM's older pin) is left out.
    assert MoEFamily.from_definition({**definition, "model_types": ["mixtral", "not_yet_released"]}).model_types == ("mixtral",)
