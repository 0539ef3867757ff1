"""Ridge least squares from streamed normal equations (pure tensor math, float64).

A linear map W `[d_out, d_in]` (the `nn.Linear` convention) fitted to rows y ~ W x. The data
never stays: `NormalEquations.add` folds each batch into X^T X, X^T Y and sum(Y^2), so memory
is independent of the token count. The ridge pulls W towards a prior W0 (zero, or the weight
being re-fitted): minimising ||Y - X W^T||^2 + lam ||W - W0||^2 gives
(X^T X + lam I) W^T = X^T Y + lam W0^T, and its error on the data it was fitted to never
exceeds W0's (the objective at the optimum is at most its value at W0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# candidate ridges, relative to the mean diagonal of X^T X (a scale-free choice)
RIDGES = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


class NormalEquations:
    """X^T X `[d_in, d_in]`, X^T Y `[d_in, d_out]`, sum(Y^2) and the row count, in float64
    on `device` (where the rows come from: no copies per batch)."""

    def __init__(self, d_in: int, d_out: int, device: torch.device | str = "cpu"):
        self.xx = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        self.xy = torch.zeros(d_in, d_out, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: Tensor, y: Tensor) -> None:
        """Fold rows x `[..., d_in]`, y `[..., d_out]` in."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.xx.device, torch.float64)  # (N, d_in)
        y = y.detach().reshape(-1, y.shape[-1]).to(self.xx.device, torch.float64)  # (N, d_out)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += y.pow(2).sum()
        self.rows += x.shape[0]

    def __add__(self, other: NormalEquations) -> NormalEquations:
        out = NormalEquations(*self.xy.shape, device=self.xx.device)
        out.xx, out.xy = self.xx + other.xx, self.xy + other.xy
        out.yy, out.rows = self.yy + other.yy, self.rows + other.rows
        return out

    def sse(self, w: Tensor) -> float:
        """Sum of squared errors of y ~ W x over the folded rows (W = 0 gives sum(Y^2))."""
        w = w.detach().to(self.xx.device, torch.float64)
        return float(self.yy - 2 * (w.T * self.xy).sum() + (w @ self.xx * w).sum())

    def nmse(self, w: Tensor) -> float:
        """sse(W) / sse(0): 1.0 is what the zero map (a no-op block) scores."""
        return self.sse(w) / max(float(self.yy), 1e-300)

    def solve(self, ridge: float, prior: Tensor | None = None) -> Tensor:
        """W `[d_out, d_in]` (float64) minimising sse + lam ||W - prior||^2, lam = ridge *
        mean diag(X^T X)."""
        d_in = self.xx.shape[0]
        lam = ridge * float(self.xx.diagonal().mean().clamp_min(1e-300))
        rhs = self.xy if prior is None else self.xy + lam * prior.to(self.xy).T
        a = self.xx + lam * torch.eye(d_in, dtype=torch.float64, device=self.xx.device)
        chol, info = torch.linalg.cholesky_ex(a)  # symmetric positive definite when lam > 0
        w_t = torch.cholesky_solve(rhs, chol) if int(info) == 0 else torch.linalg.solve(a, rhs)
        return w_t.T.contiguous()


@dataclass(frozen=True)
class Fit:
    """A fitted map and how it was chosen: the ridge with the least held-out error."""

    weight: Tensor  # [d_out, d_in], float64, fitted on all rows at the chosen ridge
    ridge: float
    heldout_nmse: float  # of the fit on the fitting rows alone, on the held-out rows
    prior_heldout_nmse: float  # of the prior (0 when none) on the held-out rows


def ridge_fit(fit: NormalEquations, heldout: NormalEquations, prior: Tensor | None = None,
              ridges: tuple[float, ...] = RIDGES) -> Fit:
    """The ridge whose fit on `fit` errs least on `heldout`, then refitted on both."""
    if fit.rows == 0 or heldout.rows == 0:
        raise ValueError("least squares needs fitting and held-out rows: raise calibrate.tokens "
                         "(at least 4 calibration sequences)")
    errors = [heldout.nmse(fit.solve(r, prior)) for r in ridges]
    best = min(range(len(ridges)), key=lambda k: (errors[k], k))  # ties -> the smaller ridge
    zero = torch.zeros_like(fit.xy.T) if prior is None else prior
    return Fit((fit + heldout).solve(ridges[best], prior), ridges[best], errors[best],
               heldout.nmse(zero))
