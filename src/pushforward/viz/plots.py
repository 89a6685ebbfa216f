"""Which figures fit which model, decided by the model's type: :func:`plots_for`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pushforward._utils import module_like
from pushforward.flows import NormalizingFlow
from pushforward.viz.animation import animate_flow, flow_frames
from pushforward.viz.density import plot_density
from pushforward.viz.discrete import plot_categories
from pushforward.viz.fields import plot_grid_deformation
from pushforward.viz.manifolds import plot_sphere, plot_torus
from pushforward.viz.samples import plot_samples
from pushforward.viz.training import plot_training_curves


def _is_policy(model: Any) -> bool:
    from pushforward.policy.base import ChunkPolicyMixin

    return isinstance(model, ChunkPolicyMixin)


def _geometry(model: Any) -> str | None:
    """``"sphere"``, ``"torus"`` or ``"categorical"`` for models whose data are not points of R^D."""
    from pushforward.discrete.models import DiscreteFlowMatching
    from pushforward.flows.circular import CircularSplineFlow
    from pushforward.manifolds.geometry import FlatTorus, Sphere

    if isinstance(model, DiscreteFlowMatching):
        return "categorical"
    if isinstance(model, CircularSplineFlow) or isinstance(getattr(model, "manifold", None), FlatTorus):
        return "torus"
    if isinstance(getattr(model, "manifold", None), Sphere):
        return "sphere"
    return None


def _has_path(model: Any) -> bool:
    """A model whose latent -> data path can be drawn: layer by layer or along its ODE."""
    from pushforward.continuous import ContinuousFlow

    return isinstance(model, (NormalizingFlow, ContinuousFlow))


def plots_for(
    model: Any,
    data: Any,
    out: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    gif: bool = True,
) -> list[tuple[str, Callable[[], Path]]]:
    """The figures that fit ``model``, as ``(name, make)`` pairs; ``make()`` writes one file into
    ``out`` and returns its path. Nothing is drawn until a ``make`` is called.

    Chosen by the model's type and event shape:

    - ``density.png``: vector models of dimension 1 or 2 (:func:`plot_density`);
    - ``samples.png``: vector and image models, one sample per data row (policies' action
      chunks ``[N, H, A]`` have no sample plot);
    - ``training_curves.png``: when ``metrics`` (a ``metrics.jsonl``) exists;
    - ``grid_deformation.png``: unconditional 2-D :class:`~pushforward.NormalizingFlow`;
    - ``flow.gif``: unconditional vector models of dimension >= 2 that are a
      :class:`~pushforward.NormalizingFlow` or a :class:`~pushforward.continuous.ContinuousFlow`
      (except policies), when ``gif`` is true;
    - models whose data are not points of R^D get their own figure instead of the four above:
      ``sphere.png`` (``sphere-fm``: Mollweide projection, :func:`~pushforward.viz.plot_sphere`),
      ``torus.png`` (``torus-fm``, ``circular-nsf``: the first two angles,
      :func:`~pushforward.viz.plot_torus`), each with the density when unconditional on S^2 or
      the 2-torus, and ``categories.png`` (``discrete-fm``: per-position category
      frequencies of samples and data, :func:`~pushforward.viz.plot_categories`).

    Args:
        model: the model, in eval mode, on any device.
        data: a :class:`pushforward.data.Dataset` (``x [N, ...]``, optional ``context [N, C]``).
        out: the folder the figures go to.
        metrics: path of the run's ``metrics.jsonl`` (or None).
    """
    out = Path(out)
    event = tuple(getattr(model, "event_shape", data.x.shape[1:]))
    vector, image = len(event) == 1, len(event) == 3
    policy = _is_policy(model)
    unconditional = int(getattr(model, "context_dim", 0) or 0) == 0
    plots: list[tuple[str, Callable[[], Path]]] = []
    geometry = _geometry(model)
    if geometry is not None:
        if geometry == "categorical":
            plots.append(("categories", lambda: plot_categories(
                out / "categories.png", _one_sample_per_row(model, data), data.x, model.num_categories)))
        else:
            draw, own = (plot_sphere, (3,)) if geometry == "sphere" else (plot_torus, (2,))
            density = model if unconditional and event == own else None
            plots.append((geometry, lambda: draw(out / f"{geometry}.png", model=density,
                                                 samples=_one_sample_per_row(model, data), data=data.x, grid=40)))
        if metrics is not None and Path(metrics).is_file():
            plots.append(("training curves", lambda: plot_training_curves(metrics, out / "training_curves.png")))
        return plots
    if vector and event[0] <= 2:
        plots.append(("density", lambda: plot_density(model, out / "density.png", data=data)))
    if (vector or image) and not policy:
        plots.append(("samples", lambda: plot_samples(_one_sample_per_row(model, data), out / "samples.png", data=data)))
    if metrics is not None and Path(metrics).is_file():
        plots.append(("training curves", lambda: plot_training_curves(metrics, out / "training_curves.png")))
    if unconditional and vector and event[0] == 2 and isinstance(model, NormalizingFlow):
        plots.append(("grid deformation", lambda: plot_grid_deformation(model, out / "grid_deformation.png", data=data)))
    if gif and unconditional and vector and event[0] >= 2 and _has_path(model) and not policy:
        plots.append(("flow animation", lambda: animate_flow(flow_frames(model, 500), out / "flow.gif", data=data)))
    return plots


@torch.no_grad()
def _one_sample_per_row(model: Any, data: Any) -> torch.Tensor:
    """One seeded model sample per data row (at that row's context): ``[N, *event_shape]``."""
    like = module_like(model)
    kw = {} if data.context is None else {"context": data.context.to(like["device"])}
    g = torch.Generator(device=like["device"]).manual_seed(0)
    return model.sample(data.x.shape[0], generator=g, **kw)
