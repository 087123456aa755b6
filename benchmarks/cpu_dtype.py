"""bf16 against fp32 compute on this CPU: why `--dtype auto` means float32 on the CPU.

Measured in one run: (1) held-out perplexity of the demo model on the built-in math text, model
loaded in each dtype, same windows; (2) one projection of gpt-oss-20b's expert shape
(2880 → 5760) at 128 and 4,096 rows. Prints seconds for each dtype and the ratio bf16 / fp32
(above 1: bf16 is slower), plus the perplexities, which must agree.

CPUs without native bf16 arithmetic (no AVX512-BF16 or AMX) convert every element and run bf16
matmuls many times slower than fp32; CPUs with it can be faster in bf16. fp32 is the safe default;
`--dtype bfloat16` is there for the second kind.

    python benchmarks/cpu_dtype.py
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from compress.data.corpus import load_texts
from compress.evals.perplexity import heldout_perplexity
from compress.model_loading import load_model, load_tokenizer
from compress.resolve import demo_model_path


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _bf16_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def time_perplexity(dtype: str, windows: int) -> tuple[float, float]:
    path = demo_model_path()
    model, tokenizer = load_model(path, dtype=dtype, device="cpu"), load_tokenizer(path)
    texts = load_texts("math", "heldout")
    heldout_perplexity(model, tokenizer, texts, 512, 1)  # warm-up
    start = time.perf_counter()
    perplexity = heldout_perplexity(model, tokenizer, texts, 512, windows)
    return time.perf_counter() - start, perplexity


def time_projection(dtype: torch.dtype, rows: int, repeats: int = 3) -> float:
    x, w = torch.randn(rows, 2880, dtype=dtype), torch.randn(2880, 5760, dtype=dtype)
    x @ w
    start = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=64, help="perplexity windows of 512 tokens (default: 64)")
    args = parser.parse_args()
    print(f"CPU: {_cpu_name()} ({torch.get_num_threads()} threads); native bf16: {_bf16_flags()}; torch {torch.__version__}")
    fp32, ppl32 = time_perplexity("float32", args.windows)
    bf16, ppl16 = time_perplexity("bfloat16", args.windows)
    print(f"demo perplexity, {args.windows} x 512 tokens: fp32 {fp32:.2f} s (ppl {ppl32:.4f}), "
          f"bf16 {bf16:.2f} s (ppl {ppl16:.4f}); bf16 / fp32 = {bf16 / fp32:.2f}")
    for rows in (128, 4096):
        a, b = time_projection(torch.float32, rows), time_projection(torch.bfloat16, rows)
        print(f"gpt-oss expert projection, {rows} rows: fp32 {a * 1e3:.1f} ms, bf16 {b * 1e3:.1f} ms; bf16 / fp32 = {b / a:.2f}")


if __name__ == "__main__":
    main()
