"""Loading a resolved checkpoint for computation: tokenizer, dtype, device placement.

Only safetensors weights are read. MXFP4 experts are dequantised on load, because the project's
experts implementations (profiling, teams, kernels) work on the fused bf16/fp32 tensors that every
family shares; the MXFP4 path of transformers swaps in a module with a different interface.
"""

from __future__ import annotations

import torch

from .checkpoint.files import read_config
from .errors import CheckpointError, CompressError

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def device_map_for(device: str, local_rank: int | None = None):
    """transformers' ``device_map`` for ``--device``: ``auto`` spreads a model over every visible GPU
    (and CPU memory past them) with accelerate; under torchrun each process keeps its whole copy on
    its own GPU."""
    if device not in DEVICES:
        raise CompressError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    if not torch.cuda.is_available():
        raise CompressError("--device cuda was given but no CUDA GPU is visible: use --device cpu")
    if local_rank is not None:
        return {"": f"cuda:{local_rank}"}
    return "auto" if device == "auto" else {"": "cuda:0"}


def load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} has no usable tokenizer ({str(exc).splitlines()[0]})") from None


def load_model(path, dtype: str = "auto", device: str = "auto", local_rank: int | None = None):
    """The causal LM at `path` in eval mode, in `dtype` (``auto``: the checkpoint's), placed per `device`."""
    from transformers import AutoModelForCausalLM, Mxfp4Config

    if dtype not in DTYPES:
        raise CompressError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    options = {"dtype": DTYPES[dtype], "use_safetensors": True, "device_map": device_map_for(device, local_rank)}
    if (read_config(path).get("quantization_config") or {}).get("quant_method") == "mxfp4":
        options["quantization_config"] = Mxfp4Config(dequantize=True)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **options).eval()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"transformers cannot load {path} ({str(exc).splitlines()[0]})") from None
