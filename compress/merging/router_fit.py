"""Refitted router rows (``router: fitted``): a merged expert is chosen where its members were, in closed form.

With the dominant member's row (``router: dominant``) a merged expert is chosen only where its
dominant member was; the tokens that went to its other members go elsewhere, so a merge routes
like a prune of the same experts. Instead, new expert g's row is fitted so that its logit matches
the group's logit z_g(x) on the calibration tokens: log Σ_m exp(l_m(x)) over its members m
(softmax routers: the softmax then gives g exactly its members' summed probability), or
logit(Σ_m σ(l_m(x))) for sigmoid-scored routers (DeepSeek-V3 and kin: the summed score, below 1).
The row r (weight, and bias where the router has one) solves the ridge least squares toward the
dominant member's row r₀

    min Σ_x (r·x̃ − z_g(x))² + λ‖r − r₀‖²,   x̃ = (x, 1) with a bias, else x,

so r = (A + λI)⁻¹(B_g + λ·r₀) with A = Σ x̃x̃ᵀ (one matrix for the layer) and B_g = Σ x̃·z_g summed
over every calibration token as the layer-wise engine's chunks stream past (`RouterFit.add`: in
the grouping's own pass once it has answered the layer, `requests.MergeRequest.stream`, or in a
pass of its own; `compensate.LayerFit`); λ is `ROUTER_RIDGE` times A's mean diagonal. A
one-expert group keeps its row as stored, so a prune plan is unchanged. Router buffers (DeepSeek's
correction bias, for the choice only) stay the dominant member's. HARC (arXiv 2606.03391)
recalibrates routers after merging in closed form too.
"""

from __future__ import annotations

import torch

ROUTER_RIDGE = 0.01  # chosen on the demo model (benchmarks/merge_quality.py): 0.001–0.01 within 1%, 0.1 worse
SLICE_TOKENS = 4096  # tokens whose float64 inputs are summed at once
_BELOW_ONE = 1 - 1e-6  # a sigmoid-scored group's summed score is clipped here


def group_logits(logits: torch.Tensor, groups: list[list[int]], sigmoid: bool) -> torch.Tensor:
    """z [T, G] (float64): each group's logit from its members' logits [T, E] (see the module docstring)."""
    logits = logits.double()
    columns = []
    for members in groups:
        if len(members) == 1:
            columns.append(logits[:, members[0]])
        elif sigmoid:
            columns.append(torch.logit(logits[:, members].sigmoid().sum(dim=1).clamp(max=_BELOW_ONE)))
        else:
            columns.append(torch.logsumexp(logits[:, members], dim=1))
    return torch.stack(columns, dim=1)


class RouterFit:
    """The streamed fit of one MoE layer's new router rows: `add` every chunk, then `rows`.

    `groups` are the plan's groups (dominant member first); `source` the router's rows as stored
    (`MoEFamily.router_parameters`: ``weight`` [E, H], ``bias`` [E] where there is one)."""

    def __init__(self, groups: list[list[int]], source: dict[str, torch.Tensor], sigmoid: bool, ridge: float = ROUTER_RIDGE):
        self.groups, self.sigmoid, self.ridge = groups, sigmoid, ridge
        self.source = {name: t.detach().double().cpu() for name, t in source.items()}
        self.fitted = [g for g, members in enumerate(groups) if len(members) > 1]
        self.normal = self.right = None
        self._rows = None

    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.double().cpu()
        if "bias" in self.source:
            inputs = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], dim=1)
        return inputs

    def add(self, inputs: torch.Tensor, logits: torch.Tensor) -> None:
        """Add the normal equations of calibration tokens: the router's inputs [T, H] and its logits [T, E]."""
        if not self.fitted:
            return
        targets = group_logits(logits, [self.groups[g] for g in self.fitted], self.sigmoid)
        for start in range(0, len(inputs), SLICE_TOKENS):
            x = self._features(inputs[start:start + SLICE_TOKENS])
            if self.normal is None:
                self.normal = x.new_zeros(x.shape[1], x.shape[1])
                self.right = x.new_zeros(x.shape[1], len(self.fitted))
            self.normal.addmm_(x.T, x)
            self.right.addmm_(x.T, targets[start:start + SLICE_TOKENS])

    def _matrix(self, rows: dict, groups: list[int]) -> torch.Tensor:
        """[len(groups), F] the rows of `groups` with their bias as a last column (where there is one)."""
        matrix = rows["weight"][groups]
        return torch.cat([matrix, rows["bias"][groups].unsqueeze(1)], dim=1) if "bias" in rows else matrix

    def rows(self) -> dict[str, torch.Tensor]:
        """The new router's rows {``weight``: [G, H], ``bias``: [G]} (float64): fitted for groups of
        several experts (their dominant member's where no token was added), the member's own otherwise."""
        if self._rows is None:
            rows = {name: t[[members[0] for members in self.groups]].clone() for name, t in self.source.items()}
            if self.fitted and self.normal is not None:
                strength = self.ridge * self.normal.diagonal().mean().clamp(min=1e-30)
                eye = torch.eye(len(self.normal), dtype=torch.float64)
                prior = self._matrix(rows, self.fitted)  # [G', F]
                solved = torch.linalg.solve(self.normal + strength * eye, self.right + strength * prior.T).T
                width = rows["weight"].shape[1]
                rows["weight"][self.fitted] = solved[:, :width]
                if "bias" in rows:
                    rows["bias"][self.fitted] = solved[:, width]
            self._rows = rows
        return self._rows

    def fitted_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """[T, G'] (float64) the new router's logits of the `fitted` groups for its inputs [T, H]."""
        return self._features(inputs) @ self._matrix(self.rows(), self.fitted).T
