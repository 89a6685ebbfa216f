"""Neural network building blocks."""

from pushforward.nets.made import MADE
from pushforward.nets.mlp import MLP
from pushforward.nets.time import SinusoidalEmbedding, TimeMLP
from pushforward.nets.unet import UNet

__all__ = ["MADE", "MLP", "SinusoidalEmbedding", "TimeMLP", "UNet"]
