"""`compress report`: one self-contained HTML page, opened in a real headless chromium (tests/browser.py):
no console errors, every view present, hover text right for known experts, the numbers of
`compress stats show --json`, token routing as transformers' own routers chose it, derived models
against their plans, frontiers against their evaluation records; and `compress push --report`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from browser import chromium, console_errors, missing
from compress.cli import main
from conftest import cli_error

FAST = ["--samples", "8", "--seq-len", "64", "--quiet"]
PROMPT = "Q: What is 12 + 7? </script><b>"  # the page's data must survive text that closes a script element
SCREENSHOTS = Path(os.environ.get("MOE_COMPRESS_SCREENSHOTS", Path(__file__).resolve().parents[1] / "build" / "screenshots"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    for domain in ("math", "code"):
        assert main(["profile", "--model", "demo", "--domain", domain, "--out", str(root / f"{domain}.moe-stats"), *FAST]) == 0
    stats = str(root / "math.moe-stats")
    assert main(["prune", "--model", "demo", "--stats", stats, "--keep", "8", "--criterion", "frequency", "--out", str(root / "pruned"),
                 "--quiet"]) == 0
    assert main(["eval", "--model", str(root / "pruned"), "--tasks", "perplexity:math", "--max-tokens", "400", "--seq-len", "64",
                 "--quiet"]) == 0
    assert main(["merge", "--model", "demo", "--domain", "math", "--keep", "8", "--out", str(root / "merged"), *FAST]) == 0
    assert main(["prune", "--model", "demo", "--stats", stats, "--keep", "4,8", "--criterion", "frequency", "--out",
                 str(root / "frontier"), "--quiet"]) == 0
    assert main(["compare", "--base", "demo", "--candidate", str(root / "frontier" / "keep4"), str(root / "frontier" / "keep8"),
                 "--tasks", "perplexity:math", "--max-tokens", "400", "--seq-len", "64", "--quiet"]) == 0
    assert main(["report", str(root / "math.moe-stats"), str(root / "code.moe-stats"), str(root / "pruned"), str(root / "merged"),
                 str(root / "frontier"), "--model", "demo", "--prompt", PROMPT, "-o", str(root / "report.html")]) == 0
    return root


@pytest.fixture(scope="module")
def page(inputs):
    reason = missing()
    if reason and not os.environ.get("MOE_COMPRESS_REQUIRE_BROWSER"):
        pytest.skip(f"no headless browser: {reason}")
    with chromium() as driver:
        driver.get((inputs / "report.html").as_uri())
        yield driver


def embedded_data(path: Path) -> dict:
    text = path.read_text()
    raw = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(raw)


def hover(driver, element) -> str:
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    ActionChains(driver).move_to_element(element).perform()
    return driver.find_element("id", "tooltip").text


def js_number(value: float) -> str:
    """What the page's `fmt` shows: integers with thousands separators, else JavaScript's toPrecision(4)."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:#.4g}").rstrip(".")


def test_the_page_is_self_contained_and_renders_every_view_without_console_errors(inputs, page):
    text = (inputs / "report.html").read_text()
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', text)  # nothing fetched: scripts, styles and data inline
    assert page.execute_script("return document.documentElement.dataset.renderedMs") is not None
    assert console_errors(page) == []
    sections = [element.get_attribute("id") for element in page.find_elements("css selector", "main section")]
    assert sections == ["usage", "summary", "divergence", "tokens", "compare", "derived", "frontier"]
    assert not page.find_elements("css selector", ".error")
    # math and code; the merge profiled the same math windows, so its own copy is math's, drawn once
    assert len(page.find_elements("css selector", "#usage svg.heatmap")) == 2
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.execute_script("return document.body.scrollHeight")
    page.set_window_size(1400, min(height + 40, 8000))
    assert page.save_screenshot(str(SCREENSHOTS / "report.png"))
    page.set_window_size(1400, 1000)
    assert (SCREENSHOTS / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hover_shows_a_known_experts_numbers_from_the_file(inputs, page):
    with safe_open(str(inputs / "math.moe-stats"), framework="pt") as f:  # read directly, not through moe-compress
        tokens = int(f.get_tensor("layers.3.tokens"))
        selections = int(f.get_tensor("layers.3.selections")[5])
        gate_mass = float(f.get_tensor("layers.3.gate_mass")[5])
        reap = float(f.get_tensor("layers.3.reap_sum")[5]) / selections
    cell = page.find_element("css selector", '#usage svg.heatmap rect[data-layer="3"][data-expert="5"]')
    assert hover(page, cell) == (f"math.moe-stats · layer 3 · expert 5: {selections:,} selections ({100 * selections / tokens:.2f}% of "
                                 f"tokens) · gate mass {js_number(gate_mass)} · REAP saliency {js_number(reap)}")


def test_the_numbers_equal_compress_stats_show_json(inputs, page, capsys):
    for index, domain in enumerate(("math", "code")):
        capsys.readouterr()
        assert main(["stats", "show", str(inputs / f"{domain}.moe-stats"), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert embedded_data(inputs / "report.html")["statistics"][index]["summary"] == shown
        rows = page.find_elements("css selector", f'table.summary[data-statistics="{index}"] tbody tr')
        cells = [[cell.text for cell in row.find_elements("tag name", "td")] for row in rows]
        expected = [[str(layer["layer"]), str(layer["tokens"]), str(layer["entropy_nats"]),
                     str(layer["entropy_normalized"]), str(layer["gini"]), str(len(layer["cold_experts"])), str(layer["never_selected"]),
                     ", ".join(f"{t['expert']} ({t['usage_rate']})" for t in layer["top_experts"])] for layer in shown["layers"]]
        assert cells == expected


def test_token_routing_is_what_transformers_routers_chose(inputs, page):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.resolve import resolve_model

    path = resolve_model("demo").path
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    chosen = {}
    hooks = [layer.mlp.router.register_forward_hook(lambda m, a, out, i=i: chosen.__setitem__(i, out[2]))
             for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    rows = page.find_elements("css selector", "#tokens table.tokens tbody tr")
    assert len(rows) == ids.shape[1]
    for position, row in enumerate(rows):
        cells = [sorted(map(int, cell.text.split(","))) for cell in row.find_elements("css selector", "td.route")]
        assert cells == [sorted(chosen[layer][position].tolist()) for layer in sorted(chosen)]  # near-equal weights may swap order
    assert "expert" in hover(page, rows[0].find_element("css selector", "td.route"))


def test_derived_models_show_each_experts_fate_from_the_plan(inputs, page):
    derived = page.find_elements("css selector", "#derived .derived")
    assert len(derived) == 2
    kept = json.loads((inputs / "pruned" / "compress.json").read_text())["plan"]["layers"]["2"]
    for expert in (min(set(range(16)) - set(kept)), kept[0]):
        cell = derived[0].find_element("css selector", f'rect[data-layer="2"][data-expert="{expert}"]')
        fate = "kept" if expert in kept else "dropped"
        assert hover(page, cell).startswith(f"pruned · layer 2 · expert {expert}: {fate} — ")
    groups = json.loads((inputs / "merged" / "compress.json").read_text())["plan"]["layers"]["0"]
    index, group = next((i, g) for i, g in enumerate(groups) if len(g) > 1)
    cell = derived[1].find_element("css selector", f'rect[data-layer="0"][data-expert="{group[-1]}"]')
    assert hover(page, cell).startswith(f"merged · layer 0 · expert {group[-1]}: merged in group {index} ({', '.join(map(str, group))})")
    evaluation = json.loads((inputs / "pruned" / "compress.json").read_text())["evaluations"][0]["report"]["tasks"]["perplexity:math"]
    table = derived[0].find_element("css selector", "table.evaluation")
    assert [js_number(evaluation["metrics"]["perplexity"])] == [
        row.find_elements("tag name", "td")[2].text for row in table.find_elements("css selector", "tbody tr")
        if row.find_elements("tag name", "td")[1].text == "perplexity"]


def test_a_frontier_draws_quality_against_size_from_its_records(inputs, page):
    frontier = page.find_element("css selector", "#frontier .frontier")
    assert len(frontier.find_elements("css selector", "svg.chart")) == 1  # one task
    rows = [[cell.text for cell in row.find_elements("tag name", "td")] for row in frontier.find_elements("css selector", "tbody tr")]
    expected = []
    for name in ("keep4", "keep8"):
        record = json.loads((inputs / "frontier" / name / "compress.json").read_text())
        value = record["evaluations"][-1]["report"]["tasks"]["perplexity:math"]["metrics"]["perplexity"]
        expected.append([name, f"{record['parameters']['after']['total']:,}", js_number(value)])
    assert rows == expected
    assert len(frontier.find_elements("css selector", "svg.chart path.mark")) == 1  # the base, from the comparison


def test_layer_comparison_switches_sides(inputs, page):
    from selenium.webdriver.support.ui import Select

    side = page.find_element("id", "compare-1")
    Select(side.find_element("tag name", "select")).select_by_visible_text("code.moe-stats · layer 4")
    bars = side.find_elements("css selector", "svg rect")
    assert len(bars) == 16 and hover(page, bars[2]).startswith("code.moe-stats · layer 4 · expert 2: ")


def test_bad_inputs_give_one_line_errors(inputs, capsys, tmp_path):
    page = str(tmp_path / "r.html")
    assert "nothing to report" in cli_error(capsys, "report", "-o", page)
    assert "does not exist" in cli_error(capsys, "report", str(tmp_path / "missing.moe-stats"), "-o", page)
    (tmp_path / "notes.txt").write_text("hello")
    assert "neither a routing statistics file" in cli_error(capsys, "report", str(tmp_path / "notes.txt"), "-o", page)
    assert "add --model" in cli_error(capsys, "report", "--prompt", "hi", "-o", page)
    assert "is a directory" in cli_error(capsys, "report", str(inputs / "math.moe-stats"), "-o", str(tmp_path))
    assert not (tmp_path / "r.html").exists()
    inside = inputs / "pruned" / "report.html"
    assert "is the source model or inside it" in cli_error(capsys, "report", str(inputs / "pruned"), "-o", str(inside))
    assert not inside.exists()
    assert "pass --overwrite" in cli_error(capsys, "report", str(inputs / "math.moe-stats"), "-o", str(inputs / "report.html"))
    (tmp_path / "notes.html").write_text("<html>mine</html>")
    assert "not a report written by moe-compress" in cli_error(capsys, "report", str(inputs / "math.moe-stats"), "-o",
                                                               str(tmp_path / "notes.html"), "--overwrite")
    assert (tmp_path / "notes.html").read_text() == "<html>mine</html>"


def test_the_python_api_writes_the_same_numbers(inputs, tmp_path):
    import compress

    result = compress.report([str(inputs / "math.moe-stats")], out=str(tmp_path / "api.html"))
    assert result.size == result.path.stat().st_size and compress.report is not compress.display  # no module shadows the API
    api, cli = embedded_data(result.path)["statistics"], embedded_data(inputs / "report.html")["statistics"]
    assert api[0] == cli[0]


def test_colouring_by_reap_saliency_makes_the_most_salient_expert_brightest(inputs, page):
    from selenium.webdriver.support.ui import Select

    with safe_open(str(inputs / "code.moe-stats"), framework="pt") as f:
        saliency = {layer: f.get_tensor(f"layers.{layer}.reap_sum") / f.get_tensor(f"layers.{layer}.selections").clamp(min=1)
                    for layer in range(6)}
    layer = max(saliency, key=lambda layer: float(saliency[layer].max()))
    expert = int(saliency[layer].argmax())
    Select(page.find_element("css selector", "#usage select")).select_by_value("reap")
    heatmap = page.find_elements("css selector", "#usage svg.heatmap")[1]
    assert heatmap.find_element("css selector", f'rect[data-layer="{layer}"][data-expert="{expert}"]').get_attribute("fill") == \
        "rgb(253,231,37)"  # the top of the colour scale
    Select(page.find_element("css selector", "#usage select")).select_by_value("usage")
