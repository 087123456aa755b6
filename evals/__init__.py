"""Evaluation: perplexity now; the lm-eval bridge and quality gates follow (installed as compress.evals)."""
