"""Imports every module that registers builders (kept in one place so the registry is complete)."""

import importlib

for _mod in (
    "pushforward.builders.coupling_ar",
    "pushforward.builders.elementary",
    "pushforward.builders.glow",
    "pushforward.builders.continuous",
    "pushforward.score.model",
    "pushforward.builders.matching",
    "pushforward.builders.policy",
):
    importlib.import_module(_mod)
