"""Log-linear laws with bootstrap confidence intervals (experiments 3 and 4).

Scylla reports acceptance growing log-linearly with the draft's training tokens and capacity:
y = a + b log10(x). We fit that by least squares and get intervals by resampling prompts, the
unit our measurements are drawn over: every bootstrap replicate draws the same prompts (with
replacement) at every x, recomputes each point's ratio estimate (tau = tokens emitted / target
forwards, summed over the drawn prompts), refits, and the percentile interval of the refitted
coefficients is reported. Points share prompts, so the resampling is paired across x.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LogLinearFit:
    """y = intercept + slope * log10(x), with percentile bootstrap intervals (None: none)."""

    intercept: float
    slope: float  # change of y per tenfold x
    r2: float  # coefficient of determination of the point fit
    intercept_ci: tuple[float, float] | None = None
    slope_ci: tuple[float, float] | None = None
    level: float = 0.95
    replicates: int = 0

    def predict(self, x) -> np.ndarray:
        return self.intercept + self.slope * np.log10(np.asarray(x, np.float64))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self, y: str = "tau", x: str = "x") -> str:
        text = f"{y} = {self.intercept:.3f} + {self.slope:.3f} log10({x})"
        if self.slope_ci is not None:
            pct = round(100 * self.level)
            text += (
                f"; slope {pct}% CI [{self.slope_ci[0]:.3f}, {self.slope_ci[1]:.3f}], "
                f"intercept [{self.intercept_ci[0]:.3f}, {self.intercept_ci[1]:.3f}]"
            )
        return text + f"; R^2 {self.r2:.3f}"


def fit_log_linear(x: Sequence[float], y: Sequence[float]) -> LogLinearFit:
    """Least-squares y = a + b log10(x); needs >= 2 distinct positive x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape=} and {y.shape=}")
    if np.any(x <= 0):
        raise ValueError(f"x must be positive for a log fit, got {x.tolist()}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"a line needs two distinct x values, got {x.tolist()}")
    slope, intercept = _line(np.log10(x), y)
    residual = y - (intercept + slope * np.log10(x))
    spread = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / spread) if spread > 0 else 1.0
    return LogLinearFit(intercept=intercept, slope=slope, r2=r2)


def _line(u: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (u, y)."""
    slope, intercept = np.polyfit(u, y, 1)
    return float(slope), float(intercept)


def ratio_points(numerators, denominators) -> np.ndarray:
    """[K] pooled ratios sum_n num[k, n] / sum_n den[k, n] (e.g. tau from per-prompt counts)."""
    num, den = _counts(numerators, denominators)
    return num.sum(axis=1) / np.maximum(den.sum(axis=1), 1e-12)


def _counts(numerators, denominators) -> tuple[np.ndarray, np.ndarray]:
    num, den = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)
    if num.shape != den.shape or num.ndim != 2:
        raise ValueError(
            f"per-prompt counts must be [points, prompts] arrays of one shape, got {num.shape=} "
            f"and {den.shape=}"
        )
    return num, den


def bootstrap_indices(num_prompts: int, replicates: int, seed: int) -> np.ndarray:
    """[R, N] prompt indices drawn with replacement (one row per replicate)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_prompts, size=(replicates, num_prompts))


def ratio_ci(
    numerators, denominators, *, replicates: int = 2000, level: float = 0.95, seed: int = 0
) -> np.ndarray:
    """[K, 2] percentile intervals of each pooled ratio, prompts resampled (error bars)."""
    num, den = _counts(numerators, denominators)
    draws = bootstrap_indices(num.shape[1], replicates, seed)  # [R, N]
    ratios = num[:, draws].sum(-1) / np.maximum(den[:, draws].sum(-1), 1e-12)  # [K, R]
    tail = 100 * (1 - level) / 2
    return np.percentile(ratios, [tail, 100 - tail], axis=1).T


def bootstrap_log_linear(
    x: Sequence[float],
    numerators,
    denominators,
    *,
    replicates: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> LogLinearFit:
    """Fit y = a + b log10(x) to pooled ratios y[k] = sum num[k] / sum den[k] (see module
    docstring), with paired percentile-bootstrap intervals over the prompts (axis 1)."""
    num, den = _counts(numerators, denominators)
    if len(x) != num.shape[0]:
        raise ValueError(f"{len(x)} x values for {num.shape[0]} rows of counts")
    point = fit_log_linear(x, ratio_points(num, den))
    u = np.log10(np.asarray(x, np.float64))
    draws = bootstrap_indices(num.shape[1], replicates, seed)  # [R, N]
    y = num[:, draws].sum(-1) / np.maximum(den[:, draws].sum(-1), 1e-12)  # [K, R]
    # Least squares for every replicate at once: the design matrix is shared.
    design = np.stack([np.ones_like(u), u], axis=1)  # [K, 2]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)  # [2, R]: intercepts, slopes
    tail = 100 * (1 - level) / 2
    lo_hi = np.percentile(coef, [tail, 100 - tail], axis=1)  # [2, 2]
    return dataclasses.replace(
        point,
        intercept_ci=(float(lo_hi[0, 0]), float(lo_hi[1, 0])),
        slope_ci=(float(lo_hi[0, 1]), float(lo_hi[1, 1])),
        level=level,
        replicates=replicates,
    )


def fit_per_drafter(rows: list[dict], x_key: str, x_label: str) -> dict:
    """{drafter: fitted law of tau against rows' `x_key`} for every drafter with at least two
    distinct x values (rows carry per-prompt `emitted` and `forwards` counts)."""
    out = {}
    for name in sorted({r["drafter"] for r in rows}):
        mine = [r for r in rows if r["drafter"] == name]
        if len({r[x_key] for r in mine}) >= 2:
            law = bootstrap_log_linear(
                [r[x_key] for r in mine],
                [r["emitted"] for r in mine],
                [r["forwards"] for r in mine],
            )
            out[name] = law.to_dict() | {"text": law.describe("tau", x_label)}
    return out


def plot_law(ax, rows: list[dict], x_key: str) -> dict:
    """Per drafter: tau at each `x_key` value with its 95% interval, and the fitted law as a line
    (drafters with two or more x values) on a log x axis of `ax`; returns {drafter: law}."""
    laws = {}
    for k, name in enumerate(dict.fromkeys(r["drafter"] for r in rows)):
        sel = sorted((r for r in rows if r["drafter"] == name), key=lambda r: r[x_key])
        x = np.array([r[x_key] for r in sel], float)
        num, den = [r["emitted"] for r in sel], [r["forwards"] for r in sel]
        tau, ci = ratio_points(num, den), ratio_ci(num, den)
        yerr = [tau - ci[:, 0], ci[:, 1] - tau]
        ax.errorbar(x, tau, yerr=yerr, fmt="o", color=f"C{k}", capsize=2)
        if len(set(x)) >= 2:
            laws[name] = law = bootstrap_log_linear(x, num, den)
            grid = np.geomspace(x.min(), x.max(), 50)
            label = f"{name}: b = {law.slope:.3f} [{law.slope_ci[0]:.3f}, {law.slope_ci[1]:.3f}]"
            ax.plot(grid, law.predict(grid), "-", color=f"C{k}", label=label)
    ax.set_xscale("log")
    ax.set_ylabel("tau (tokens per target forward, bonus included)")
    ax.grid(alpha=0.3)
    return laws
