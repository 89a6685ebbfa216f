"""Imports every module that registers builders (kept in one place so the registry is complete)."""

import importlib

for _mod in (
    "pushforward.flows.coupling",
    "pushforward.flows.autoregressive",
    "pushforward.flows.spline",
    "pushforward.flows.elementary",
    "pushforward.flows.glow",
    "pushforward.builders.continuous",
    "pushforward.score.model",
    "pushforward.builders.matching",
    "pushforward.policy",
):
    importlib.import_module(_mod)
