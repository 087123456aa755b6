"""Routing analyses from the research notes (`compress analyze`): per-token traces, contexts and
generation dynamics, forced routing, ablations and top-k changes with bootstrap intervals,
cross-layer circuits, domain specialists, expert similarity, and a routing-prediction probe."""
