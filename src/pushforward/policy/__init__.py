"""Flow-matching action policies, pi0-style (Black et al. 2024), with baselines and rollouts.

>>> import pushforward as pf
>>> policy = pf.policy.FlowPolicy(obs_dim=18, action_dim=2, horizon=16)     # doctest: +SKIP
>>> pf.fit(policy, actions, context=obs, max_time=300)                      # doctest: +SKIP
>>> policy.act(obs[:1], steps=10).shape                                     # doctest: +SKIP
torch.Size([1, 16, 2])

Time convention: t = 0 is noise, t = 1 is the action chunk (pi0's code runs t = 1 -> 0).
Actions and observations are normalised per dimension inside the policy: ``act`` takes and
returns raw units. The environments, scripted experts and DAgger data collection used to
benchmark the policies live in :mod:`pushforward.envs`.

Registered names (``pf.build(name, dim=A, context_dim=O, horizon=H)``): ``flow-policy``,
``hierarchical-flow-policy``, ``regression-policy``, ``diffusion-policy``. ``dim`` is the action
dimension A and ``context_dim`` the observation size O, plus 1 for the task id when
``num_tasks > 0``; ``horizon`` (default 16) is the chunk length H. ``vla-policy``
(:class:`VLAPolicy`) is built as ``pf.build("vla-policy", dim=A, context_dim=C,
image_shape=(C_img, H_img, W_img), horizon=T)`` with C the packed context size
(``Demonstrations.context.shape[1]`` = S + cameras C_img H_img W_img + max_text), from which
the state size S follows.
"""

from pushforward.policy.base import ChunkPolicyMixin, pooled_stats
from pushforward.policy.baselines import DiffusionPolicy, RegressionPolicy, cosine_alpha_bar
from pushforward.policy.demos import Demonstrations
from pushforward.policy.execution import ChunkExecutor, ObsHistory, evaluate_policy, make_chunks, rollout
from pushforward.policy.flow import FlowPolicy, HierarchicalFlowPolicy
from pushforward.policy.nets import ActionMLP, ActionTransformer, ObsEncoder
from pushforward.policy.text import ByteTokenizer
from pushforward.policy.vision import ConvPatchEncoder, PretrainedEncoder
from pushforward.policy.vla import VLANet, VLAPolicy
from pushforward.registry import register

__all__ = [
    "ActionMLP",
    "ActionTransformer",
    "ByteTokenizer",
    "ConvPatchEncoder",
    "Demonstrations",
    "ChunkExecutor",
    "ChunkPolicyMixin",
    "DiffusionPolicy",
    "FlowPolicy",
    "HierarchicalFlowPolicy",
    "ObsEncoder",
    "ObsHistory",
    "PretrainedEncoder",
    "RegressionPolicy",
    "VLANet",
    "VLAPolicy",
    "cosine_alpha_bar",
    "evaluate_policy",
    "make_chunks",
    "pooled_stats",
    "rollout",
]


def _inputs(name: str):
    """``build``'s input adapter for policy ``name``: ``{"obs_dim", "action_dim"}`` from
    ``context_dim`` (the observation, plus the task-id column when ``num_tasks > 0``) and ``dim``."""

    def inputs(dim: int, context_dim: int, image_shape: tuple | None, options: dict) -> dict:
        num_tasks = options.get("num_tasks", 0)
        obs_dim = context_dim - (1 if num_tasks else 0)
        if obs_dim < 1:
            raise ValueError(f"{name} needs context_dim = obs_dim{' + 1 (task id)' if num_tasks else ''} >= "
                             f"{2 if num_tasks else 1}, got context_dim={context_dim}")
        return {"obs_dim": obs_dim, "action_dim": dim}

    return inputs


for _name, _cls, _description in (
    ("flow-policy", FlowPolicy, "pi0-style flow-matching policy over action chunks [horizon, dim] given observations"),
    ("hierarchical-flow-policy", HierarchicalFlowPolicy,
     "coarse-to-fine flow policy: sub-sampled chunk, then the full chunk"),
    ("regression-policy", RegressionPolicy, "baseline: mean-squared-error regression of the action chunk"),
    ("diffusion-policy", DiffusionPolicy, "baseline: DDPM diffusion policy over action chunks (Chi et al. 2023)"),
):
    register(_name, _cls, _description, preset={"horizon": 16}, inputs=_inputs(_name))
del _name, _cls, _description


def _vla_inputs(dim: int, context_dim: int, image_shape: tuple | None, options: dict) -> dict:
    """``build``'s adapter for ``vla-policy``: the state size from the packed context size."""
    if image_shape is None:
        raise ValueError("vla-policy needs image_shape=(C, H, W) of each camera")
    cameras, max_text = options.get("cameras", 1), options.get("max_text", 48)
    pixels = image_shape[0] * image_shape[1] * image_shape[2]
    state_dim = context_dim - cameras * pixels - max_text
    if state_dim < 1:
        raise ValueError(f"vla-policy needs context_dim = state_dim + cameras * C * H * W + max_text = S + "
                         f"{cameras} * {pixels} + {max_text} with S >= 1, got context_dim={context_dim}")
    return {"image_shape": image_shape, "state_dim": state_dim, "action_dim": dim}


register("vla-policy", VLAPolicy, "pi0-style vision-language-action flow policy: images, instruction, state -> chunk",
         preset={"horizon": 16}, inputs=_vla_inputs)
