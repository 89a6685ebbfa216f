"""Neural network building blocks."""

from pushforward.nets.mlp import MLP

__all__ = ["MLP"]
