"""Neural network building blocks."""

from pushforward.nets.mlp import MLP
from pushforward.nets.time import SinusoidalEmbedding, TimeMLP

__all__ = ["MLP", "SinusoidalEmbedding", "TimeMLP"]
