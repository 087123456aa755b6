"""`compress profile`: measure a model's routing on calibration text and save the statistics."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

from .calibration import add_calibration_arguments, calibration_windows, check_calibration_arguments, check_calibration_source
from .info import human_count
from .options import MODEL_HELP

EPILOG = """examples:
  compress profile --model demo --domain math --out math.stats.safetensors
  compress profile --model ./ckpt --domain legal --dataset cases.jsonl --text-field body --out legal.safetensors
  compress profile --model openai/gpt-oss-20b --domain math --dataset preset --samples 512 --out math.safetensors
  torchrun --nproc_per_node 4 -m compress profile --model openai/gpt-oss-120b --domain code --out code.safetensors

Statistics per MoE layer: tokens, top-k selections, top-1, gate mass, REAP and EAN sums,
co-activation, transitions from the previous MoE layer, router entropy, position-0 selections.
They are sums: combine runs with `compress stats merge`, read them with `compress stats show`.
Under torchrun the batches are dealt out over the processes and the sums all-reduced (gloo on
CPU, nccl on GPU); the file is the same as one process writes.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure routing statistics of a model on calibration text",
        description="Run calibration text through a MoE model and save its routing statistics (safetensors).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--domain", required=True, help="label of the data (math, code, general are built in)")
    add_calibration_arguments(parser)
    parser.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is a statistics file written by moe-compress")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")
    parser.set_defaults(run=run)


def _init_distributed():
    """Join the torchrun process group when launched by torchrun; returns the local rank or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return local_rank


def run(args) -> int:
    from ..checkpoint.files import read_config
    from ..checkpoint.output import claim_output
    from ..families import family_for_config
    from ..model_loading import check_checkpoint, load_model, load_tokenizer
    from ..resolve import resolve_model
    from ..stats.profile import profile, world
    from ..stats.routing_stats import is_routing_stats_file

    resolved = resolve_model(args.model, revision=args.revision)
    config = read_config(resolved.path)
    family_for_config(config)  # dense or unsupported models fail here, before any loading
    check_calibration_arguments(args, config)
    check_calibration_source(args)
    check_checkpoint(resolved.path)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes
    output = claim_output(args.out, kind="file", overwrite=args.overwrite, sources=(resolved.path,),
                          recognise=is_routing_stats_file, what="statistics file") if main_process else contextlib.nullcontext()
    with output as claimed:
        tokenizer = load_tokenizer(resolved.path)
        windows, data = calibration_windows(args, tokenizer)
        local_rank = _init_distributed()
        try:
            model = load_model(resolved.path, dtype=args.dtype, device=args.device, local_rank=local_rank)
            start = time.perf_counter()
            stats = profile(model, windows, batch_size=args.batch_size, model_name=resolved.name, domain=args.domain,
                            data=data, progress=not args.quiet, skip_samples=args.skip_samples)
            seconds = time.perf_counter() - start
            rank, world_size = world()
            if rank != 0:
                return 0
            with claimed.write() as staging:
                stats.save(staging)
        finally:
            if local_rank is not None:
                import torch.distributed as dist

                dist.destroy_process_group()
    out = claimed.path
    tokens = stats.metadata["tokens"]
    summary = {
        "out": str(out), "model": resolved.name, "domain": args.domain, "data": data, "samples": len(windows),
        "seq_len": args.seq_len, "tokens": tokens, "moe_layers": len(stats.layers), "processes": world_size,
        "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"profiled {human_count(tokens)} tokens ({len(windows)} × {args.seq_len}) of {args.domain} on {resolved.name}, "
              f"{len(stats.layers)} MoE layers, in {seconds:.1f} s ({human_count(round(tokens / seconds))} tok/s"
              f"{f', {world_size} processes' if world_size > 1 else ''}) → {out}")
    return 0
