"""Expert merging: plans whose layers map groups of original experts to one new expert each, the
groupings that make them (HC-SMoE, M-SMoE), one-shot compensation, and applying them to a loaded
model or, streaming, to a checkpoint on disk."""

MERGE_WEIGHTS = ("frequency", "gate-mass", "saliency")
ROUTER_ROWS = ("dominant", "weighted", "fitted")  # `plan.MergePlan.router_matrix`, `router_fit`
ALIGNMENTS = ("none", "weights", "activations")  # neuron alignment before averaging (`align`)
MERGE_METHODS = ("average", "ties")  # how aligned members become one (`align.merge_members`)
TIES_DENSITY = 0.2  # the share of each member's largest differences from the dominant expert TIES keeps (TIES-merging's k)
# Set from benchmarks/merge_quality.py: on the demo model, M-SMoE aligned on activations, weighted
# by gate mass, with fitted router rows is the one merge that beats the best plain prune one-shot.
DEFAULT_GROUPING = "m-smoe"
DEFAULT_MERGE_WEIGHTS = "gate-mass"
DEFAULT_ROUTER_ROWS = "fitted"
DEFAULT_ALIGNMENT = "activations"
DEFAULT_MERGE_METHOD = "average"
