"""The fused MoE kernels against transformers' experts implementations: bf16 correctness and speed,
with TFLOP/s and the fraction of the HBM roofline, on a GPU.

Implementations, on the same inputs in one run: ours (``compress_triton``), transformers'
``grouped_mm`` (its default), ``batched_mm`` and ``eager``. Each output is compared with the eager
forward of the same weights in fp32 (relative error ‖out − ref‖ / ‖ref‖); ours must stay within
``max(1e-2, 1.5 × grouped_mm's error)`` in bf16 and be finite, on every shape and token count, or
the script exits 1. Weights are N(0, 0.02), biases too (never zeros: they hide unwritten outputs).

Timing: CUDA events around each call, median of ``--repeats`` after warm-up ("launch"), and the
same calls replayed from a CUDA graph ("graph", how vLLM serves decode; eager cannot be captured).
Each measurement cycles through ``ROTATIONS`` different inputs and routings, so that a small
problem does not sit in the 60 MB L2 between calls. Ceilings are measured in the same run: a
device-to-device copy (bytes read + written per second) and an 8192³ bf16 matrix product.
  TFLOP/s = 6·T·k·H·I / time;  HBM floor = (bytes of the distinct experts a call touches +
  activations in and out) / copy bandwidth;  HBM % = HBM floor / time;  roofline % =
  max(HBM floor, FLOPs / matmul rate) / time.

Shapes: the experts of gpt-oss-20b (H = I = 2880, E = 32, top-4, interleaved clamped SwiGLU with
biases), the same pruned to 16 experts, gpt-oss-120b (E = 128), Mixtral-8x7B (H = 4096, I = 14336,
E = 8, top-2) and Qwen3-30B-A3B (H = 2048, I = 768, E = 128, top-8), at T = 1, 8, 64, 512, 4096.
For the gpt-oss shapes ours also runs on MXFP4 weights (the same weights quantised as the
checkpoints store them, decoded in the kernel), checked against fp32 eager on the dequantised
weights, with its HBM floor counted in MXFP4 bytes (4.25 bits a weight).

    python benchmarks/moe_kernel.py [--repeats 50] [--json PATH]              (a CUDA GPU)
    TRITON_INTERPRET=1 python benchmarks/moe_kernel.py --tiny [--json PATH]   (CPU dry run: tiny
        shapes of the same layouts in fp32, Triton's interpreter; its times mean nothing)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

TOKENS = (1, 8, 64, 512, 4096)
TINY_TOKENS = (1, 8, 33)
ROTATIONS = 4  # different inputs per measurement (2 in a dry run, where each call takes a second)
IMPLEMENTATIONS = ("compress_triton", "grouped_mm", "batched_mm", "eager")
MXFP4 = "compress_triton_mxfp4"  # ours on MXFP4 weights (gpt-oss shapes)
BATCHED_MM_LIMIT_BYTES = 16 * 2**30  # batched_mm gathers every pair's expert weights; larger would not fit
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # "gpt_oss" | "mixtral" | "qwen3_moe"
    hidden: int
    intermediate: int
    experts: int
    top_k: int


SHAPES = (
    Shape("gpt-oss-20b", "gpt_oss", 2880, 2880, 32, 4),
    Shape("gpt-oss-20b-E16", "gpt_oss", 2880, 2880, 16, 4),
    Shape("gpt-oss-120b", "gpt_oss", 2880, 2880, 128, 4),
    Shape("Mixtral-8x7B", "mixtral", 4096, 14336, 8, 2),
    Shape("Qwen3-30B-A3B", "qwen3_moe", 2048, 768, 128, 8),
)
TINY_SHAPES = (
    Shape("gpt-oss-tiny", "gpt_oss", 64, 96, 8, 4),
    Shape("Mixtral-tiny", "mixtral", 64, 80, 4, 2),
    Shape("Qwen3-tiny", "qwen3_moe", 48, 32, 16, 8),
)


def shapes_named(names: list[str] | None, tiny: bool) -> list[Shape]:
    table = {shape.name: shape for shape in (TINY_SHAPES if tiny else SHAPES)}
    unknown = [name for name in names or () if name not in table]
    if unknown:
        raise SystemExit(f"unknown shape(s) {', '.join(unknown)}: choose from {', '.join(table)}")
    return [table[name] for name in names] if names else list(table.values())


def experts_module(shape: Shape, device: torch.device, seed: int = 0):
    """The family's own transformers experts module at this shape in fp32, N(0, 0.02) weights and
    biases, built directly on `device` (a 120b layer never passes through host memory)."""
    import transformers
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    if shape.family == "gpt_oss":
        config = transformers.GptOssConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                           num_local_experts=shape.experts, num_experts_per_tok=shape.top_k)
        cls = GptOssExperts
    elif shape.family == "mixtral":
        config = transformers.MixtralConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                            num_local_experts=shape.experts, num_experts_per_tok=shape.top_k)
        cls = MixtralExperts
    else:
        config = transformers.Qwen3MoeConfig(hidden_size=shape.hidden, moe_intermediate_size=shape.intermediate,
                                             num_experts=shape.experts, num_experts_per_tok=shape.top_k)
        cls = Qwen3MoeExperts
    config._experts_implementation = "eager"  # calling the module runs eager; the others are called by name
    with torch.device(device):
        module = cls(config)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return module.requires_grad_(False)


def routed_inputs(shape: Shape, tokens: int, device, dtype, seed: int):
    """Hidden states [T, H] N(0, 1), distinct top-k experts per token, softmax routing weights."""
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.randn(tokens, shape.hidden, device=device, generator=generator).to(dtype)
    index = torch.rand(tokens, shape.experts, device=device, generator=generator).argsort(dim=1)[:, : shape.top_k]
    weights = torch.softmax(torch.randn(tokens, shape.top_k, device=device, generator=generator), dim=-1).to(dtype)
    return x, index, weights


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.double() - reference.double()).norm() / reference.double().norm().clamp(min=1e-30)).item()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run, repeats: int, device: torch.device) -> float:
    """Median time of `run()` in ms: CUDA events on a GPU, the host clock (after a sync) elsewhere."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            run()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def time_calls(calls: list, repeats: int, device: torch.device, graph: bool) -> dict:
    """{"launch": ms per call, "graph": ms per call or None}: `calls` are zero-argument functions
    (one per rotation), timed in turn; the graph holds them all and is timed per replay."""
    for call in calls:  # warm-up: compilation, autotuning caches, handles
        call()
    _synchronize(device)
    rotation = itertools.cycle(calls)
    launch = _median_ms(lambda: next(rotation)(), repeats, device)
    result = {"launch": launch, "graph": None}
    if graph and device.type == "cuda":
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
                for call in calls:
                    call()
            torch.cuda.current_stream(device).wait_stream(stream)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                for call in calls:
                    call()
            cuda_graph.replay()
            result["graph"] = _median_ms(cuda_graph.replay, max(5, repeats // len(calls)), device) / len(calls)
        except Exception as error:  # an implementation that synchronises with the host cannot be captured
            torch.cuda.synchronize(device)
            result["graph_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return result


def measure_ceilings(device: torch.device, tiny: bool) -> dict:
    """Copy bandwidth (bytes read + written per s) and the dense matrix rate, measured here."""
    size = (8 << 20) if tiny else (1 << 30)
    a = torch.randn(size // 4, device=device)
    b = torch.empty_like(a)
    copy_ms = time_calls([lambda: b.copy_(a)], 10 if tiny else 20, device, graph=False)["launch"]
    n = 256 if tiny else 8192
    dtype = torch.float32 if tiny else torch.bfloat16
    m1, m2 = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    mm_ms = time_calls([lambda: m1 @ m2], 5 if tiny else 10, device, graph=False)["launch"]
    return {"copy_bytes_per_s": 2 * size / (copy_ms / 1e3), "matmul_flops": 2 * n**3 / (mm_ms / 1e3),
            "matmul_dtype": str(dtype).removeprefix("torch.")}


def expert_bytes(module) -> int:
    """Bytes of one expert's weights and biases."""
    return sum(p[0].numel() * p.element_size() for p in module.parameters())


def mxfp4_experts(reference_module) -> tuple[dict, object]:
    """The gpt-oss experts' weights quantised to MXFP4 in the checkpoints' orientation (one expert at
    a time, so a 120b layer needs no large temporaries), and an fp32 copy of the module holding
    their dequantised values (the MXFP4 path's reference)."""
    from compress.checkpoint.mxfp4 import dequantize, quantize

    packed, dequantised = {}, copy.deepcopy(reference_module)
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(reference_module, name)  # [E, K, N]; the checkpoint holds [E, N, K]
            pieces = [quantize(weight[e].T) for e in range(weight.shape[0])]
            blocks, scales = torch.stack([b for b, _ in pieces]), torch.stack([s for _, s in pieces])
            packed[name] = (blocks, scales)
            for e in range(weight.shape[0]):
                getattr(dequantised, name)[e].copy_(dequantize(blocks[e], scales[e], torch.float32).T)
    return packed, dequantised


def bench_shape(shape: Shape, tokens_list, device, dtype, repeats: int, ceilings: dict, rotations: int) -> list[dict]:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    from compress.kernels.fused_moe import GPT_OSS, fused_experts

    reference_module = experts_module(shape, device)
    module = copy.deepcopy(reference_module).to(dtype)  # the same weights, rounded to `dtype`
    per_expert = expert_bytes(module)
    mxfp4 = None
    if shape.family == "gpt_oss":
        packed, mxfp4_reference = mxfp4_experts(reference_module)
        (gate_up_blocks, gate_up_scales), (down_blocks, down_scales) = packed["gate_up_proj"], packed["down_proj"]
        biases = (module.gate_up_proj_bias, module.down_proj_bias)
        mxfp4_per_expert = sum(t[0].numel() for t in (gate_up_blocks, gate_up_scales, down_blocks, down_scales)) + sum(
            b[0].numel() * b.element_size() for b in biases)

        def mxfp4(x, index, weights):
            return fused_experts(x, index, weights, gate_up_blocks, down_blocks, *biases, GPT_OSS,
                                 gate_up_scales=gate_up_scales, down_scales=down_scales)
    rows = []
    for tokens in tokens_list:
        inputs = [routed_inputs(shape, tokens, device, dtype, seed=1000 * tokens + r) for r in range(rotations)]
        x0, index0, weights0 = inputs[0]
        with torch.no_grad():
            reference = reference_module(x0.float(), index0, weights0.float())
        flops = 6 * tokens * shape.top_k * shape.hidden * shape.intermediate
        touched = statistics.mean(int(torch.unique(index).numel()) for _, index, _ in inputs)
        moved = touched * per_expert + 2 * tokens * shape.hidden * x0.element_size()
        hbm_floor_ms = moved / ceilings["copy_bytes_per_s"] * 1e3
        compute_floor_ms = flops / ceilings["matmul_flops"] * 1e3
        row = {"shape": shape.name, "tokens": tokens, "experts": shape.experts, "top_k": shape.top_k,
               "hidden": shape.hidden, "intermediate": shape.intermediate, "dtype": str(dtype).removeprefix("torch."),
               "flops": flops, "experts_touched": touched, "hbm_bytes": moved,
               "hbm_floor_ms": hbm_floor_ms, "compute_floor_ms": compute_floor_ms, "results": {}}
        for name in IMPLEMENTATIONS:
            if name == "batched_mm" and tokens * shape.top_k * per_expert > BATCHED_MM_LIMIT_BYTES:
                row["results"][name] = {"skipped": f"gathers {tokens * shape.top_k * per_expert / 2**30:.0f} GiB of weights"}
                continue
            forward = module if name == "eager" else (lambda *a, f=ALL_EXPERTS_FUNCTIONS[name], m=module: f(m, *a))
            with torch.no_grad():
                error = relative_error(forward(x0, index0, weights0).float(), reference)
                timing = time_calls([lambda i=i: forward(*i) for i in inputs], repeats, device, graph=name != "eager")
            best = timing["graph"] or timing["launch"]
            row["results"][name] = {**timing, "error": error, "tflops": flops / (best / 1e3) / 1e12,
                                    "hbm_fraction": hbm_floor_ms / best,
                                    "roofline_fraction": max(hbm_floor_ms, compute_floor_ms) / best}
        if mxfp4 is not None:
            with torch.no_grad():
                error = relative_error(mxfp4(x0, index0, weights0).float(), mxfp4_reference(x0.float(), index0, weights0.float()))
                timing = time_calls([lambda i=i, f=mxfp4: f(*i) for i in inputs], repeats, device, graph=True)
            best = timing["graph"] or timing["launch"]
            floor_ms = (touched * mxfp4_per_expert + 2 * tokens * shape.hidden * x0.element_size()) / ceilings["copy_bytes_per_s"] * 1e3
            row["results"][MXFP4] = {**timing, "error": error, "tflops": flops / (best / 1e3) / 1e12, "hbm_floor_ms": floor_ms,
                                     "hbm_fraction": floor_ms / best}
        ours, grouped = row["results"]["compress_triton"], row["results"]["grouped_mm"]
        row["tolerance"] = max(TOLERANCE[dtype], 1.5 * grouped["error"])
        row["correct"] = all(row["results"][name]["error"] <= row["tolerance"] for name in ("compress_triton", MXFP4)
                             if name in row["results"])
        for mode in ("launch", "graph"):
            if ours.get(mode) and grouped.get(mode):
                row[f"speedup_vs_grouped_mm_{mode}"] = grouped[mode] / ours[mode]
        rows.append(row)
        print(_format_row(row), flush=True)
    del module, reference_module, mxfp4
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


HEADER = ("| shape | T | ours ms | grouped_mm ms | batched_mm ms | eager ms | × grouped_mm | ours TFLOP/s | HBM % | "
          "roofline % | error ours / grouped_mm | ours MXFP4 ms (HBM %, error) |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _ms(result: dict) -> str:
    if "skipped" in result:
        return "—"
    best = result["graph"] or result["launch"]
    return f"{best:.4f}" + ("" if result["graph"] else " (L)")


def _speedup(row: dict) -> float:
    """grouped_mm's time over ours: graph replays where both were captured, else launched calls."""
    return row.get("speedup_vs_grouped_mm_graph") or row.get("speedup_vs_grouped_mm_launch")


def _format_row(row: dict) -> str:
    r = row["results"]
    ours = r["compress_triton"]
    speedup = _speedup(row)
    flag = "" if row["correct"] else " WRONG"
    mxfp4 = r.get(MXFP4)
    mxfp4 = f"{_ms(mxfp4)} ({mxfp4['hbm_fraction']:.0%}, {mxfp4['error']:.1e})" if mxfp4 else "—"
    return (f"| {row['shape']} | {row['tokens']} | {_ms(ours)} | {_ms(r['grouped_mm'])} | {_ms(r['batched_mm'])} | "
            f"{_ms(r['eager'])} | {speedup:.2f} | {ours['tflops']:.1f} | {ours['hbm_fraction']:.0%} | "
            f"{ours['roofline_fraction']:.0%} | {ours['error']:.1e} / {r['grouped_mm']['error']:.1e} | {mxfp4}{flag} |")


def goals(rows: list[dict], dtype: torch.dtype) -> dict:
    """The issue's targets, each with the rows it covers, met or not (graph timings where captured)."""
    small = [row for row in rows if row["tokens"] <= 64]
    large = [row for row in rows if row["tokens"] >= 512]
    decode = [row for row in rows if row["tokens"] <= 8]
    out = {
        "correct_on_every_shape": all(row["correct"] for row in rows),
        "at_least_1.3x_grouped_mm_at_T<=64": min((_speedup(row) for row in small), default=None),
        "at_least_1.0x_grouped_mm_at_T>=512": min((_speedup(row) for row in large), default=None),
        "at_least_80%_hbm_at_T=1..8": min((row["results"]["compress_triton"]["hbm_fraction"] for row in decode), default=None),
        "stretch_mxfp4_within_2x_of_its_hbm_floor_at_T=1": min(
            (row["results"][MXFP4]["hbm_fraction"] for row in rows if row["tokens"] == 1 and MXFP4 in row["results"]), default=None),
    }
    met = {
        "correct_on_every_shape": out["correct_on_every_shape"],
        "at_least_1.3x_grouped_mm_at_T<=64": (out["at_least_1.3x_grouped_mm_at_T<=64"] or 0) >= 1.3,
        "at_least_1.0x_grouped_mm_at_T>=512": (out["at_least_1.0x_grouped_mm_at_T>=512"] or 0) >= 1.0,
        "at_least_80%_hbm_at_T=1..8": dtype == torch.bfloat16 and (out["at_least_80%_hbm_at_T=1..8"] or 0) >= 0.8,
        "stretch_mxfp4_within_2x_of_its_hbm_floor_at_T=1": (out["stretch_mxfp4_within_2x_of_its_hbm_floor_at_T=1"] or 0) >= 0.5,
    }
    return {"worst": out, "met": met}


def environment(device: torch.device) -> dict:
    import transformers
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, multiprocessors=properties.multi_processor_count,
                    memory_gib=round(properties.total_memory / 2**30, 1))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--shape", action="append", help="only these shapes (repeatable; default: all)")
    parser.add_argument("--tokens", type=lambda s: [int(t) for t in s.split(",")], help="token counts, e.g. 1,8,64")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny shapes, fp32, Triton's interpreter")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("not measured: no CUDA device is visible (this benchmark runs on a GPU; --tiny dry-runs it on CPU)")
        return 0
    import compress

    compress.register()  # the compress_triton experts implementation
    info = environment(device)
    ceilings = measure_ceilings(device, args.tiny)
    print(f"{info.get('gpu', 'CPU (interpreter dry run)')}, torch {info['torch']}, triton {info['triton']}, "
          f"transformers {info['transformers']}, {info['device']} {str(dtype).removeprefix('torch.')}; median of {args.repeats}")
    print(f"ceilings measured here: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"{ceilings['matmul_dtype']} matmul {ceilings['matmul_flops'] / 1e12:.1f} TFLOP/s; times: graph replay, (L) = launched")
    print(HEADER, flush=True)
    rows = []
    for shape in shapes_named(args.shape, args.tiny):
        rows += bench_shape(shape, args.tokens or (TINY_TOKENS if args.tiny else TOKENS), device, dtype, args.repeats, ceilings,
                            rotations=2 if args.tiny else ROTATIONS)
        summary = goals(rows, dtype)
        if args.json:  # after every shape, so that a run stopped at its time limit keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"environment": info, "ceilings": ceilings, "rows": rows, "goals": summary},
                                            indent=1) + "\n")
    for goal, met in summary["met"].items():
        worst = summary["worst"][goal]
        worst = f"{worst:.2f}" if isinstance(worst, float) else worst
        print(f"goal {goal}: {'met' if met else 'NOT met'} (worst {worst})")
    wrong = [f"{row['shape']} T={row['tokens']}" for row in rows if not row["correct"]]
    if wrong:
        print(f"WRONG: the kernel's output is off on {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
