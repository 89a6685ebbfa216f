import torch

from _cases import Case
from pushforward.transforms import Compose, FixedAffine, Identity, Inverse

CASES = [
    Case("identity", lambda: Identity(), (3,), grads_all=True),
    Case("fixed_affine", lambda: FixedAffine(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 3.0])), (3,)),
    Case(
        "compose_inverse_affine",
        lambda: Compose(FixedAffine(torch.ones(3), 2 * torch.ones(3)), Inverse(FixedAffine(torch.zeros(3), torch.tensor([1.0, 3.0, 0.2])))),
        (3,),
    ),
]
