"""Tiered conversion: a MoE checkpoint into a TieredLightweightMoE (teams of co-activating experts).

The recipe `recipes/tiered.yaml` holds the defaults (`recipe`); `compress convert tiered` applies them.

1. Tiers: ``"0-7:4,8-17:8,18-23:6"`` gives each MoE layer its team count; every MoE layer must be
   covered exactly once.
2. Teams, per layer, from the routing statistics (``team_size`` experts each, disjoint):
   * ``greedy`` (the seeds' method): seed a team with the most-used unassigned expert, add the
     unassigned expert with the largest summed co-activation with the team's members, repeat;
   * ``agglomerative``: among the teams × size most-used experts, repeatedly pair the clusters with
     the highest mean co-activation similarity (co-selections / √(selections_i · selections_j))
     until clusters reach ``team_size`` (a power of two).
3. Mixing weights: each member's share of its team's selections (uniform when none).
4. Team router rows: the mixing-weighted sum of the members' router rows (and biases), so a team
   of one expert keeps exactly that expert's row and the conversion with teams of one and all
   experts kept reproduces the original model. Teams are routed by the base family's rule, except
   with one team per token: there the team's weight is its softmax probability over all teams
   (Switch Transformer), because a renormalised single weight is always 1 and would leave the
   team router without gradient.
5. Writing streams like pruning: members are expert slices of the source (in team order), router
   rows are combined as they are read, everything else is copied; the config names the tiered
   classes, whose code is copied into the checkpoint (``auto_map``).
"""

CLUSTERING = ("greedy", "agglomerative")
