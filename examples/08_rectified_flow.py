"""Tutorial 8: rectified flow: reflow straightens trajectories; one-step generation.

A 1-rectified flow is flow matching on the straight path with *independent* (noise, data) pairs
(Liu et al. 2023). Straight conditional paths cross one another, so the learned marginal field
averages over them and its trajectories bend: few-step Euler sampling is then poor.

*Reflow* retrains on the model's own pairs ``(x_0, Z_1(x_0))``: these pairs no longer cross,
so the next flow is straighter (``pf.matching.reflow``). A straight flow is integrated exactly by
one Euler step, and ``pf.matching.distill`` trains the one-step map ``x_1 = x_0 + v(x_0, 0)``.

We measure Liu et al.'s straightness ``S = int E||(Z_1 - Z_0) - v(Z_t, t)||^2 dt`` (0: straight)
and the W2 distance to the data for 1, 2, 4, ... Euler steps.

The same recipe runs inside one ``pf.fit`` budget: ``pf.build("rectified", reflow_rounds=1,
distill=True)`` trains 1-RF, draws its pairs, reflows and distils, a stage after another
(``history["stages"]``). Models trained for few steps from the start take no pairs at all:
``meanflow`` (the average velocity ``u(z, t, d)`` by a JVP), ``shortcut`` (a step-conditioned
field with self-consistency) and ``consistency`` (continuous-time consistency training, sCT); each samples with
``sample(n, steps=k)`` and keeps an ODE ``log_prob`` through its instantaneous velocity. The last
part trains the four at the same step budget and prints their W2 at 1, 2 and 4 steps.

Run: ``python examples/08_rectified_flow.py [--out DIR] [--quick]``.
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


def two_clusters(n: int, seed: int) -> torch.Tensor:
    """Two well-separated blobs at +-(2, 0.5): noise from the middle must split left and right."""
    g = torch.Generator().manual_seed(seed)
    side = 2.0 * torch.randint(0, 2, (n, 1), generator=g) - 1.0
    return torch.cat([2.0 * side, 0.5 * side], -1) + 0.3 * torch.randn(n, 2, generator=g)


def w2_at(model, steps: int, ref: torch.Tensor) -> float:
    with torch.no_grad():
        s = model.sample(1000, steps=steps, solver="euler", generator=torch.Generator().manual_seed(3))
    return pf.metrics.w2(s, ref)


def main(out_dir: str = "tutorial_out/08", budget: float = 1.0) -> dict:
    """Train a 1-rectified flow, reflow it once, distil it; ``budget`` scales the training steps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = max(600, int(3000 * budget))
    pairs = max(2000, int(8000 * budget))
    x = two_clusters(8000, 0)
    ref = two_clusters(1000, 99)
    torch.manual_seed(0)
    rf1 = pf.build("rectified", 2, hidden=(64, 64), reflow_rounds=0)  # 1-RF only: the recipe by hand
    pf.fit(rf1, x, steps=steps, lr=3e-3, progress=False)
    g = torch.Generator().manual_seed(1)
    rf2 = pf.matching.reflow(rf1, n=pairs, steps=steps, lr=2e-3, generator=g)
    one = pf.matching.distill(rf2, n=pairs, steps=steps, lr=2e-3, generator=g)

    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    # straightness works in the model's standardized units: give it the same noise for both.
    s1, s2 = pf.matching.straightness(rf1, x0=z), pf.matching.straightness(rf2, x0=z)
    step_list = [1, 2, 4, 8, 32]
    w2 = {"1-rectified": [w2_at(rf1, k, ref) for k in step_list],
          "2-rectified": [w2_at(rf2, k, ref) for k in step_list]}
    w2_distilled = w2_at(one, 1, ref)

    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2))
    with torch.no_grad():
        for a, (name, m, s) in zip(ax[:2], (("1-rectified", rf1, s1), ("2-rectified (reflow)", rf2, s2))):
            tr = m.trajectory(x0=z[:200], steps=32)
            for i in range(200):
                a.plot(tr[:, i, 0], tr[:, i, 1], lw=0.5, color="C0", alpha=0.6)
            a.scatter(ref[:500, 0], ref[:500, 1], s=2, color="0.7")
            a.set_title(f"{name}: straightness {s:.3f}")
            a.set_xlim(-6, 6)
            a.set_ylim(-3, 3)
        for name, m, c in (("1-rectified", rf1, "C1"), ("2-rectified", rf2, "C2"), ("distilled", one, "C3")):
            smp = m.sample(600, steps=1, solver="euler", generator=torch.Generator().manual_seed(7))
            ax[2].scatter(smp[:, 0], smp[:, 1], s=3, color=c, alpha=0.6, label=name)
    ax[2].set_title("one Euler step")
    ax[2].legend(fontsize=8, markerscale=3)
    ax[2].set_xlim(-4, 4)
    ax[2].set_ylim(-3, 3)
    for name, v in w2.items():
        ax[3].loglog(step_list, v, "o-", label=name)
    ax[3].axhline(w2_distilled, color="C3", ls="--", label="distilled, 1 step")
    ax[3].set_xlabel("Euler steps")
    ax[3].set_ylabel("W2 to the data")
    ax[3].legend(fontsize=8)
    ax[3].set_title("few-step sampling")
    fig.tight_layout()
    fig.savefig(out / "08_reflow.png", dpi=110)
    plt.close(fig)

    print(f"straightness: 1-rectified {s1:.4f}, 2-rectified {s2:.4f}")
    for name, v in w2.items():
        print(f"W2 {name}: " + "  ".join(f"{k} steps {e:.3f}" for k, e in zip(step_list, v)))
    print(f"W2 distilled one-step: {w2_distilled:.3f}")

    # Few-step models at one budget: pf.fit with the same number of steps for each.
    few = {}
    for name, options in (("rectified", {"distill": True, "reflow_pairs": pairs}), ("meanflow", {}),
                          ("shortcut", {}), ("consistency", {})):
        torch.manual_seed(0)
        model = pf.build(name, 2, hidden=(64, 64), **options)
        pf.fit(model, x, steps=steps, lr=3e-3, progress=False)
        with torch.no_grad():
            few[name] = [pf.metrics.w2(model.sample(1000, steps=k, generator=torch.Generator().manual_seed(3)), ref)
                         for k in (1, 2, 4)]
        print(f"W2 {name} (pf.fit, {steps} steps): " + "  ".join(
            f"{k} steps {e:.3f}" for k, e in zip((1, 2, 4), few[name])))
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return {"straightness": [s1, s2], "w2": w2, "steps": step_list, "w2_distilled": w2_distilled, "few": few}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/08")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
