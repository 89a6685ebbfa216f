"""Tutorial 3: Glow on 8x8 digits.

Glow (Kingma & Dhariwal 2018) is a multi-scale image flow built from three steps per block:

* ActNorm: a per-channel affine map initialised from the first batch so activations start with
  zero mean and unit variance; ``log|det| = H W sum_c log|s_c|``.
* an invertible 1x1 convolution: a C x C matrix W applied at every pixel, so
  ``log|det| = H W log|det W|`` (LU-parametrised in the library, so this costs O(C)).
* an affine coupling along channels.

Between levels a *squeeze* trades space for channels (``[C, H, W] -> [4C, H/2, W/2]``) and half
the channels are factored out (multi-scale). Images are discrete (sklearn digits: 17 levels),
so we dequantize and report bits per dimension.

Run: ``python examples/03_glow_digits.py [--out DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.autograd.functional import jacobian  # noqa: E402

import pushforward as pf  # noqa: E402
from pushforward.transforms import ActNorm2d, InvertibleConv1x1, Squeeze  # noqa: E402


def part_layers() -> dict:
    g = torch.Generator().manual_seed(0)
    # 1x1 conv: the full Jacobian of a [4, 2, 2] image is 16 x 16 = kron(I_pixels, W).
    conv = InvertibleConv1x1(4, generator=g).double()
    for p in conv.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=g)
    _, ladj = conv(x)
    J = jacobian(lambda v: conv(v.reshape(1, 4, 2, 2))[0].reshape(-1), x.reshape(-1))
    conv_err = float((ladj[0].detach() - torch.linalg.slogdet(J)[1]).abs())

    # ActNorm's data-dependent init: per-channel zero mean, unit variance on the first batch.
    act = ActNorm2d(3)
    batch = 5.0 + 3.0 * torch.randn(64, 3, 4, 4, generator=g)
    act.initialize(batch)
    with torch.no_grad():
        y, _ = act(batch)
    mean, std = float(y.mean((0, 2, 3)).abs().max()), float((y.std((0, 2, 3)) - 1).abs().max())

    sq = Squeeze()
    z, _ = sq(torch.randn(2, 1, 8, 8, generator=g))
    print(f"[1] 1x1 conv: |H W log|det W| - autograd log|det J|| = {conv_err:.2e}")
    print(f"[1] ActNorm after init: max |channel mean| {mean:.1e}, max |channel std - 1| {std:.1e}")
    print(f"[1] squeeze: [2, 1, 8, 8] -> {list(z.shape)}")
    return {"conv_error": conv_err, "actnorm_mean": mean, "actnorm_std": std, "squeezed": list(z.shape)}


def part_train(out: Path, seconds: float) -> dict:
    data = pf.data.load("digits8x8")
    x = data.x  # [1797, 1, 8, 8], integers 0..16
    train, test = x[:1500], x[1500:]
    torch.manual_seed(0)
    model = pf.build("glow", image_shape=(1, 8, 8), num_bins=17, hidden_channels=32, steps_per_level=2)
    model.initialize(train[:256])
    g = torch.Generator().manual_seed(1)
    model.eval()
    with torch.no_grad():
        before = float(model.bits_per_dim(test, dequantize=True, generator=g).mean())
    hist = pf.fit(model, train, max_time=seconds, lr=2e-3, batch_size=64, progress=False)
    model.eval()
    with torch.no_grad():
        after = float(model.bits_per_dim(test, dequantize=True, generator=torch.Generator().manual_seed(1)).mean())
        samples = model.sample(32, temperature=0.7, generator=torch.Generator().manual_seed(2))
    uniform = float(torch.log2(torch.tensor(17.0)))
    fig, ax = plt.subplots(2, 8, figsize=(9, 2.6))
    for i in range(8):
        ax[0, i].imshow(test[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
        ax[1, i].imshow(samples[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=16)
    for a in ax.flat:
        a.axis("off")
    ax[0, 0].set_title("data", loc="left", fontsize=9)
    ax[1, 0].set_title(f"Glow samples (T = 0.7), test {after:.2f} bits/dim", loc="left", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "03_glow_samples.png", dpi=110)
    plt.close(fig)
    pf.viz.plot_training_curves(hist, out / "03_glow_training.png")
    print(f"[2] Glow: test bits/dim {before:.3f} at init -> {after:.3f} after {hist.steps} steps "
          f"({hist.elapsed:.0f} s); uniform over 17 levels: {uniform:.3f}")
    return {"bpd_before": before, "bpd_after": after, "bpd_uniform": uniform, "steps": hist.steps}


def main(out_dir: str = "tutorial_out/03", budget: float = 1.0) -> dict:
    """``budget`` scales the training (1: 60 s, 0.05: a smoke test)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"layers": part_layers(), "train": part_train(out, max(3.0, 60.0 * budget))}
    print(f"done in {time.perf_counter() - t0:.1f} s; figures in {out}/")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tutorial_out/03")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    a = p.parse_args()
    main(a.out, budget=0.05 if a.quick else 1.0)
