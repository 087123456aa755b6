"""Run the interop manifest through llama.cpp's converter, convert_hf_to_gguf.py, and write its results.

    python engine_llama_cpp.py MANIFEST.json RESULTS.json

A benchmark, not run by CI (see llama_cpp.sh, which makes the venv and runs this with its python).
Runs with the python of the venv llama_cpp.sh makes: the converter is $VENV/llama.cpp/
convert_hf_to_gguf.py, as vendored by llama-cpp-python 0.3.36 (LLAMA_CPP_CONVERTER overrides it);
it imports nothing from this project. Each output's folder is converted in a subprocess with
`--outtype f32` into a temporary directory:

- converted: {"status": "ok", "seconds", "gguf_bytes", "experts_per_layer", "config_experts", ...},
  the expert counts read back from the GGUF's blk.N.ffn_*_exps tensors with the gguf package
  (note: "converted, N experts per layer");
- otherwise {"status": "refused", "error": the first meaningful error line of the converter}.

The demo tokenizer (a ByteLevel BPE with GPT-2's split regex, vocab 2048) has a pre-tokenizer hash
the converter does not know; it then raises "BPE pre-tokenizer was not recognized" and offers no
option around it (its remedy, convert_hf_to_gguf_update.py, edits the converter and downloads
reference tokenizers from the Hub). So the converter runs behind a small shim, SHIM below, that
leaves its source alone and only turns that one exception into tokenizer.ggml.pre = "gpt-2" (the
GPT-2 regex: what the demo tokenizer uses); a result that needed it says "pre_tokenizer_forced".

Log-probabilities are not compared: running the GGUF needs llama.cpp itself built (~50 minutes on 2
cores). RESULTS.json is rewritten after every output; the exit status is 0 whenever the manifest
could be read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # folders are local; never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONVERTER = Path(os.environ.get("LLAMA_CPP_CONVERTER", Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py"))
sys.path.insert(0, str(CONVERTER.parent / "gguf-py"))  # the gguf the converter itself uses
import gguf  # noqa: E402
from manifest_runner import run_manifest  # noqa: E402

ENGINE = "llama.cpp convert_hf_to_gguf (llama-cpp-python 0.3.36 vendored)"
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


# Runs the converter as its own __main__; argv: converter path, then the converter's arguments.
SHIM = """
import runpy, sys
converter = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, converter.rsplit('/', 1)[0])
from conversion.base import TextModel
stock = TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return stock(self, tokenizer)
    except NotImplementedError as error:
        print('PRE-TOKENIZER FORCED: gpt-2 after', repr(str(error)), file=sys.stderr)
        return 'gpt-2'
TextModel.get_vocab_base_pre = get_vocab_base_pre
runpy.run_path(converter, run_name='__main__')
"""


def first_error(log: str) -> str:
    """The converter's own ERROR line if it logged one, else the last exception line, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return line.split(":", 2)[-1].strip()  # drop the logger's "ERROR:hf-to-gguf:"
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", line):
            return line
    return lines[-1] if lines else "no output"


def config_experts(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    for key in EXPERT_KEYS:
        if key in config:
            return config[key]
    return None


def read_back(path: Path) -> dict:
    """Expert counts per layer (and the tensors' GGML types) of a converted GGUF."""
    reader = gguf.GGUFReader(path)
    experts: dict[int, int] = {}
    types: set[str] = set()
    for tensor in reader.tensors:
        match = re.match(r"blk\.(\d+)\.ffn_(gate|up|gate_up|down)_exps\.weight$", tensor.name)
        if match:
            # GGML order: (ne0, ne1, n_expert)
            experts.setdefault(int(match.group(1)), int(tensor.shape[-1]))
            types.add(tensor.tensor_type.name)
    arch = reader.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    field = reader.fields.get(f"{arch}.expert_count")
    return {
        "architecture": arch,
        "expert_count": int(field.parts[field.data[0]][0]) if field else None,
        "experts_per_layer": [experts[layer] for layer in sorted(experts)],
        "expert_tensor_types": sorted(types),
    }


def convert_entry(entry: dict) -> dict:
    return convert(Path(entry["path"]))


def convert(folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="llama-cpp-") as tmp:
        out = Path(tmp) / "model.gguf"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", SHIM, str(CONVERTER), str(folder), "--outtype", "f32", "--outfile", str(out)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        seconds = round(time.perf_counter() - start, 2)
        if proc.returncode != 0 or not out.is_file():
            return {"status": "refused", "error": first_error(proc.stderr + "\n" + proc.stdout), "seconds": seconds}
        result = {"status": "ok", "seconds": seconds, "gguf_bytes": out.stat().st_size}
        if "PRE-TOKENIZER FORCED" in proc.stderr:
            result["pre_tokenizer_forced"] = "gpt-2"
        result.update(read_back(out))
        result["config_experts"] = config_experts(folder)
        per_layer = set(result["experts_per_layer"])
        result["note"] = (
            f"converted, {per_layer.pop()} experts per layer"
            if len(per_layer) == 1
            else f"converted, experts per layer {result['experts_per_layer']}"
        )
        if set(result["experts_per_layer"]) != {result["config_experts"]}:
            result["note"] += f" (config: {result['config_experts']})"
        return result


if __name__ == "__main__":
    sys.exit(run_manifest("llama.cpp", ENGINE, convert_entry, sys.argv[1:]))
