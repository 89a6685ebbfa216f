"""Score-based generative models: denoising score matching, reverse-SDE samplers and the
probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations"; Song et al. 2021b, "Maximum Likelihood Training of Score-Based Diffusion
Models").

Time. The SDE runs in diffusion time ``s`` (``s = 0`` data, ``s = 1`` noise), the library in
``t = 1 - s`` (``t = 0`` noise, ``t = 1`` data; DESIGN.md). Public methods of
:class:`ScoreModel` (``velocity``, ``score``, ``eps``, ``denoise``) take the library's ``t``; the
network and the SDE see ``s``; the conversions between noise, score, data and velocity are the
SDE's path's (:class:`~pushforward.matching.paths.AffinePath`, library time). The model is a
:class:`~pushforward.continuous.ContinuousFlow` whose base (at ``t = 0``) is the SDE prior at
``s = 1`` (``N(0, I)`` for VP/sub-VP, ``N(0, sigma_max^2 I)`` for VE) and whose ODE stops at
``t = 1 - s_eps``: samples and densities are those of ``p_{s_eps}`` (see
:mod:`pushforward.score.sde`). The names ``score-vp``, ``score-subvp`` and ``score-ve`` are
registered at the bottom of this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward._validate import (
    check_choice,
    check_embed_size,
    check_positive_float,
    check_positive_int,
    check_widths,
)
from pushforward.continuous.cnf import ContinuousFlow, Field
from pushforward.continuous.divergence import network_divergence
from pushforward.continuous.ode import SOLVERS
from pushforward.matching.paths import AffinePath, expand_time
from pushforward.nets import TimeMLP
from pushforward.registry import register
from pushforward.score.sde import SDE, SDES, SDEPrior, TimeLike, make_sde

PARAMETRIZATIONS = ("eps", "score")
WEIGHTINGS = ("sigma2", "likelihood")
SAMPLERS = ("ode", "em", "pc")


class ScoreModel(ContinuousFlow):
    """A score-based model: a time-conditioned network on a forward SDE, trained by denoising
    score matching (DSM), sampled by the reverse SDE or the probability-flow (PF) ODE.

    Network. By default the network predicts the noise ``eps`` of ``x_s = m(s) x_0 + sigma(s)
    eps`` (``parametrization="eps"``; ``score = -eps / sigma``) or, with ``"score"``, the score
    itself. With ``gaussian_skip`` (default) the output is added to the exact prediction for
    standardized data ``N(0, I)`` (``eps = sigma x / (m^2 + sigma^2)``, ``score = -x / (m^2 +
    sigma^2)``) and the last layer starts at zero, so an untrained model is exactly ``N(0, I)``
    in standardized units and the network learns only the departure from it (the Gaussian part
    of the skip connection of Karras et al. 2022, "EDM"). The network is called as
    ``net(x [N, D], s [N], context [N, C] | None)`` with the *diffusion* time ``s``.

    Loss (DSM; Vincent 2011, Song et al. 2021 eq. 7), per dimension::

        L = E_{s, x_0, eps} [ lambda(s) / sigma(s)^2 * ||eps_theta(x_s, s) - eps||^2 ] / D

    ``weighting="sigma2"`` (default): ``lambda = sigma^2``, the plain eps-prediction MSE of Ho et
    al. (2020) with ``s ~ U[s_eps, 1]``. ``"likelihood"``: ``lambda = g(s)^2`` (Song et al.
    2021b), for which ``D/2 (1 - s_eps) L`` is the score-matching term of the bound on
    ``-log p_{s_eps}``; its weight ``g^2 / sigma^2`` grows like ``1/s`` for VP, so by default
    (``importance=True``) ``s`` is drawn from a density proportional to it (tabulated inverse CDF
    on a log-spaced grid) and reweighted by ``w(s) / q(s)``: the same expectation, far less
    variance. For VE, ``g^2 / sigma^2`` is constant and both weightings coincide up to scale.

    Samplers (``sample(n, sampler=...)``):

    * ``"ode"``: the PF ODE ``dx/dt = -(f(x, s) - 1/2 g(s)^2 score)`` from the prior at ``t = 0``
      to ``t = 1 - s_eps``, with :func:`pushforward.continuous.odeint` (``solver``, ``steps``,
      ``atol``, ``rtol``); deterministic given the prior draw, and the same flow as ``log_prob``.
    * ``"em"``: Euler–Maruyama on the reverse SDE ``dx = [f - g^2 score] ds + g dw_bar`` over
      ``steps`` uniform steps from ``s = 1`` to ``s_eps``.
    * ``"pc"``: predictor–corrector (Song et al. 2021, Alg. 2/3): at each step
      ``corrector_steps`` Langevin moves ``x += e score + sqrt(2 e) z`` with
      ``e = 2 alpha (snr ||z|| / ||score||)^2`` (norms averaged over the batch, as in the
      paper's code; ``alpha = m(s_next)^2 / m(s)^2``, 1 for VE), then one EM step.
    * ``denoise_last_step`` (EM/PC): return Tweedie's ``E[x_0 | x_{s_eps}] = (x + sigma^2
      score) / m`` instead of the last noisy state.

    EM/PC run under ``torch.no_grad()``; the ODE sampler follows the caller's grad mode.

    Args:
        event_shape: ``(D,)`` (or an int ``D``).
        sde: a :class:`~pushforward.score.sde.SDE`, or its name ``"vp"`` (default), ``"subvp"``
            or ``"ve"`` built from the next five options (:func:`~pushforward.score.sde.make_sde`).
        context_dim: conditioning size ``C`` (0: unconditional; the prior is unconditional).
        net: a module ``(x, s, context) -> [N, D]``; default a :class:`~pushforward.nets.TimeMLP`.
        beta_min: VP/sub-VP smallest noise rate.
        beta_max: VP/sub-VP largest noise rate.
        sigma_min: VE smallest noise scale.
        sigma_max: VE largest noise scale (None: ``3 sqrt(2 D)``,
            :func:`~pushforward.score.sde.default_sigma_max`).
        s_eps: smallest diffusion time (None: the SDE's default, 1e-3 VP/sub-VP, 1e-5 VE).
        parametrization: ``"eps"`` or ``"score"``.
        weighting: ``"sigma2"`` or ``"likelihood"``.
        importance: importance-sample ``s`` (only with ``"likelihood"``; default True there).
        gaussian_skip: add the ``N(0, I)`` prediction and zero-init the last layer (see above).
        hidden: the default network's hidden widths.
        time_embed: the default network's time embedding size (0: raw time; why in
            docs/score.md).
        activation: the default network's activation.
        sampler: ``sample``'s default sampler.
        sde_steps: the SDE samplers' default number of steps.
        snr: the predictor-corrector sampler's default signal-to-noise ratio.
        corrector_steps: the predictor-corrector sampler's default corrector steps per step.
        denoise_last_step: whether the SDE samplers end with a denoising step by default.
        solver: ODE solver default (``sample(sampler="ode")`` and ``log_prob``).
        steps: ODE steps default for fixed-grid solvers.
        atol: ODE absolute tolerance default.
        rtol: ODE relative tolerance default.
    """

    default_ema = 0.999
    default_lr = 2e-3
    default_batch_size = 512

    def __init__(
        self,
        event_shape: int | Sequence[int],
        sde: SDE | str = "vp",
        context_dim: int = 0,
        net: nn.Module | None = None,
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float | None = None,
        s_eps: float | None = None,
        parametrization: str = "eps",
        weighting: str = "sigma2",
        importance: bool | None = None,
        gaussian_skip: bool = True,
        hidden: Sequence[int] = (128, 128, 128),
        time_embed: int = 0,
        activation: str = "silu",
        sampler: str = "ode",
        sde_steps: int = 500,
        snr: float = 0.16,
        corrector_steps: int = 1,
        denoise_last_step: bool = True,
        solver: str = "dopri5",
        steps: int | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ):
        event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        sde_name, by_name = sde, isinstance(sde, str)
        sde = _resolve_sde(sde, math.prod(event_shape), dict(beta_min=beta_min, beta_max=beta_max,
                                                             sigma_min=sigma_min, sigma_max=sigma_max, s_eps=s_eps))
        # The PF ODE runs in library time from the prior (t = 0, s = 1) to t = 1 - s_eps: the
        # base class's sample/log_prob/trajectory then serve it unchanged.
        super().__init__(event_shape, context_dim, base=SDEPrior(event_shape, sde.prior_std),
                         t_span=(0.0, 1.0 - sde.s_eps))
        self.sde = sde
        if by_name:
            # s_eps=None and VE's sigma_max=None are rules (the SDE's default, 3 sqrt(2 D)): record
            # their values so a reload does not follow a later change of the rule.
            self.resolved_options = {"s_eps": sde.s_eps}
            if sde_name == "ve":
                self.resolved_options["sigma_max"] = sde.sigma_max
        self.parametrization = check_choice(parametrization, PARAMETRIZATIONS, "parametrization")
        self.weighting = check_choice(weighting, WEIGHTINGS, "weighting")
        if importance is None:
            importance = weighting == "likelihood"
        if importance and weighting != "likelihood":
            raise ValueError("importance=True needs weighting='likelihood' (sigma2 weighting is flat in s)")
        self.importance = bool(importance)
        self.gaussian_skip = bool(gaussian_skip)
        self.default_sampler = check_choice(sampler, SAMPLERS, "sampler")
        self.default_sde_steps = check_positive_int(sde_steps, "sde_steps")
        self.default_corrector_steps = check_positive_int(corrector_steps, "corrector_steps")
        self.default_snr = check_positive_float(snr, "snr")
        self.default_denoise = bool(denoise_last_step)
        check_choice(solver, SOLVERS, "solver")
        if steps is not None:
            check_positive_int(steps, "steps")
        self.default_solver, self.default_steps = solver, steps
        self.default_atol, self.default_rtol = check_positive_float(atol, "atol"), check_positive_float(rtol, "rtol")
        if net is None:
            if len(event_shape) != 1:
                raise ValueError(f"the default network needs vector data (D,), got event_shape {event_shape}; "
                                 "pass net=")
            net = TimeMLP(event_shape[0], event_shape[0], context_dim, check_widths(hidden),
                          check_embed_size(time_embed), activation)
            if gaussian_skip:
                last = net.net[-1]
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        self.net = net
        if self.importance:
            grid, cdf = self._importance_table()
            self.register_buffer("_is_grid", grid, persistent=False)
            self.register_buffer("_is_cdf", cdf, persistent=False)

    # ------------------------------------------------------------------ time
    @property
    def s_eps(self) -> float:
        """Smallest diffusion time (the ODE and samplers stop at ``t = 1 - s_eps``)."""
        return self.sde.s_eps

    @property
    def path(self) -> AffinePath:
        """The SDE's Gaussian path in library time (its conversions serve this model)."""
        return self.sde.path

    @property
    def t_end(self) -> float:
        """Library time where sampling and likelihood stop: ``1 - s_eps``."""
        return 1.0 - self.sde.s_eps

    def _s_vec(self, s: TimeLike, x: Tensor) -> Tensor:
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        return s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(x.shape[0])

    # ------------------------------------------------------------------ predictions (diffusion time)
    def _gauss_var(self, sb: Tensor) -> Tensor:
        m = self.sde.mean_coeff(sb)
        return m * m + self.sde.std(sb).pow(2)

    def _net(self, x: Tensor, s: Tensor, context: Tensor | None) -> Tensor:
        return self.net(x, self._s_vec(s, x), context)

    def eps_s(self, x: Tensor, s: TimeLike, context: Tensor | None = None) -> Tensor:
        """Predicted noise ``E[eps | x_s = x]`` at diffusion time ``s``, standardized units ``[N, ...]``."""
        sb = expand_time(self._s_vec(s, x), x)
        out = self._net(x, sb, context)
        if self.parametrization == "eps":
            if self.gaussian_skip:
                out = out + self.sde.std(sb) * x / self._gauss_var(sb)
            return out
        return -self.sde.std(sb) * self.score_s(x, s, context, _out=out)

    def score_s(self, x: Tensor, s: TimeLike, context: Tensor | None = None, _out: Tensor | None = None) -> Tensor:
        """Predicted score ``grad_x log p_s(x)`` at diffusion time ``s``, standardized units ``[N, ...]``."""
        sb = expand_time(self._s_vec(s, x), x)
        if self.parametrization == "eps":
            return -self.eps_s(x, s, context) / self.sde.std(sb)
        out = self._net(x, sb, context) if _out is None else _out
        if self.gaussian_skip:
            out = out - x / self._gauss_var(sb)
        return out

    # ------------------------------------------------------------------ predictions (library time)
    def eps(self, x: Tensor, t: TimeLike, context: Tensor | None = None) -> Tensor:
        """Predicted noise at library time ``t`` (``s = 1 - t``), standardized units."""
        return self.eps_s(x, 1.0 - torch.as_tensor(t, dtype=x.dtype, device=x.device), context)

    def score(self, x: Tensor, t: TimeLike, context: Tensor | None = None) -> Tensor:
        """Score ``grad_x log p(x)`` of the model's marginal at library time ``t`` (``s = 1 - t``),
        standardized units: x ``[N, D]``, t float/``[]``/``[N]`` -> ``[N, D]``."""
        return self.score_s(x, 1.0 - torch.as_tensor(t, dtype=x.dtype, device=x.device), context)

    def denoise(self, x: Tensor, t: TimeLike, context: Tensor | None = None) -> Tensor:
        """Tweedie's estimate of the data ``E[x_1 | x_t = x]`` at library time ``t`` (``s = 1 - t``)."""
        t = self._s_vec(torch.as_tensor(t, dtype=x.dtype, device=x.device), x)
        return self.path.epsilon_to_target(self.eps_s(x, 1.0 - t, context), x, t)

    def velocity(self, x: Tensor, t: TimeLike, context: Tensor | None = None) -> Tensor:
        """PF-ODE velocity in library time: ``dx/dt = -(f(x, s) - 1/2 g(s)^2 score)`` at ``s = 1 - t``.

        ``x`` ``[N, D]``, ``t`` float/``[]``/``[N]`` -> ``[N, D]`` (standardized units). Defined on
        ``t`` in ``[0, 1 - s_eps]``; the marginal it transports from the prior is ``p_{1 - t}``.
        Outside that interval ``t`` is clamped into it: adaptive solvers probe beyond the ends
        (torchdiffeq's first-step heuristic jumps far past ``t = 0``, where the PF-ODE of a
        prior-matched SDE is nearly at rest) and the SDE coefficients are not defined there.
        """
        s = 1.0 - torch.as_tensor(t, dtype=x.dtype, device=x.device)
        s = self._s_vec(s.clamp(self.s_eps, 1.0), x)
        return self.path.epsilon_to_velocity(self.eps_s(x, s, context), x, 1.0 - s)

    def _has_fast_divergence(self) -> bool:
        return self.velocity_field().with_divergence is not None

    def velocity_field(self, context: Tensor | None = None) -> Field:
        """The PF-ODE field for ``context``, with an exact divergence when the network has one.

        The velocity is affine in the network's output: ``u = A x + B eps``
        (:meth:`~pushforward.matching.paths.AffinePath.epsilon_velocity_coeffs`) with ``eps = p net + c x`` (``p = 1``, ``c = sigma / (m^2 + sigma^2)``
        with ``gaussian_skip``, for ``"eps"``; ``p = -sigma`` for ``"score"``), so ``div u =
        A D + B (p div net + c D)``, with ``div net`` from the network's
        ``forward_with_divergence`` (the default :class:`~pushforward.nets.TimeMLP`'s exact trace).
        """
        net_div = network_divergence(self.net, context) if len(self.event_shape) == 1 else None

        def velocity(x: Tensor, t: TimeLike) -> Tensor:
            return self.velocity(x, t, context)

        if net_div is None:
            return Field(velocity)

        def with_divergence(x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
            s = 1.0 - torch.as_tensor(t, dtype=x.dtype, device=x.device)
            s = self._s_vec(s.clamp(self.s_eps, 1.0), x)
            out, div_out = net_div(x, s)
            sb = expand_time(s, x)  # [N, 1]
            d = x.shape[1]
            sd = self.sde.std(sb)
            p = 1.0 if self.parametrization == "eps" else -sd
            c = sd / self._gauss_var(sb) if self.gaussian_skip else torch.zeros_like(sd)
            a, b = self.path.epsilon_velocity_coeffs(x, 1.0 - sb)
            u = a * x + b * (p * out + c * x)
            div = a * d + b * (p * div_out[:, None] + c * d)
            return u, div.reshape(-1)

        return Field(velocity, with_divergence)

    # ------------------------------------------------------------------ loss
    def _importance_table(self, k: int = 2048) -> tuple[Tensor, Tensor]:
        """Log-spaced grid on ``[s_eps, 1]`` and the normalised CDF of ``g^2 / sigma^2`` on it."""
        grid = torch.logspace(math.log10(self.s_eps), 0.0, k, dtype=torch.float64)
        w = self._lik_weight(grid)
        cdf = torch.cat([grid.new_zeros(1), torch.cumsum(0.5 * (w[1:] + w[:-1]) * (grid[1:] - grid[:-1]), 0)])
        return grid, cdf / cdf[-1]

    def _lik_weight(self, s: Tensor) -> Tensor:
        return self.sde.diffusion(s).pow(2) / self.sde.std(s).pow(2)

    def _draw_time(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """``s [n]`` and the per-sample weight of ``||eps_theta - eps||^2`` (see class doc)."""
        u = torch.rand(n, dtype=like.dtype, device=like.device)
        if not self.importance:
            s = self.s_eps + (1.0 - self.s_eps) * u
            w = self._lik_weight(s) if self.weighting == "likelihood" else torch.ones_like(s)
            return s, w
        grid, cdf = self._is_grid.to(like), self._is_cdf.to(like)
        k = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, grid.shape[0] - 2)
        ds, dc = grid[k + 1] - grid[k], cdf[k + 1] - cdf[k]
        s = grid[k] + (u - cdf[k]) / dc * ds
        q = dc / ds  # density of the piecewise-linear CDF on cell k
        return s, self._lik_weight(s) / (q * (1.0 - self.s_eps))

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        n = x.shape[0]
        s, w = self._draw_time(n, x)
        xs, noise = self.sde.perturb(x, s)
        err = (self.eps_s(xs, s, context) - noise).pow(2).reshape(n, -1).mean(-1)
        return (w * err).mean()

    def dsm_loss(self, x: Tensor, s: Tensor, noise: Tensor, context: Tensor | None = None) -> Tensor:
        """Per-sample DSM error ``||eps_theta(x_s, s) - eps||^2 / D`` at given ``s [N]`` and
        ``noise [N, D]`` (standardized units; no weighting) -> ``[N]``. For checks and plots."""
        xs, _ = self.sde.perturb(x, s, noise)
        return (self.eps_s(xs, s, context) - noise).pow(2).reshape(x.shape[0], -1).mean(-1)

    # ------------------------------------------------------------------ ODE: sample, log_prob
    def _sample(self, n, context, generator=None, sampler=None, steps=None, solver=None, atol=None,
                rtol=None, snr=None, corrector_steps=None, denoise_last_step=None, x0=None):
        sampler = check_choice(sampler or self.default_sampler, SAMPLERS, "sampler")
        x0 = self.base.sample(n, context, generator) if x0 is None else x0
        if sampler == "ode":
            x = super()._sample(n, context, steps=steps, solver=solver, atol=atol, rtol=rtol, x0=x0)
            if denoise_last_step:
                x = self.denoise(x, self.t_end, context)
            return x
        with torch.no_grad():
            return self._sde_sample(
                x0, context, generator,
                check_positive_int(steps if steps is not None else self.default_sde_steps, "steps"),
                sampler == "pc",
                self.default_snr if snr is None else float(snr),
                check_positive_int(corrector_steps if corrector_steps is not None else self.default_corrector_steps,
                                   "corrector_steps"),
                self.default_denoise if denoise_last_step is None else bool(denoise_last_step),
            )

    def _sde_sample(self, x, context, generator, steps, corrector, snr, corrector_steps, denoise):
        sde, n = self.sde, x.shape[0]
        grid = torch.linspace(1.0, self.s_eps, steps + 1, dtype=torch.float64).tolist()
        nfe = 0

        def randn():
            return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

        for s, s_next in zip(grid[:-1], grid[1:]):
            h = s - s_next
            st = x.new_tensor(s)
            if corrector:
                m_now, m_next = sde.mean_coeff(st), sde.mean_coeff(x.new_tensor(s_next))
                alpha = (m_next / m_now).pow(2)
                for _ in range(corrector_steps):
                    grad = self.score_s(x, st, context)
                    z = randn()
                    g_norm = grad.reshape(n, -1).norm(dim=-1).mean()
                    z_norm = z.reshape(n, -1).norm(dim=-1).mean()
                    step = 2 * alpha * (snr * z_norm / g_norm.clamp_min(1e-12)).pow(2)
                    x = x + step * grad + torch.sqrt(2 * step) * z
                    nfe += 1
            g = sde.diffusion(st)
            x = x - h * (sde.drift(x, st) - g * g * self.score_s(x, st, context)) + g * math.sqrt(h) * randn()
            nfe += 1
        if denoise:
            x = self.denoise(x, self.t_end, context)
            nfe += 1
        self.nfe = nfe
        return x

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, sde={self.sde!r}, parametrization={self.parametrization!r}, "
                f"weighting={self.weighting!r}, importance={self.importance}, sampler={self.default_sampler!r}")


def _resolve_sde(sde: SDE | str, dim: int, options: dict) -> SDE:
    """``sde`` itself, or the SDE of that name built from ``options`` (the SDE's own parameters,
    which are refused next to an SDE object: they would be silently ignored)."""
    if isinstance(sde, str):
        return make_sde(sde, dim, **options)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a pushforward.score.SDE or one of {tuple(SDES)}, got {type(sde).__name__}")
    defaults = ScoreModel.__init__.__kwdefaults__
    given = [k for k, v in options.items() if v != defaults[k]]
    if given:
        raise ValueError(f"options {given} belong to the SDE: pass them to the SDE object or give sde by name")
    return sde


def _vector_inputs(dim: int, context_dim: int, image_shape, options: dict) -> dict:
    # build()'s dim is the event of vector data; image_shape is refused by build itself.
    return {"event_shape": (dim,), "context_dim": context_dim}


_DESCRIPTION = "Score-based model on the {} SDE (DSM, eps-prediction); PF-ODE likelihood and sampling"
for _name, _sde in (("score-vp", "vp"), ("score-subvp", "subvp"), ("score-ve", "ve")):
    register(_name, ScoreModel, _DESCRIPTION.format({"vp": "VP", "subvp": "sub-VP", "ve": "VE"}[_sde]),
             preset={"sde": _sde}, inputs=_vector_inputs)
