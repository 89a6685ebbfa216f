"""Tutorial 7: flow matching.

Flow matching regresses a velocity field onto the velocity of a *conditional* path between a
noise draw ``x_0`` and a data draw ``x_1`` (Lipman et al. 2023; time: t = 0 noise, t = 1 data):

    x_t = (1 - t) x_0 + t x_1,   loss = E || v_theta(x_t, t) - (x_1 - x_0) ||^2.

Its minimiser is the *marginal* velocity ``u_t(x) = E[x_1 - x_0 | x_t = x]``, whose flow carries
N(0, I) to the data.

1. The classic N(0, 1) -> N(2, 0.5^2) example. Here ``u_t`` is known in closed form
   (everything is jointly Gaussian): with ``m_t = 2t`` and ``s_t^2 = (1-t)^2 + 0.25 t^2``,
   ``u_t(x) = 2 + (s_t'/s_t)(x - m_t)``. We train ``pf.build("fm", 1)``, compare its field with
   the exact one and draw histograms over time.
2. Euler vs midpoint on that exact field: error of the final mean and std against the steps
   (first vs second order).
3. A 2-D field (8 Gaussians) as a quiver plot at several times, and the sample paths of the
   straight (OT) path next to the curved variance-preserving diffusion path (``"fm"`` vs the
   probability-flow ODE of ``"score-vp"``).

Run: ``python examples/07_flow_matching.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pushforward as pf  # noqa: E402
from pushforward.continuous import odeint  # noqa: E402

MU, SIGMA = 2.0, 0.5


def exact_velocity(x: torch.Tensor, t) -> torch.Tensor:
    """Marginal velocity of the straight path from N(0, 1) to N(MU, SIGMA^2), independent pairs."""
    t = torch.as_tensor(t, dtype=x.dtype)
    var = (1 - t) ** 2 + SIGMA**2 * t**2
    dvar_half = -(1 - t) + SIGMA**2 * t  # s_t s_t'
    return MU + dvar_half / var * (x - MU * t)


def part_gaussian(out: Path, steps: int) -> dict:
    target = pf.data.get_target("gauss1d")
    g = torch.Generator().manual_seed(0)
    x = target.sample(8000, generator=g)
    torch.manual_seed(0)
    # standardize=False: the model then learns exactly u_t above (in the user's units).
    model = pf.build("fm", 1, hidden=(64, 64))
    pf.fit(model, x, steps=steps, lr=3e-3, standardize=False, progress=False)

    with torch.no_grad():
        grid = torch.linspace(-3, 4, 200)[:, None]
        errs = []
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
        for t, c in zip((0.1, 0.5, 0.9), ("C0", "C1", "C2")):
            learned = model.velocity(grid, t)
            exact = exact_velocity(grid, t)
            # Weight by where the mass is at time t: the field elsewhere is never trained.
            var = (1 - t) ** 2 + SIGMA**2 * t**2
            w = torch.exp(-0.5 * (grid - MU * t) ** 2 / var)
            errs.append(float(((learned - exact).abs() * w).sum() / w.sum()))
            # Drawn where the mass is at time t (m_t +- 2.5 s_t): the field elsewhere is never trained.
            near = ((grid - MU * t).abs() < 2.5 * var**0.5).squeeze(1)
            ax[0].plot(grid[near], exact[near], "--", color=c, lw=1)
            ax[0].plot(grid[near], learned[near], color=c, label=f"t = {t}")
        ax[0].set_xlabel("x")
        ax[0].set_ylabel("u_t(x)")
        ax[0].set_title("learned (solid) vs exact (dashed) velocity")
        ax[0].legend(fontsize=8)
        traj = model.trajectory(4000, steps=50, generator=torch.Generator().manual_seed(1))
        final = traj[-1, :, 0]
        ax[1].hist(final.numpy(), bins=60, density=True, alpha=0.6, label="samples at t = 1")
        ax[1].plot(grid, target.log_prob(grid).exp(), "k--", label="N(2, 0.5²)")
        ax[1].legend(fontsize=8)
        ax[1].set_title(f"mean {float(final.mean()):.3f}, std {float(final.std()):.3f}")
    fig.tight_layout()
    fig.savefig(out / "07_gaussian_velocity.png", dpi=110)
    plt.close(fig)
    pf.viz.plot_hist_over_time(traj, out / "07_hist_over_time.png", source=pf.distributions.StandardNormal(1),
                               target=target, title="N(0,1) → N(2, 0.5²): flow matching, histograms over time")
    w2 = pf.metrics.w2(final[:, None], target.sample(4000, generator=g))
    print(f"[1] 1-D FM: mean |learned - exact velocity| {sum(errs) / len(errs):.3f}; samples mean "
          f"{float(final.mean()):.3f} std {float(final.std()):.3f}; W2 to N(2, 0.25) {w2:.3f}")
    return {"velocity_error": sum(errs) / len(errs), "mean": float(final.mean()), "std": float(final.std()),
            "w2": w2}


def part_solvers(out: Path) -> dict:
    z = torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = {}
    fig, ax = plt.subplots(figsize=(5, 3.8))
    steps_list = [1, 2, 4, 8, 16, 32]
    for solver in ("euler", "midpoint"):
        errs = []
        for n in steps_list:
            x1 = odeint(exact_velocity_ode, z, [0.0, 1.0], solver=solver, steps=n)[-1]
            # The flow of the exact field is affine: x_1 = MU + SIGMA z exactly. Compare maps.
            errs.append(float((x1 - (MU + SIGMA * z)).abs().max()))
        res[solver] = errs
        ax.loglog(steps_list, errs, "o-", label=solver)
        print(f"[2] {solver:8s} " + "  ".join(f"{n} steps: {e:.1e}" for n, e in zip(steps_list, errs)))
    ax.set_xlabel("steps")
    ax.set_ylabel("max |x_1 - (2 + 0.5 z)|")
    ax.set_title("Euler (order 1) vs midpoint (order 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "07_euler_vs_midpoint.png", dpi=110)
    plt.close(fig)
    return res


def exact_velocity_ode(t, x):
    return exact_velocity(x, t)


def part_2d(out: Path, steps: int) -> dict:
    data = pf.data.load("8gaussians", n=8000)
    res = {}
    trajs = {}
    # The straight-path model against a diffusion-path one: the score model's probability-flow
    # ODE follows the VP diffusion path (here `score-vp`; `pf.build("vp-fm", 2)` learns the same
    # marginal path by flow matching).
    for name in ("fm", "score-vp"):
        torch.manual_seed(0)
        model = pf.build(name, 2)
        pf.fit(model, data.x, steps=steps, progress=False)
        with torch.no_grad():
            tr = model.trajectory(400, steps=40, generator=torch.Generator().manual_seed(3))
        trajs[name] = tr
        # Liu et al.'s straightness on the drawn paths, in data units: mean over steps of
        # ||(x_{k+1} - x_k) K - (x_K - x_0)||^2 (0 for straight lines at constant speed).
        K = tr.shape[0] - 1
        dev = ((tr[1:] - tr[:-1]) * K - (tr[-1] - tr[0])[None]).pow(2).sum(-1)
        res[name] = {"straightness": float(dev.mean()), "w2": pf.metrics.w2(tr[-1], data.x[:400])}
        if name == "fm":
            def vel(x, t, model=model):
                return model.unstandardize(model.velocity(model.standardize(x), t)) - model.unstandardize(
                    torch.zeros_like(x))
            pf.viz.plot_quiver(vel, out / "07_quiver.png", t=(0.0, 0.5, 0.9), bounds=(-4, 4),
                               data=data.x[:1000], title="flow matching on 8 Gaussians: u_t(x)")
    fig, ax = plt.subplots(1, 3, figsize=(15, 5))
    # Left: the conditional paths themselves for a few fixed (noise, data) pairs, exactly.
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(12, 2, generator=g), data.x[:12]
    ts = torch.linspace(0, 1, 60)
    for kind, c in (("ot", "C0"), ("vp", "C1")):
        path = pf.matching.AffinePath(kind)
        pts = torch.stack([path.sample(x0, x1, torch.full((12,), float(t))).x_t for t in ts])
        for i in range(12):
            ax[0].plot(pts[:, i, 0], pts[:, i, 1], color=c, lw=1, label=kind.upper() + " path" if i == 0 else None)
    ax[0].scatter(x0[:, 0], x0[:, 1], s=10, color="k", label="x_0 (noise)", zorder=3)
    ax[0].scatter(x1[:, 0], x1[:, 1], s=10, color="C3", label="x_1 (data)", zorder=3)
    ax[0].set_title("conditional paths x_t for fixed pairs")
    ax[0].legend(fontsize=8)
    ax[0].set_aspect("equal")
    for a, (name, tr) in zip(ax[1:], trajs.items()):
        for i in range(150):
            a.plot(tr[:, i, 0], tr[:, i, 1], lw=0.5, color="C0", alpha=0.6)
        a.scatter(tr[0, :150, 0], tr[0, :150, 1], s=4, color="k", label="t = 0 (noise)")
        a.scatter(tr[-1, :150, 0], tr[-1, :150, 1], s=4, color="C3", label="t = 1 (samples)")
        kind = "straight OT path" if name == "fm" else "VP diffusion, PF ODE"
        a.set_title(f"{name} ({kind}): straightness {res[name]['straightness']:.3f}", fontsize=10)
        a.set_aspect("equal")
        a.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "07_ot_vs_diffusion_paths.png", dpi=110)
    plt.close(fig)
    for name, r in res.items():
        print(f"[3] {name}: straightness {r['straightness']:.3f} (0 = straight lines), W2 {r['w2']:.3f}")
    return res


def main(out_dir: str = "tutorial_out/07", budget: float = 1.0) -> dict:
    """Run all three parts; ``budget`` scales the training (1: about a minute, 0.05: a smoke test)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"gaussian": part_gaussian(out, max(200, int(3000 * budget))), "solvers": part_solvers(out),
           "2d": part_2d(out, max(100, int(3000 * budget)))}
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/07")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
