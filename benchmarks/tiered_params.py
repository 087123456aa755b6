"""True parameter counts of gpt-oss-20b / -120b variants, on the meta device (no weights needed).

Original, uniformly pruned (keep 8 and 16 experts per layer) and TieredLightweightMoE (team sizes
2 and 4, one team per token) — every figure from instantiating the real model classes with the
published configs, beside the seeds' claim ("537M vs 6.44B, 92% reduction", which came from a
synthetic config, not gpt-oss).

Tiers: gpt-oss-20b (24 layers) uses the seeds' "0-7:4,8-17:8,18-23:6"; gpt-oss-120b (36 layers)
the same thirds scaled, "0-11:4,12-26:8,27-35:6".

    python benchmarks/tiered_params.py
"""

from __future__ import annotations

from transformers import GptOssConfig

from compress.families import get_family
from compress.model_info import count_parameters, meta_model
from compress.tiering.apply import tiered_parameter_counts

CONFIGS = {
    "gpt-oss-20b": (GptOssConfig(num_hidden_layers=24, num_local_experts=32, vocab_size=201088, hidden_size=2880,
                                 intermediate_size=2880, head_dim=64, num_attention_heads=64, num_key_value_heads=8,
                                 num_experts_per_tok=4), "0-7:4,8-17:8,18-23:6"),
    "gpt-oss-120b": (GptOssConfig(num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4), "0-11:4,12-26:8,27-35:6"),
}


def tiers_of(text: str) -> dict[int, int]:
    tiers = {}
    for part in text.split(","):
        span, count = part.split(":")
        first, last = map(int, span.split("-"))
        tiers.update({layer: int(count) for layer in range(first, last + 1)})
    return tiers


def main() -> None:
    family = get_family("gpt_oss")
    print("| model | variant | total | active | active w/o embeddings | total vs original |\n|---|---|---|---|---|---|")
    for name, (config, tiers) in CONFIGS.items():
        original = count_parameters(meta_model(config), family, config)
        rows = [("original", original.total, original.active, original.active_excluding_embeddings)]
        for keep in (16, 8):
            pruned_config = GptOssConfig(**{**config.to_dict(), "num_local_experts": keep})
            c = count_parameters(meta_model(pruned_config), family, pruned_config)
            rows.append((f"pruned, keep {keep}", c.total, c.active, c.active_excluding_embeddings))
        for size in (2, 4):
            c = tiered_parameter_counts(config, tiers_of(tiers), size, 1)
            rows.append((f"tiered {tiers}, teams of {size}, top-1 team", c["total"], c["active"], c["active_excluding_embeddings"]))
        for variant, total, active, active_wo in rows:
            print(f"| {name} | {variant} | {total / 1e9:.2f}B | {active / 1e9:.2f}B | {active_wo / 1e9:.2f}B | "
                  f"{total / original.total:.1%} |")
    print("\nseeds' claim (synthetic config: hidden 4096, intermediate 16384): standard 6.44B → tiered-lightweight 537M (−92%)")


if __name__ == "__main__":
    main()
