"""File size and time to render of `compress report`, for the demo and at gpt-oss-120b's size.

Two reports, each written by the command line (`python -m compress report`) and opened in Debian's
headless chromium (tests/browser.py), each load repeated and the median taken:

* demo: the demo profiled on math, code and general, a prune to 8 experts, and two prompts traced;
* gpt-oss-120b-shaped: 36 MoE layers × 128 experts, top-4, three domains of synthetic counts (the
  numbers are random; the shapes, and so the page's size and work, are the real model's), and a
  derived output keeping 64 experts per layer (its compress.json and statistics, no weights:
  the report reads nothing else).

Printed per report: the command's wall time, the file size, the browser's load time (`driver.get`,
to the load event) and the page's own render time (performance.now() when the last view is drawn),
and the 120b report's ratios to the demo's. `--screenshot PNG` also writes the demo report's first
screen, hovering one expert (the README's picture).

    python benchmarks/report_size.py [--repeats 5] [--screenshot docs/report.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import chromium, console_errors, missing  # noqa: E402

DOMAINS = ("math", "code", "general")


def compress(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compress", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def demo_inputs(root: Path) -> list[str]:
    for domain in DOMAINS:
        compress("profile", "--model", "demo", "--domain", domain, "--samples", "64", "--seq-len", "256", "--quiet",
                 "--out", str(root / f"{domain}.moe-stats"))
    compress("prune", "--model", "demo", "--stats", str(root / "math.moe-stats"), "--keep", "8", "--criterion", "reap", "--quiet",
             "--out", str(root / "demo-math-keep8"))
    return [*(str(root / f"{d}.moe-stats") for d in DOMAINS), str(root / "demo-math-keep8"),
            "--model", "demo", "--prompt", "Q: What is 12 + 7?\nA: 19", "--prompt", "def add(a, b):\n    return a + b"]


def synthetic_120b_inputs(root: Path, layers: int = 36, experts: int = 128, top_k: int = 4, tokens: int = 1_000_000) -> list[str]:
    """Three domains' statistics with gpt-oss-120b's shapes, and a keep-64 derived output's records."""
    from compress.stats import RoutingStats
    from compress.stats.routing_stats import empty_layer_stats, metadata_for_sources, to_fixed_point

    generator = torch.Generator().manual_seed(0)
    base = {"fingerprint": "sha256:synthetic-gpt-oss-120b", "model": "openai/gpt-oss-120b (synthetic counts)", "family": "gpt_oss",
            "top_k": top_k}
    for domain in DOMAINS:
        stats = {}
        for layer in range(layers):
            s = empty_layer_stats(experts, experts if layer else None)
            popularity = torch.distributions.Gamma(torch.full((experts,), 0.5), 1.0).sample() + 1e-3
            selections = (popularity / popularity.sum() * tokens * top_k).round().long()
            s["tokens"] += tokens
            s["selections"] += selections
            s["top1"] += selections // top_k
            s["gate_mass"] += to_fixed_point(selections * (0.2 + 0.15 * torch.rand(experts, generator=generator)))
            s["reap_sum"] += to_fixed_point(s["gate_mass"] * (1 + torch.rand(experts, generator=generator)))
            s["entropy_sum"] += to_fixed_point(torch.tensor(tokens * 3.2))
            stats[layer] = s
        source = {"domain": domain, "data": "synthetic counts", "samples": tokens // 512, "seq_len": 512, "tokens": tokens}
        RoutingStats(stats, metadata_for_sources(base, [source])).save(root / f"120b-{domain}.moe-stats")
    derived = root / "gpt-oss-120b-math-keep64"
    derived.mkdir()
    math = RoutingStats.load(root / "120b-math.moe-stats")
    math.save(derived / "routing_stats.moe-stats")
    kept = {str(layer): sorted(torch.argsort(math.layers[layer]["selections"], descending=True)[:64].tolist()) for layer in range(layers)}
    plan = {"format": "moe-compress prune plan", "format_version": 1, "top_k": top_k, "layers": kept,
            "source": {"model": base["model"], "experts_per_layer": {str(layer): experts for layer in range(layers)}}}
    (derived / "compress.json").write_text(json.dumps({
        "tool": "moe-compress", "operation": "prune", "source": {"model": base["model"]}, "plan": plan,
        "command": "compress prune --model openai/gpt-oss-120b --stats 120b-math.moe-stats --keep 64 --criterion frequency",
        "statistics": {"file": "routing_stats.moe-stats"},
        "parameters": {"before": {"total": 116_829_156_672, "active": 5_134_896_960},
                       "after": {"total": 59_710_718_784, "active": 5_134_896_960}}}))
    return [*(str(root / f"120b-{d}.moe-stats") for d in DOMAINS), str(derived)]


def measure(driver, page: Path, repeats: int) -> tuple[float, float]:
    loads, renders = [], []
    for _ in range(repeats):
        driver.get("about:blank")
        start = time.perf_counter()
        driver.get(page.as_uri())
        loads.append(time.perf_counter() - start)
        renders.append(float(driver.execute_script("return document.documentElement.dataset.renderedMs")))
        errors = console_errors(driver)
        if errors:
            raise SystemExit(f"{page.name}: console errors {errors}")
    return statistics.median(loads), statistics.median(renders) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="write the demo report's first screen here")
    args = parser.parse_args()
    if missing():
        raise SystemExit(f"no headless browser: {missing()}")
    rows = {}
    with tempfile.TemporaryDirectory() as directory, chromium() as driver:
        root = Path(directory)
        for name, make in (("demo", demo_inputs), ("gpt-oss-120b shape", synthetic_120b_inputs)):
            page = root / f"{name.split()[0]}.html"
            command = compress("report", *make(root), "-o", str(page))
            load, render = measure(driver, page, args.repeats)
            rows[name] = (command, page.stat().st_size, load, render)
            print(f"{name:<20} command {command:5.2f} s   {page.stat().st_size / 1e3:8.1f} KB   load {load * 1e3:7.1f} ms   "
                  f"render {render * 1e3:7.1f} ms", flush=True)
            if name == "demo" and args.screenshot:
                from selenium.webdriver.common.action_chains import ActionChains

                driver.set_window_size(1400, 900)
                driver.get(page.as_uri())
                cell = driver.find_element("css selector", '#usage rect[data-layer="3"][data-expert="11"]')
                ActionChains(driver).move_to_element(cell).perform()  # the picture shows a hover text
                driver.save_screenshot(str(args.screenshot))
    (_, demo_size, demo_load, _), (_, big_size, big_load, _) = rows["demo"], rows["gpt-oss-120b shape"]
    print(f"gpt-oss-120b shape / demo: size {big_size / demo_size:.1f}x, load {big_load / demo_load:.1f}x")


if __name__ == "__main__":
    main()
