"""The fused MoE kernels against transformers' eager experts forward.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 before anything
imports Triton), in fp32 and
fp16 — the interpreter computes bf16 dots on raw bits, so bf16 is checked on a GPU only (a test
that runs in a fresh process and skips without CUDA). Tolerances: fp32 1e-5, fp16 2e-2 (relative
to the output's scale): the kernels accumulate in fp32 and apply the activation before rounding,
eager rounds after each projection.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from transformers import GptOssConfig, MixtralConfig  # noqa: E402
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralExperts  # noqa: E402

from compress.kernels import fused_moe  # noqa: E402  (conftest sets TRITON_INTERPRET=1 before any Triton import)
from compress.kernels.alignment import align_block_size  # noqa: E402
from compress.kernels.experts import kernel_layout  # noqa: E402
from conftest import build_tiny_model  # noqa: E402


@triton.jit
def _loop_probe(out_ptr, n):
    total = 0
    for _ in range(0, n, 1):
        total += 1
    tl.store(out_ptr, total)


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None. Triton 3.6 and older with NumPy
    2.4 and newer fail on a loop bound passed at run time (triton-lang/triton#9171), as the kernels'
    K loops are; compiled GPU kernels are not affected."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _loop_probe[(1,)](out, 3)
    except Exception as error:
        return f"Triton {triton.__version__}'s interpreter fails here ({str(error)[:120]}): upgrade Triton to run these tests"
    return None if out.item() == 3 else f"Triton {triton.__version__}'s interpreter computes a loop wrongly"


INTERPRETER_PROBLEM = _interpreter_problem()
interpreted = pytest.mark.skipif(INTERPRETER_PROBLEM is not None, reason=INTERPRETER_PROBLEM or "")
HIDDEN, INTERMEDIATE = 32, 48  # not multiples of the 16-wide tiles in every dimension: masks are exercised


def _experts(layout: str, num_experts: int, dtype: torch.dtype):
    common = dict(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=num_experts)
    module = GptOssExperts(GptOssConfig(**common)) if layout == "gpt_oss" else MixtralExperts(MixtralConfig(**common))
    generator = torch.Generator().manual_seed(num_experts)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    module.config._experts_implementation = "eager"
    return module.to(dtype)


def _routing(tokens: int, top_k: int, num_experts: int, dtype):
    generator = torch.Generator().manual_seed(tokens * 31 + top_k)
    index = torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(tokens)])
    weights = torch.softmax(torch.randn(tokens, top_k, generator=generator), dim=-1).to(dtype)
    return index, weights


CASES = [(1, 1, 8), (2, 2, 8), (7, 2, 5), (13, 4, 5), (33, 4, 8)]  # (tokens, k, experts): odd counts, empty experts


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["standard", "gpt_oss"])
@pytest.mark.parametrize("tokens,top_k,num_experts", CASES)
def test_kernel_equals_the_eager_experts_forward(layout, dtype, tokens, top_k, num_experts):
    experts = _experts(layout, num_experts, dtype)
    hidden = (torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens)) * 0.5).to(dtype)
    index, weights = _routing(tokens, top_k, num_experts, dtype)
    with torch.no_grad():
        expected = experts(hidden, index, weights).float()
        got = fused_moe.fused_experts(
            hidden, index, weights, experts.gate_up_proj, experts.down_proj,
            getattr(experts, "gate_up_proj_bias", None), getattr(experts, "down_proj_bias", None),
            kernel_layout(experts), alpha=getattr(experts, "alpha", 1.702), limit=getattr(experts, "limit", 7.0),
        ).float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    scale = expected.abs().max().clamp(min=1)
    assert (got - expected).abs().max() <= tolerance * scale


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens,top_k,num_experts", [(1, 1, 4), (7, 2, 5), (33, 4, 8)])
def test_mxfp4_weights_decoded_in_the_kernel_equal_eager_on_transformers_dequantised_weights(dtype, tokens, top_k, num_experts):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from compress.checkpoint.mxfp4 import quantize

    experts = GptOssExperts(GptOssConfig(hidden_size=64, intermediate_size=96, num_local_experts=num_experts))  # K % 32 == 0
    generator = torch.Generator().manual_seed(num_experts + tokens)
    with torch.no_grad():
        for parameter in experts.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        # The checkpoint's orientation: gate_up [E, 2I, H] (rows interleave gate and up), down [E, H, I].
        gate_up_blocks, gate_up_scales = quantize(experts.gate_up_proj.transpose(1, 2))
        down_blocks, down_scales = quantize(experts.down_proj.transpose(1, 2))
        experts.gate_up_proj.copy_(convert_moe_packed_tensors(gate_up_blocks, gate_up_scales, dtype=torch.float32))
        experts.down_proj.copy_(convert_moe_packed_tensors(down_blocks, down_scales, dtype=torch.float32))
    experts.config._experts_implementation = "eager"
    experts = experts.to(dtype)
    hidden = (torch.randn(tokens, 64, generator=generator) * 0.5).to(dtype)
    index, weights = _routing(tokens, top_k, num_experts, dtype)
    biases = (experts.gate_up_proj_bias, experts.down_proj_bias)
    with torch.no_grad():
        expected = experts(hidden, index, weights).float()
        got = fused_moe.fused_experts(hidden, index, weights, gate_up_blocks, down_blocks, *biases, fused_moe.GPT_OSS,
                                      gate_up_scales=gate_up_scales, down_scales=down_scales).float()
        dense = fused_moe.fused_experts(hidden, index, weights, experts.gate_up_proj, experts.down_proj, *biases,
                                        fused_moe.GPT_OSS).float()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got - expected).abs().max() <= tolerance * expected.abs().max().clamp(min=1)
    if dtype == torch.float32:  # decoding is exact: the same products as the kernel on dequantised weights
        assert torch.equal(got, dense)


def test_mxfp4_weights_in_another_layout_are_refused():
    experts = _experts("standard", 4, torch.float32)
    blocks = torch.zeros(4, 2 * INTERMEDIATE, HIDDEN // 32, 16, dtype=torch.uint8)
    index, weights = _routing(2, 1, 4, torch.float32)
    with pytest.raises(ValueError, match="gpt-oss layout"):
        fused_moe.fused_experts(torch.zeros(2, HIDDEN), index, weights, blocks, experts.down_proj, None, None, fused_moe.STANDARD,
                                gate_up_scales=blocks[..., 0], down_scales=blocks[..., 0])


def test_alignment_groups_pairs_by_expert_in_padded_blocks():
    index = torch.tensor([[2, 3, 4], [1, 2, 4], [1, 3, 4], [1, 2, 3]])  # vLLM's documented example
    alignment = align_block_size(index, num_experts=5, block_m=4)
    pairs, experts = alignment.sorted_pairs.tolist(), alignment.block_experts.tolist()
    assert pairs[:16] == [3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12]
    assert experts[:4] == [1, 2, 3, 4] and all(e == -1 for e in experts[4:])
    assert len(pairs) % 4 == 0 and len(pairs) >= 12 + 5 * 3


@interpreted
@pytest.mark.parametrize("family_name", ["gpt_oss", "mixtral"])
def test_whole_models_give_eager_logits_with_the_kernel(family_name, monkeypatch):
    import compress  # noqa: F401  (registers compress_triton)

    calls = []
    original = fused_moe.fused_experts
    monkeypatch.setattr(fused_moe, "fused_experts", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = build_tiny_model(family_name, num_local_experts=5)  # a pruned-like expert count
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.set_experts_implementation("eager")
        expected = model(input_ids=ids).logits
        model.set_experts_implementation("compress_triton")
        got = model(input_ids=ids).logits
    assert len(calls) == 2  # both MoE layers ran the kernels, not the fallback
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@interpreted
def test_team_routing_runs_through_the_kernel(tmp_path):
    from transformers import AutoModelForCausalLM

    import compress  # noqa: F401
    from compress.cli import main
    from compress.stats.profile import profile_windows

    model = build_tiny_model("gpt_oss")
    model.save_pretrained(tmp_path / "source")
    profile_windows(model, torch.randint(3, 64, (4, 16)), batch_size=4, model_name="tiny", domain="d", data="random",
            progress=False).save(tmp_path / "stats.safetensors")
    assert main(["convert", "tiered", "--model", str(tmp_path / "source"), "--stats", str(tmp_path / "stats.safetensors"),
                 "--tiers", "0-1:3", "--team-size", "2", "--team-top-k", "2", "--out", str(tmp_path / "tiered"), "--quiet"]) == 0
    tiered = AutoModelForCausalLM.from_pretrained(tmp_path / "tiered", dtype=torch.float32)
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tiered.set_experts_implementation("eager")
        expected = tiered(input_ids=ids).logits
        tiered.set_experts_implementation("compress_triton")
        torch.testing.assert_close(tiered(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


GPU_SCRIPT = """
import torch, compress
from transformers import MixtralConfig, GptOssConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
from compress.kernels.fused_moe import fused_experts
from compress.kernels.experts import kernel_layout
for cls, cfg in ((MixtralExperts, MixtralConfig), (GptOssExperts, GptOssConfig)):
    for tokens, k, e in ((1, 4, 32), (37, 4, 8), (512, 2, 16)):
        m = cls(cfg(hidden_size=256, intermediate_size=384, num_local_experts=e)).cuda()
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.05)
        m = m.to(torch.bfloat16)
        m.config._experts_implementation = "eager"
        x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
        idx = torch.stack([torch.randperm(e, device="cuda")[:k] for _ in range(tokens)])
        w = torch.softmax(torch.randn(tokens, k, device="cuda"), -1).to(torch.bfloat16)
        forward = lambda: fused_experts(x, idx, w, m.gate_up_proj, m.down_proj, getattr(m, "gate_up_proj_bias", None),
                                        getattr(m, "down_proj_bias", None), kernel_layout(m), getattr(m, "alpha", 1.702),
                                        getattr(m, "limit", 7.0))
        ref = m(x, idx, w).float()
        out = forward().float()
        err = ((out - ref).abs().max() / ref.abs().max().clamp(min=1)).item()
        assert err < 3e-2, (cls.__name__, tokens, k, e, err)
        # Captured in a CUDA graph (no host synchronisation) and replayed on new inputs copied into
        # the captured buffers, the kernels give what a direct call on those inputs gives.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward()
        x.copy_(torch.randn_like(x))
        idx.copy_(torch.stack([torch.randperm(e, device="cuda")[:k] for _ in range(tokens)]))
        w.copy_(torch.softmax(torch.randn(tokens, k, device="cuda"), -1).to(torch.bfloat16))
        graph.replay()
        assert torch.equal(captured, forward()), (cls.__name__, tokens, k, e, "graph replay")
        if cls is GptOssExperts:  # the same weights as MXFP4, decoded in the kernel, against eager on their values
            from transformers.integrations.mxfp4 import convert_moe_packed_tensors
            from compress.checkpoint.mxfp4 import quantize
            with torch.no_grad():
                gate_up = quantize(m.gate_up_proj.float().transpose(1, 2))
                down = quantize(m.down_proj.float().transpose(1, 2))
                m.gate_up_proj.copy_(convert_moe_packed_tensors(*gate_up, dtype=torch.bfloat16))
                m.down_proj.copy_(convert_moe_packed_tensors(*down, dtype=torch.bfloat16))
                ref = m(x, idx, w).float()
                out = fused_experts(x, idx, w, gate_up[0], down[0], m.gate_up_proj_bias, m.down_proj_bias, kernel_layout(m),
                                    gate_up_scales=gate_up[1], down_scales=down[1]).float()
            err = ((out - ref).abs().max() / ref.abs().max().clamp(min=1)).item()
            assert err < 3e-2, ("mxfp4", tokens, k, e, err)
print("ok")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_kernels_on_a_gpu(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    # Run outside the checkout: `python -c` puts its working directory first on sys.path, where the
    # source tree's `compress` (without `compress.kernels`) would shadow a non-editable install.
    result = subprocess.run([sys.executable, "-c", GPU_SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
