"""Evaluation (installed as compress.evals): strided perplexity, the lm-eval bridge with offline tasks,
comparisons and quality gates, and evaluation results in derived checkpoints' model cards."""
