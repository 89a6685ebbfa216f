"""Bijections ``x -> z`` with log|det J|: the building blocks of normalizing flows."""

from pushforward.transforms.base import Compose, FixedAffine, Identity, Inverse, Transform

__all__ = ["Compose", "FixedAffine", "Identity", "Inverse", "Transform"]
