"""Imports every module that registers builders (kept in one place so the registry is complete)."""

import importlib

for _mod in (
    "pushforward.builders.coupling_ar",
    "pushforward.builders.elementary",
    "pushforward.builders.glow",
    "pushforward.continuous.ffjord",
    "pushforward.builders.score",
    "pushforward.matching.models",
    "pushforward.matching.rectified",
    "pushforward.builders.policy",
):
    importlib.import_module(_mod)
