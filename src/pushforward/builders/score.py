"""Builders for score-based models: ``score-vp``, ``score-subvp``, ``score-ve``.

A :class:`~pushforward.score.ScoreModel` (time-conditioned MLP predicting the noise, Gaussian
skip, denoising score matching) on the VP, sub-VP or VE SDE of Song et al. (2021). Defaults are
for standardized vector data (``pf.fit`` standardizes): they train on 2-D toys in a few CPU
minutes, with an EMA of the weights (``default_ema = 0.999``). ``log_prob`` and the default
sampler use the probability-flow ODE; ``sample(n, sampler="em"|"pc")`` uses the reverse SDE.
See ``docs/score.md`` for sampler timings and quality.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward.nets.mlp import _ACTIVATIONS
from pushforward.registry import register
from pushforward.score.model import ScoreModel
from pushforward.score.sde import VESDE, VPSDE, SubVPSDE, default_sigma_max


def _common(name: str, image_shape, hidden: Sequence[int], time_embed: int, activation: str) -> tuple[int, ...]:
    if image_shape is not None:
        raise ValueError(f"{name!r} is a model on vectors [N, D]; got image_shape={tuple(image_shape)} "
                         "(flatten the images and pass dim)")
    try:
        widths = tuple(int(h) for h in hidden)
    except TypeError:
        raise ValueError(f"hidden must be a tuple of layer widths, got {hidden!r}") from None
    if not widths or any(h <= 0 for h in widths):
        raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden!r}")
    if isinstance(time_embed, bool) or not isinstance(time_embed, int) or time_embed < 0 or time_embed % 2:
        raise ValueError(f"time_embed must be a non-negative even integer, got {time_embed!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
    return widths


def _model(dim, context_dim, sde, widths, time_embed, activation, **kw) -> ScoreModel:
    return ScoreModel((dim,), sde, context_dim, hidden=widths, time_embed=time_embed, activation=activation, **kw)


_OPTIONS_DOC = """
    Common options:
        hidden: widths of the time-conditioned MLP (default (128, 128, 128)).
        time_embed: sinusoidal time-embedding size (default 0: raw time; with the Gaussian skip a
            32-dim embedding drowned the 2 data inputs and stalled training, docs/score.md).
        activation: silu (default).
        s_eps: smallest diffusion time (None: the SDE's default).
        weighting: ``"sigma2"`` (eps-prediction MSE, default) or ``"likelihood"`` (g^2).
        importance: importance-sample the time for the likelihood weighting (default: True then).
        parametrization: ``"eps"`` (default) or ``"score"``. gaussian_skip: see ScoreModel.
        sampler: default sampler ``"ode"``, ``"em"`` or ``"pc"``; sde_steps, snr,
            corrector_steps, denoise_last_step: EM/PC defaults.
        solver, steps, atol, rtol: ODE defaults for ``sample(sampler="ode")`` and ``log_prob``.
"""


@register("score-vp", "Score-based model on the VP SDE (DSM, eps-prediction); PF-ODE likelihood and sampling")
def score_vp(
    dim: int,
    context_dim: int = 0,
    image_shape=None,
    *,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    s_eps: float | None = None,
    hidden: Sequence[int] = (128, 128, 128),
    time_embed: int = 0,
    activation: str = "silu",
    weighting: str = "sigma2",
    importance: bool | None = None,
    parametrization: str = "eps",
    gaussian_skip: bool = True,
    sampler: str = "ode",
    sde_steps: int = 500,
    snr: float = 0.16,
    corrector_steps: int = 1,
    denoise_last_step: bool = True,
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> ScoreModel:
    """VP SDE ``dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw``, linear ``beta`` from ``beta_min`` to
    ``beta_max`` (Song et al. 2021; continuous DDPM), prior N(0, I)."""
    widths = _common("score-vp", image_shape, hidden, time_embed, activation)
    sde = VPSDE(beta_min, beta_max, **({} if s_eps is None else {"s_eps": s_eps}))
    return _model(dim, context_dim, sde, widths, time_embed, activation, weighting=weighting,
                  importance=importance, parametrization=parametrization, gaussian_skip=gaussian_skip,
                  sampler=sampler, sde_steps=sde_steps, snr=snr, corrector_steps=corrector_steps,
                  denoise_last_step=denoise_last_step, solver=solver, steps=steps, atol=atol, rtol=rtol)


@register("score-subvp", "Score-based model on the sub-VP SDE (DSM, eps-prediction); PF-ODE likelihood and sampling")
def score_subvp(
    dim: int,
    context_dim: int = 0,
    image_shape=None,
    *,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    s_eps: float | None = None,
    hidden: Sequence[int] = (128, 128, 128),
    time_embed: int = 0,
    activation: str = "silu",
    weighting: str = "sigma2",
    importance: bool | None = None,
    parametrization: str = "eps",
    gaussian_skip: bool = True,
    sampler: str = "ode",
    sde_steps: int = 500,
    snr: float = 0.16,
    corrector_steps: int = 1,
    denoise_last_step: bool = True,
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> ScoreModel:
    """Sub-VP SDE (Song et al. 2021, eq. 13): VP drift, diffusion ``sqrt(beta (1 - e^{-2 B}))``,
    std ``1 - m^2``; prior N(0, I)."""
    widths = _common("score-subvp", image_shape, hidden, time_embed, activation)
    sde = SubVPSDE(beta_min, beta_max, **({} if s_eps is None else {"s_eps": s_eps}))
    return _model(dim, context_dim, sde, widths, time_embed, activation, weighting=weighting,
                  importance=importance, parametrization=parametrization, gaussian_skip=gaussian_skip,
                  sampler=sampler, sde_steps=sde_steps, snr=snr, corrector_steps=corrector_steps,
                  denoise_last_step=denoise_last_step, solver=solver, steps=steps, atol=atol, rtol=rtol)


@register("score-ve", "Score-based model on the VE SDE (DSM, eps-prediction); PF-ODE likelihood and sampling")
def score_ve(
    dim: int,
    context_dim: int = 0,
    image_shape=None,
    *,
    sigma_min: float = 0.01,
    sigma_max: float | None = None,
    s_eps: float | None = None,
    hidden: Sequence[int] = (128, 128, 128),
    time_embed: int = 0,
    activation: str = "silu",
    weighting: str = "sigma2",
    importance: bool | None = None,
    parametrization: str = "eps",
    gaussian_skip: bool = True,
    sampler: str = "ode",
    sde_steps: int = 500,
    snr: float = 0.16,
    corrector_steps: int = 1,
    denoise_last_step: bool = True,
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> ScoreModel:
    """VE SDE ``dx = sigma(s) sqrt(2 log(sigma_max/sigma_min)) dw``, geometric ``sigma(s)``
    (Song et al. 2021; continuous NCSN); prior N(0, sigma_max^2 I). ``sigma_max=None``:
    ``3 sqrt(2 dim)`` (Song & Ermon 2020's "largest pairwise distance" for standardized data)."""
    widths = _common("score-ve", image_shape, hidden, time_embed, activation)
    sigma_max = default_sigma_max(dim) if sigma_max is None else sigma_max
    sde = VESDE(sigma_min, sigma_max, **({} if s_eps is None else {"s_eps": s_eps}))
    return _model(dim, context_dim, sde, widths, time_embed, activation, weighting=weighting,
                  importance=importance, parametrization=parametrization, gaussian_skip=gaussian_skip,
                  sampler=sampler, sde_steps=sde_steps, snr=snr, corrector_steps=corrector_steps,
                  denoise_last_step=denoise_last_step, solver=solver, steps=steps, atol=atol, rtol=rtol)


for _fn in (score_vp, score_subvp, score_ve):
    _fn.__doc__ += _OPTIONS_DOC
