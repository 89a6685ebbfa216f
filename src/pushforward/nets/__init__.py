"""Neural network building blocks."""

from pushforward.nets.embedding import Conv1dEmbedding, MLPEmbedding, SetEmbedding
from pushforward.nets.made import MADE
from pushforward.nets.mlp import MLP
from pushforward.nets.time import SinusoidalEmbedding, TimeMLP
from pushforward.nets.unet import UNet

__all__ = ["Conv1dEmbedding", "MADE", "MLP", "MLPEmbedding", "SetEmbedding", "SinusoidalEmbedding", "TimeMLP", "UNet"]
