"""The job layer: what the command line, the Python API and the tests all call.

A source model is opened once (`source.open_model` → `SourceModel`); options are frozen
dataclasses (`options`) from which the command line's flags are generated; each job checks its
options against the source and claims its output before any long work, then runs:
`profile.profile`, the reductions `prune.prune` and `merge.merge` (methods of one driver,
`reduce.reduce`, that share `reduction`), `tiered.convert_tiered`, `evaluate.evaluate` /
`compare` / `gate` and `distill.distill`. Every derived checkpoint's provenance is written by one
writer (`provenance`).
"""
