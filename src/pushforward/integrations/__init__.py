"""Plug-ins for other tools; each submodule imports its tool lazily (optional extras).

- :mod:`pushforward.integrations.sbi`: pushforward models as sbi density estimators.
"""
