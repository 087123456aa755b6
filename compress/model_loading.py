"""Loading a resolved checkpoint for computation: validation, tokenizer, dtype, device placement.

Every load validates the checkpoint first (`check_checkpoint`): the safetensors headers (a
truncated file is caught before any work) and the key coverage transformers will find — missing,
unexpected and wrong-shape tensors — from a meta-device load, which reads no weights. Left to
itself, transformers initialises a missing tensor randomly and only logs it, so a broken
checkpoint would be evaluated as if it were whole.

Only safetensors weights are read. MXFP4 experts are dequantised on load, because the project's
experts implementations (profiling, teams, kernels) work on the fused bf16/fp32 tensors that every
family shares; the MXFP4 path of transformers swaps in a module with a different interface.

Compute dtype ``auto`` is float32 on the CPU — on CPUs without native bf16 arithmetic a bf16 matmul
runs 9–28× slower than fp32, for the same perplexity to four digits (on CPUs with AVX512-BF16 or
AMX, ``--dtype bfloat16`` can be faster: `benchmarks/cpu_dtype.py`) — and the checkpoint's own
dtype on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import re

from .checkpoint.files import read_config
from .errors import CheckpointError, CompressError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DTYPE_HELP = ("compute dtype; auto: float32 on CPU (bf16 matmuls are 9-28x slower on CPUs without native bf16, "
              "same results), the checkpoint's dtype on GPU")


def prepare_transformers(model_type: str | None) -> None:
    """What loading a model of `model_type` needs first: the project's classes of its family
    registered (`compress.register()` registers every family's), chatter quiet."""
    import transformers

    from .models import register_model_classes

    register_model_classes(model_type)
    for name in ("lm_eval", "lm-eval"):  # lm-eval logs every step at INFO/WARNING
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.disable_progress_bar()  # a per-tensor bar, even for an 11 MB model


def device_map_for(device: str, local_rank: int | None = None):
    """transformers' ``device_map`` for ``--device``: ``auto`` spreads a model over every visible GPU
    (and CPU memory past them) with accelerate; under torchrun each process keeps its whole copy on
    its own GPU."""
    import torch

    if device not in DEVICES:
        raise CompressError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise CompressError("--device cuda was given but no CUDA GPU is visible: use --device cpu")
    if local_rank is not None:
        return {"": f"cuda:{local_rank}"}
    return "auto" if device == "auto" else {"": "cuda:0"}


def compute_dtype(dtype: str, device_map):
    """The torch dtype (or ``"auto"``) to load with: ``auto`` means float32 on the CPU."""
    import torch

    if dtype not in DTYPES:
        raise CompressError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if device_map is None else "auto"
    return getattr(torch, dtype)


def load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} has no usable tokenizer ({_first_line(exc)}): "
                              "copy the tokenizer files of its source model") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _quantization_options(config: dict) -> dict:
    """Quantised checkpoints load dequantised, on every device: the collectors and compensation
    read the experts' weights as plain tensors."""
    from transformers import FineGrainedFP8Config, Mxfp4Config

    method = (config.get("quantization_config") or {}).get("quant_method")
    if method == "mxfp4":
        return {"quantization_config": Mxfp4Config(dequantize=True)}
    if method == "fp8":
        return {"quantization_config": FineGrainedFP8Config(dequantize=True)}
    return {}


@contextlib.contextmanager
def _transformers_silent():
    """transformers logs its load report (and raises after it); we turn the report into our own error."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


def _tensors(count: int) -> str:
    return f"{count} tensor{'s' if count != 1 else ''}"


def _names(keys, limit: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_meta_model(path, config: dict):
    """(model on the meta device, loading info) as transformers builds them from the checkpoint at
    `path` (whose config.json is `config`): the model class, config and key conversions are
    transformers' own, no weight is read.
    The info lists missing, unexpected and wrong-shaped tensors (`check_loading_info`)."""
    from transformers import AutoModelForCausalLM

    prepare_transformers(config.get("model_type"))
    try:
        with _transformers_silent():
            return AutoModelForCausalLM.from_pretrained(
                path, device_map="meta", output_loading_info=True, ignore_mismatched_sizes=True, use_safetensors=True,
                **_quantization_options(config))
    except RuntimeError as exc:  # raised after transformers' report, e.g. a per-expert tensor it cannot assemble
        raise CheckpointError(
            f"{path}: transformers cannot assemble its weights ({_first_line(exc)}); the checkpoint is incomplete "
            "or config.json does not describe its tensors: re-download or re-save it") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"transformers cannot load {path} ({_first_line(exc)})") from None


def check_loading_info(path, config: dict, info: dict) -> None:
    """Refuse a checkpoint whose tensors do not cover its config exactly (missing, unexpected, wrong shape)."""
    layers = int(config.get("num_hidden_layers") or 0)
    beyond_stack = re.compile(r"^model\.layers\.(\d+)\.")

    def ignorable(key: str) -> bool:  # e.g. DeepSeek-V3's multi-token-prediction layer, which transformers never loads
        match = beyond_stack.match(key)
        return bool(match) and int(match[1]) >= layers

    missing = set(info["missing_keys"])
    unexpected = {key for key in info["unexpected_keys"] if not ignorable(key)}
    mismatched = sorted(info["mismatched_keys"], key=lambda item: item[0])
    if mismatched:
        key, on_disk, expected = mismatched[0]
        raise CheckpointError(
            f"{path}: {_tensors(len(mismatched))} {'does' if len(mismatched) == 1 else 'do'} not have the shape config.json "
            f"implies (first: {key} is {list(on_disk)} on disk, the config says {list(expected)}): config.json does not "
            "describe these weights")
    if missing:
        raise CheckpointError(
            f"{path} is missing {_tensors(len(missing))} the model needs ({_names(missing)}): transformers would "
            f"initialise {'it' if len(missing) == 1 else 'them'} randomly; re-download or re-save the checkpoint")
    if unexpected:
        raise CheckpointError(
            f"{path} holds {_tensors(len(unexpected))} its model does not have ({_names(unexpected)}): config.json "
            "does not describe these weights; use the config saved with them")
    if info.get("error_msgs"):
        raise CheckpointError(f"{path}: {info['error_msgs'][0].splitlines()[0]}")


def check_checkpoint(path):
    """Refuse a checkpoint whose files are broken or whose tensors do not cover its config: headers
    first, then missing / unexpected / wrong-shape tensors as transformers sees them. Returns the
    model on the meta device."""
    from .checkpoint.reader import CheckpointReader

    CheckpointReader(path).close()  # index, shards, headers, file lengths
    config = read_config(path)
    meta, info = load_meta_model(path, config)
    check_loading_info(path, config, info)
    return meta


def load_model(path, dtype: str = "auto", device: str = "auto", local_rank: int | None = None, config: dict | None = None):
    """The causal LM at `path` in eval mode, in `dtype` (see `compute_dtype`), placed per `device`.
    Checked first (`check_checkpoint`) unless the caller passes its already checked `config` (a
    `jobs.SourceModel` does)."""
    from transformers import AutoModelForCausalLM

    device_map = device_map_for(device, local_rank)
    torch_dtype = compute_dtype(dtype, device_map)
    if config is None:
        check_checkpoint(path)
        config = read_config(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True, device_map=device_map,
                                                    **_quantization_options(config)).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"transformers cannot load {path} ({_first_line(exc)})") from None
