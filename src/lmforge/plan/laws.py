"""Scaling laws: the forms, the published constants, and compute-optimal frontiers.

Three kinds of law, all answering ``optimal(C) -> (N, D)`` for a compute budget of C training FLOPs
(C = 6 N D throughout, as in Kaplan et al. and Chinchilla):

* :class:`ParametricLaw` - Chinchilla's L(N, D) = E + A / N^alpha + B / D^beta, with the closed-form
  frontier N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
  a = beta / (alpha+beta), b = alpha / (alpha+beta).
* :class:`KaplanLaw` - Kaplan et al. 2020: L(N), L(D), L(N, D) and N_opt = 1.3e9 (C / PF-day)^0.73
  (non-embedding N).
* :class:`PowerLawFrontier` - N_opt = k C^a, D_opt = C / (6 N_opt), e.g. fitted to Chinchilla's
  Table 3 or produced by Approaches 1 and 2 of :mod:`lmforge.plan.fit`. It predicts no loss.

:func:`load_law` turns a preset name or a JSON file written by ``lmforge fit`` into a law. Besides
the published presets, :data:`LAWS` holds the laws lmforge fitted with its own sweeps (JSON files in
``lmforge/plan/fitted/``, each with its provenance and the run it was measured on:
:func:`fitted_on`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog

from lmforge.errors import ConfigError

PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day, Kaplan's unit of compute

# Chinchilla Table 3 (Approach 1 projections): parameters, training FLOPs, tokens
CHINCHILLA_TABLE3: tuple[tuple[float, float, float], ...] = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)


def _positive_budget(flops: Any) -> np.ndarray | float:
    c = np.asarray(flops, dtype=float)
    if np.any(~np.isfinite(c)) or np.any(c <= 0):
        raise ConfigError(f"flops: the compute budget must be a positive number of FLOPs, got {flops}")
    return c if c.ndim else float(c)


@dataclass
class Law:
    """Base of all laws. ``counts`` says which parameters N counts: ``total`` or ``non_embedding``."""

    name: str

    kind = "law"
    counts = "total"

    def optimal(self, flops):
        raise NotImplementedError

    def loss(self, n, d):
        """Predicted loss, or None for a law that only knows the frontier."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class ParametricLaw(Law):
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    kind = "parametric"

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0 and self.A > 0 and self.B > 0):
            raise ConfigError(
                f"law {self.name}: A, B, alpha and beta must be positive to define a frontier "
                f"(got A={self.A:.4g}, B={self.B:.4g}, alpha={self.alpha:.4g}, beta={self.beta:.4g})"
            )

    # ---- the closed-form frontier ----------------------------------------------------------
    @property
    def a(self) -> float:
        """Exponent of N_opt ~ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ~ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return out if out.ndim else float(out)

    def optimal(self, flops):
        """(N_opt, D_opt) minimising L(N, D) on the line 6 N D = C."""
        c6 = _positive_budget(flops) / 6
        return self.G * c6**self.a, c6**self.b / self.G

    def optimal_loss(self, flops):
        """L on the frontier: E + K (C/6)^-(alpha beta / (alpha + beta))."""
        return self.loss(*self.optimal(flops))

    def _frontier_constant(self) -> float:
        return self.A * self.G**-self.alpha + self.B * self.G**self.beta

    def compute_for_loss(self, target: float) -> float:
        """The smallest training compute whose optimal allocation reaches ``target`` loss."""
        if not target > self.E:
            raise ConfigError(
                f"target loss {target} is not above the irreducible loss E = {self.E:.4g} "
                f"of law {self.name}: no finite model reaches it"
            )
        exponent = self.alpha * self.beta / (self.alpha + self.beta)
        return 6 * ((target - self.E) / self._frontier_constant()) ** (-1 / exponent)


@dataclass
class PowerLawFrontier(Law):
    """N_opt = k C^a and D_opt = C / (6 N_opt): a frontier without a loss model."""

    k: float
    a: float
    counts: str = "total"

    kind = "frontier"

    @property
    def b(self) -> float:
        return 1 - self.a

    def optimal(self, flops):
        c = _positive_budget(flops)
        n = self.k * c**self.a
        return n, c / (6 * n)

    @classmethod
    def from_points(
        cls, name: str, flops, params, tokens=None, minimax: bool = False, counts: str = "total"
    ) -> PowerLawFrontier:
        """Fit log N = log k + a log C: least squares, or ``minimax`` (the smallest largest error).

        With ``tokens`` the residuals of log D = log(C / 6N) count as well. Chinchilla's Table 3
        rounds its columns independently, so they disagree (the 67B row prints 1.5T tokens at
        5.76e23 FLOPs, where C / 6N = 1.43T); least squares then leaves that row's tokens 5% off,
        while the minimax fit keeps every row of both columns within 3.1%.
        """
        c, n = np.asarray(flops, float), np.asarray(params, float)
        if tokens is not None:  # the N implied by each D: C / (6 D)
            c, n = np.concatenate([c, c]), np.concatenate([n, c / (6 * np.asarray(tokens, float))])
        x, y = np.log(c), np.log(n)
        if minimax:  # linear programme: min t  s.t.  |y - (log k + a x)| <= t
            ones = np.ones_like(x)
            rows = np.vstack([np.c_[-ones, -x, -ones], np.c_[ones, x, -ones]])
            res = linprog([0, 0, 1], A_ub=rows, b_ub=np.concatenate([-y, y]), bounds=[(None, None)] * 3)
            logk, a = res.x[:2]
        else:
            a, logk = np.polyfit(x, y, 1)
        return cls(name=name, k=float(np.exp(logk)), a=float(a), counts=counts)


@dataclass
class KaplanLaw(Law):
    """Kaplan et al. 2020 (non-embedding N, WebText2 nats): their Table 2 fits and eq. (1.1)-(1.5)."""

    alpha_n: float = 0.076  # L(N) = (N_c / N)^alpha_N
    n_c: float = 8.8e13
    alpha_d: float = 0.095  # L(D) = (D_c / D)^alpha_D
    d_c: float = 5.4e13
    joint_alpha_n: float = 0.076  # L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D
    joint_alpha_d: float = 0.103
    joint_n_c: float = 6.4e13
    joint_d_c: float = 1.8e13
    k_pf_day: float = 1.3e9  # N_opt = k (C / PF-day)^a
    a: float = 0.73

    kind = "kaplan"
    counts = "non_embedding"

    def loss_n(self, n):
        """Loss of a model of N parameters trained to convergence."""
        return (self.n_c / np.asarray(n, float)) ** self.alpha_n

    def loss_d(self, d):
        """Loss of a large model trained (with early stopping) on D tokens."""
        return (self.d_c / np.asarray(d, float)) ** self.alpha_d

    def loss(self, n, d):
        n, d = np.asarray(n, float), np.asarray(d, float)
        ratio = self.joint_alpha_n / self.joint_alpha_d
        out = ((self.joint_n_c / n) ** ratio + self.joint_d_c / d) ** self.joint_alpha_d
        return out if out.ndim else float(out)

    def optimal(self, flops):
        c = _positive_budget(flops)
        n = self.k_pf_day * (c / PF_DAY) ** self.a
        return n, c / (6 * n)


LAWS: dict[str, Law] = {
    "chinchilla": ParametricLaw("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "epoch": ParametricLaw("epoch", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
    "sardana": ParametricLaw("sardana", E=1.69, A=406.4, B=410.7, alpha=0.336, beta=0.283),
    "chinchilla-table3": PowerLawFrontier.from_points(
        "chinchilla-table3", *zip(*[(c, n, d) for n, c, d in CHINCHILLA_TABLE3]), minimax=True
    ),
    "kaplan": KaplanLaw("kaplan"),
}
LAW_NOTES = {
    "chinchilla": "Hoffmann et al. 2022, Approach 3 as printed; implies about twice the tokens per parameter of "
    "their Approaches 1-2 (the epoch refit agrees with those)",
    "epoch": "Besiroglu et al. 2024 refit of Chinchilla's data (~20 tokens per parameter)",
    "sardana": "Sardana et al. 2024 constants (inference-aware scaling)",
    "chinchilla-table3": "N_opt = k C^a fitted (minimax) to Chinchilla's Table 3 (Approach 1 projections)",
    "kaplan": "Kaplan et al. 2020 (non-embedding N, N_opt ~ C^0.73)",
}

_KINDS = {cls.kind: cls for cls in (ParametricLaw, PowerLawFrontier, KaplanLaw)}
FITTED_DIR = Path(__file__).parent / "fitted"  # laws lmforge fitted on its bundled corpus, shipped as presets


def law_from_dict(d: dict[str, Any], source: str = "law") -> Law:
    d = dict(d.get("law", d))  # accept the whole output of `lmforge fit` or just its law
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise ConfigError(f"{source}: unknown law kind {kind!r}; expected one of {', '.join(_KINDS)}")
    try:
        return _KINDS[kind](**d)
    except TypeError as e:
        raise ConfigError(f"{source}: malformed {kind} law ({e})") from None


def _law_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON law file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with a law")
    return data


def _fitted_presets() -> dict[str, dict[str, Any]]:
    return {p.stem: _law_file(p) for p in sorted(FITTED_DIR.glob("*.json"))}


_FITTED = _fitted_presets()
for _name, _data in _FITTED.items():
    LAWS[_name] = law_from_dict({**_data["law"], "name": _name}, f"fitted law {_name}")
    LAW_NOTES[_name] = _data["provenance"]["note"]


def fitted_on(spec: str | Path | Law | dict | None) -> dict[str, Any] | None:
    """The run a law was measured on (data, tokenizer, context, objective, batch, learning rate), as
    ``lmforge sweep`` records it in its law files; None for the published laws and plain fits."""
    if spec is None or isinstance(spec, Law):
        return None
    if isinstance(spec, dict):
        return spec.get("fitted_on")
    key = str(spec)
    if key.lower() in _FITTED:
        return _FITTED[key.lower()].get("fitted_on")
    path = Path(key)
    return _law_file(path).get("fitted_on") if path.is_file() else None


def load_law(spec: str | Path | Law | dict) -> Law:
    """A law from a preset name (:data:`LAWS`), a JSON file written by ``lmforge fit``, or a dict."""
    if isinstance(spec, Law):
        return spec
    if isinstance(spec, dict):
        return law_from_dict(spec)
    key = str(spec)
    if key.lower() in LAWS:
        return LAWS[key.lower()]
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"law: {key!r} is neither a preset ({', '.join(LAWS)}) nor a JSON file")
    return law_from_dict(_law_file(path), str(path))


def describe(law: Law) -> str:
    """One line: the formula with its constants."""
    if isinstance(law, ParametricLaw):
        return (
            f"L = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.4g} + {law.B:.4g}/D^{law.beta:.4g} "
            f"(N_opt ~ C^{law.a:.3f}, D_opt ~ C^{law.b:.3f})"
        )
    if isinstance(law, KaplanLaw):
        return f"Kaplan: N_opt = {law.k_pf_day:.3g} (C/PF-day)^{law.a} (non-embedding N)"
    if isinstance(law, PowerLawFrontier):
        return f"N_opt = {law.k:.4g} C^{law.a:.4f}, D_opt = C / (6 N_opt)"
    return law.name


def tokens_per_param(law: Law, flops: float) -> float:
    n, d = law.optimal(flops)
    return float(d / n)
