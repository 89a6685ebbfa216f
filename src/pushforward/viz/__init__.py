"""Plots of models, samples, maps, velocity fields and training runs, written to files.

Every function renders with matplotlib's Agg canvas (no pyplot, no GUI, the global backend is
left alone), writes the figure to ``path`` (PNG, or GIF for :func:`animate_flow`; parent
folders are created) and returns the path as a :class:`pathlib.Path`. matplotlib is imported
when a figure is made, not when this package is.

Inputs may be tensors (any device/dtype) or arrays; models are anything with
``log_prob`` / ``sample`` (closed-form targets from :mod:`pushforward.data` work too).
Conditional models are drawn at one fixed context row. :func:`plots_for` picks the figures
that fit a model by its type (what ``pushforward plot`` writes).

Modules: :mod:`~pushforward.viz.density`, :mod:`~pushforward.viz.samples`,
:mod:`~pushforward.viz.fields` (maps, velocity fields, trajectories, histograms over time),
:mod:`~pushforward.viz.training`, :mod:`~pushforward.viz.animation`,
:mod:`~pushforward.viz.manifolds` (sphere, torus), :mod:`~pushforward.viz.discrete` (categorical
sequences),
:mod:`~pushforward.viz.plots`.
"""

from pushforward.viz.animation import animate_flow, flow_frames
from pushforward.viz.density import plot_density
from pushforward.viz.discrete import category_frequencies, plot_categories
from pushforward.viz.fields import plot_grid_deformation, plot_hist_over_time, plot_quiver, plot_trajectories
from pushforward.viz.manifolds import plot_sphere, plot_torus
from pushforward.viz.plots import plots_for
from pushforward.viz.samples import plot_samples
from pushforward.viz.training import plot_training_curves

__all__ = [
    "animate_flow",
    "category_frequencies",
    "flow_frames",
    "plot_categories",
    "plot_density",
    "plot_grid_deformation",
    "plot_hist_over_time",
    "plot_quiver",
    "plot_samples",
    "plot_sphere",
    "plot_torus",
    "plot_trajectories",
    "plot_training_curves",
    "plots_for",
]
