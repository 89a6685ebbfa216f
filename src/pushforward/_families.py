"""Imports every module that registers model names (kept in one place so the registry is complete)."""

import importlib

for _mod in (
    "pushforward.flows.coupling",
    "pushforward.flows.autoregressive",
    "pushforward.flows.spline",
    "pushforward.flows.elementary",
    "pushforward.flows.glow",
    "pushforward.flows.neural",
    "pushforward.flows.polynomial",
    "pushforward.flows.circular",
    "pushforward.flows.tarflow",
    "pushforward.continuous.ffjord",
    "pushforward.score.model",
    "pushforward.matching.models",
    "pushforward.matching.rectified",
    "pushforward.matching.fewstep",
    "pushforward.policy",
    "pushforward.discrete.models",
    "pushforward.manifolds.models",
):
    importlib.import_module(_mod)
