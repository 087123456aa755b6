"""Expert pruning: plans (which experts each layer keeps), selection from routing statistics, and
applying a plan to a loaded model or, streaming, to a checkpoint on disk."""
