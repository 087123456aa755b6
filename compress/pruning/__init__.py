"""Expert pruning: plans (which experts each layer keeps), selection from routing statistics, and
applying a plan to a loaded model or, streaming, to a checkpoint on disk."""

BUDGETS = ("uniform", "global")
DEFAULT_CRITERION = "reconstruct"  # best on the demo model with domain calibration: benchmarks/RESULTS.md
