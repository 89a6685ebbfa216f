"""Imports every module that registers builders (kept in one place so the registry is complete)."""

import importlib

for _mod in (
    "pushforward.flows",
):
    importlib.import_module(_mod)
