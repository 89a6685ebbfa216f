"""A vision-language-action flow policy in pi0's shape (Black et al. 2024, sec. 3 and B).

The prefix is the camera images (:mod:`pushforward.policy.vision` tokens, one set per camera),
the instruction (:class:`~pushforward.policy.text.ByteTokenizer` ids through a learned
embedding) and the state (one token). Attention is block-causal: prefix tokens attend among
themselves (instruction padding hidden), the H action tokens attend to the prefix and to each
other; prefix and actions have their own weights per layer (pi0's two experts). The prefix keys
and values depend only on the observation, so ``act`` encodes them once per chunk and every
flow step runs only the action expert (:meth:`VLANet.encode` / :meth:`VLANet.decode`);
:meth:`VLANet.forward_joint` is the same computation as one masked sequence, without a cache.

Context layout (what ``pf.fit`` passes to ``loss``; :class:`~pushforward.policy.Demonstrations`
packs it): ``[state (S) | camera 1 pixels (C H W, uint8 values as floats) | ... camera k |
instruction token ids (max_text)]``, raw units; the policy normalises the state and scales the
pixels to [0, 1] itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward._validate import (
    check_choice,
    check_dim,
    check_finite,
    check_int_range,
    check_positive_float,
    check_positive_int,
)
from pushforward.continuous.cnf import Field
from pushforward.continuous.ode import FIXED_SOLVERS
from pushforward.matching.models import FlowMatching
from pushforward.matching.time_samplers import TIME_SAMPLERS
from pushforward.nets.time import SinusoidalEmbedding
from pushforward.policy.base import ChunkPolicyMixin
from pushforward.policy.baselines import SAMPLERS, cosine_alpha_bar, ddpm_loss, ddpm_sample
from pushforward.policy.flow import FlowPolicy
from pushforward.policy.nets import _Block, action_decoder, action_embedder, fused_action_embedding
from pushforward.policy.text import PAD, VOCAB_SIZE, ByteTokenizer
from pushforward.policy.vision import ConvPatchEncoder, PretrainedEncoder

Parts = tuple[Tensor, list[Tensor], Tensor]  # (normalised state [B, S], k images [B, C, H, W] in [0, 1], ids [B, L])
OBJECTIVES = ("flow", "ddpm", "mse")


class VLANet(nn.Module):
    """Prefix encoder + action expert; shapes as :class:`VLAPolicy` (``x [B, H, A]``, t ``[]``/``[B]``).

    Action tokens are embedded as in :class:`~pushforward.policy.nets.ActionTransformer`
    (pi0, sec. B: ``W_3 swish(W_2 [W_1 x_h, phi(t)]) + pos_h``).
    """

    def __init__(self, image_shape: tuple[int, int, int], cameras: int, state_dim: int, action_dim: int,
                 horizon: int, max_text: int, width: int, depth: int, heads: int, patch: int, time_embed: int,
                 vision_backbone: nn.Module | None = None, freeze_backbone: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.vision = (ConvPatchEncoder(image_shape, width, patch) if vision_backbone is None
                       else PretrainedEncoder(vision_backbone, image_shape, width, freeze_backbone))
        self.camera = nn.Parameter(torch.randn(cameras, width) * 0.02)
        self.text = nn.Embedding(VOCAB_SIZE, width)
        self.text_pos = nn.Parameter(torch.randn(max_text, width) * 0.02)
        self.state = nn.Linear(state_dim, width)
        self.prefix_blocks = nn.ModuleList(_Block(width, heads, kv_only=i == depth - 1) for i in range(depth))
        self.act_blocks = nn.ModuleList(_Block(width, heads) for _ in range(depth))
        self.embed_t = SinusoidalEmbedding(time_embed)
        self.in_action = nn.Linear(action_dim, width)
        self.action_time = nn.Sequential(nn.Linear(width + time_embed, width), nn.SiLU(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.randn(horizon, width) * 0.02)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, action_dim))

    # ----------------------------------------------------------------- tokens
    def prefix_tokens(self, parts: Parts) -> tuple[Tensor, Tensor]:
        """``(tokens [B, P, W], key mask [B, P])``: images, instruction, state (mask False = padding)."""
        state, images, ids = parts
        b = state.shape[0]
        # All cameras through the shared encoder in one batch.
        img = self.vision(torch.cat(images)).unflatten(0, (len(images), b)) + self.camera[:, None, None]
        img = img.transpose(0, 1).flatten(1, 2)
        tok = torch.cat([img, self.text(ids) + self.text_pos[: ids.shape[1]], self.state(state)[:, None]], 1)
        valid = torch.ones(b, tok.shape[1], dtype=torch.bool, device=tok.device)
        valid[:, img.shape[1]: img.shape[1] + ids.shape[1]] = ids != PAD
        return tok, valid

    def action_tokens(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Noisy chunk ``[B, H, A]`` at time t -> ``[B, H, W]``."""
        return fused_action_embedding(self.in_action, self.action_time, self.embed_t, self.pos, x, t)

    # ----------------------------------------------------------------- cached path
    def encode(self, parts: Parts) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """The prefix cache: per-layer (keys, values) of the prefix and its key mask ``[B, 1, 1, P]``."""
        h, valid = self.prefix_tokens(parts)
        mask = valid[:, None, None]
        kvs = []
        for blk in self.prefix_blocks:
            h, kv = blk(h, mask=mask)
            kvs.append(kv)
        return kvs, mask

    def decode(self, x: Tensor, t: Tensor | float, cache: tuple[list[tuple[Tensor, Tensor]], Tensor]) -> Tensor:
        """Velocity ``[B, H, A]`` of the noisy chunk ``x`` given the prefix cache."""
        kvs, mask = cache
        h = self.action_tokens(x, t)
        b = h.shape[0]
        if mask.shape[0] != b:  # a cache of one observation shared by several chunks
            mask = mask.expand(b, -1, -1, -1)
            kvs = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kvs]
        full = F.pad(mask, (0, x.shape[1]), value=True)  # action keys are always visible
        for blk, kv in zip(self.act_blocks, kvs):
            h, _ = blk(h, kv, mask=full)
        return self.out(h)

    def decoder(self, cache: tuple[list[tuple[Tensor, Tensor]], Tensor]):
        """``(x, t) -> decode(x, t, cache)`` with the per-chunk work (folded embedding weights,
        the padded key mask) done once here; for acting (frozen weights, no gradient)."""
        kvs, mask = cache
        horizon = self.pos.shape[0]
        embed = action_embedder(self.in_action, self.action_time, self.embed_t, self.pos)
        fast = action_decoder(embed, self.act_blocks, self.out, kvs, F.pad(mask, (0, horizon), value=True),
                              horizon=horizon)

        def decode(x: Tensor, t: Tensor | float) -> Tensor:
            if x.shape[0] != mask.shape[0] or x.shape[1] != horizon:
                return self.decode(x, t, cache)
            return fast(x, t)
        return decode

    # ----------------------------------------------------------------- one sequence, no cache
    def forward_joint(self, x: Tensor, t: Tensor | float, parts: Parts) -> Tensor:
        """The velocity as one sequence ``[prefix, actions]`` under pi0's block-causal mask.

        Prefix rows see prefix keys only; action rows see everything. Equal to
        ``decode(x, t, encode(parts))`` (the cache is exact); used to test that.
        """
        hp, valid = self.prefix_tokens(parts)
        ha = self.action_tokens(x, t)
        p, n = hp.shape[1], hp.shape[1] + ha.shape[1]
        rows = torch.arange(n, device=x.device)[:, None] >= p
        allowed = rows | (torch.arange(n, device=x.device)[None] < p)  # [n, n]
        keys = F.pad(valid, (0, ha.shape[1]), value=True)  # [B, n]
        mask = (allowed[None] & keys[:, None])[:, None]  # [B, 1, n, n]
        for pb, ab in zip(self.prefix_blocks, self.act_blocks):
            qp, kp, vp = pb._split(hp)
            qa, ka, va = ab._split(ha)
            a = F.scaled_dot_product_attention(torch.cat([qp, qa], 2), torch.cat([kp, ka], 2),
                                               torch.cat([vp, va], 2), attn_mask=mask)
            ap, aa = a[:, :, :p].transpose(1, 2).flatten(2), a[:, :, p:].transpose(1, 2).flatten(2)
            if not pb.kv_only:
                hp = hp + pb.proj(ap)
                hp = hp + pb.mlp(pb.ln2(hp))
            ha = ha + ab.proj(aa)
            ha = ha + ab.mlp(ab.ln2(ha))
        return self.out(ha)


def vla_field(net: VLANet, parts: Parts, w: float = 1.0, cache: bool = True, prefix: Tensor | None = None,
              x0: Tensor | None = None) -> Field:
    """The ODE field of :class:`VLANet` for one batch of (normalised) prefixes, encoded once here.

    ``w != 1``: classifier-free guidance, ``v = v(x, t, "") + w (v(x, t, instruction) - v(x, t, ""))``,
    the instruction and the empty instruction in one batched call. ``prefix [B, d, A]`` with
    ``x0``: inpainting of committed actions (as :func:`~pushforward.policy.flow.expert_field`).
    ``cache=False`` recomputes the prefix at every step (:meth:`VLANet.forward_joint`).
    """
    if w != 1.0:
        state, images, ids = parts
        parts = (torch.cat([state, state]), [torch.cat([i, i]) for i in images],
                 torch.cat([ids, torch.full_like(ids, PAD)]))
    if cache and not torch.is_grad_enabled():
        v_net = net.decoder(net.encode(parts))  # acting: the same function, per-step work lean
    elif cache:
        kv = net.encode(parts)

        def v_net(x, t):
            return net.decode(x, t, kv)
    else:
        def v_net(x, t):
            return net.forward_joint(x, t, parts)

    if w != 1.0:
        v_one = v_net

        def v_net(x, t):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            tt = t.expand(x.shape[0]) if t.dim() == 0 else t
            cond, uncond = v_one(torch.cat([x, x]), torch.cat([tt, tt])).chunk(2)
            return uncond + w * (cond - uncond)

    if prefix is None:
        return Field(v_net)
    d, horizon = prefix.shape[1], x0.shape[1]
    mask = (torch.arange(horizon, device=x0.device) < d)[:, None]
    fixed = F.pad(prefix - x0[:, :d], (0, 0, 0, horizon - d))
    return Field(lambda x, t: torch.where(mask, fixed, v_net(x, t)))


class VLAPolicy(FlowPolicy):
    """pi0-style vision-language-action flow policy over action chunks ``[H, A]``.

    Conditional flow matching on the straight path (as :class:`FlowPolicy`), with pi0's shifted
    Beta time density and 10 Euler steps by default:

        L = E_{t, eps} || v_theta(t A + (1 - t) eps, t, images, instruction, state) - (A - eps) ||^2 .

    With ``instruction_drop = p > 0`` the instruction is replaced by the empty one with
    probability p in training, and ``act(..., guidance=w)`` follows classifier-free guidance
    (Ho & Salimans 2022): ``v = v(x, t, "") + w (v(x, t, instruction) - v(x, t, ""))``.

    ``objective`` keeps the network (encoder, prefix, attention, action tokens, prefix cache) and
    changes only what it is trained to output and how a chunk is drawn, so the baselines of
    :mod:`~pushforward.policy.baselines` run on the VLA's own network:

    * ``"flow"`` (default): the velocity above; ``steps`` Euler steps.
    * ``"ddpm"``: Diffusion Policy's epsilon-prediction (Chi et al. 2023; Ho et al. 2020) on the
      squared-cosine schedule with ``diffusion_steps`` K, the step fed where the flow time goes
      (:func:`~pushforward.policy.baselines.ddpm_loss`); ``act(sampler="ddpm")`` is ancestral
      over K calls, ``"ddim"`` deterministic over ``steps`` calls
      (:func:`~pushforward.policy.baselines.ddpm_sample`), the predicted chunk clipped to ``clip``.
    * ``"mse"``: regression of the chunk, ``|| f(0, t=1, o) - A ||^2``, one network call per chunk
      (the conditional mean: it averages modes).

    Args:
        image_shape: ``(C, H, W)`` of every camera. state_dim: S. action_dim: A. horizon: T.
        cameras: number of views k (all of ``image_shape``).
        max_text: instruction length in UTF-8 bytes (longer ones are truncated).
        width, depth, heads, time_embed: transformer sizes (prefix and action expert alike).
        patch: image patch size of the from-scratch encoder (a multiple of 4 dividing H and W;
            ``(H / patch) (W / patch)`` tokens per camera).
        instruction_drop: training probability of the empty instruction (0: no guidance).
        guidance: ``act``'s default guidance weight w (1: none).
        time_sampler, steps, solver: as :class:`FlowPolicy` (``steps`` is also the DDIM step count).
        objective: ``"flow"``, ``"ddpm"`` or ``"mse"`` (above). diffusion_steps: K >= 2 (ddpm).
        sampler: ``act``'s default ddpm sampler, ``"ddpm"`` or ``"ddim"``. clip: bound of the
            predicted clean chunk in normalised units (ddpm; ``None``: off).
        vision_backbone: an ``nn.Module`` the user loaded (e.g. from a local file) used instead
            of the from-scratch encoder (:class:`~pushforward.policy.vision.PretrainedEncoder`);
            such a policy is saved whole (pickled) by ``pf.save``. freeze_backbone: keep its
            weights fixed.

    Shapes: ``loss(actions [N, T, A], context [N, S + k C H W + max_text])`` (the packed layout of
    the module docstring); ``act(images=[B, C, H, W] uint8 (or a list of k), state=[B, S],
    instruction=list of B strings) -> [B, T, A]`` in raw units.

    >>> import torch, pushforward as pf
    >>> policy = pf.policy.VLAPolicy(image_shape=(3, 32, 32), state_dim=2, action_dim=2, horizon=4, width=32)
    >>> img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    >>> policy.act(images=img, state=torch.zeros(1, 2), instruction=["push left"]).shape
    torch.Size([1, 4, 2])
    """

    default_batch_size = 64
    default_lr = 3e-4
    default_ema = 0.999

    def __init__(self, image_shape: Sequence[int], state_dim: int, action_dim: int, horizon: int, *,
                 cameras: int = 1, max_text: int = 48, width: int = 128, depth: int = 3, heads: int = 4,
                 patch: int = 16, time_embed: int = 64, instruction_drop: float = 0.0, guidance: float = 1.0,
                 time_sampler: str = "beta", steps: int = 10, solver: str = "euler", objective: str = "flow",
                 diffusion_steps: int = 100, sampler: str = "ddpm", clip: float | None = 5.0,
                 vision_backbone: nn.Module | None = None, freeze_backbone: bool = False):
        image_shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else image_shape
        if (not isinstance(image_shape, tuple) or len(image_shape) != 3
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape)):
            raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {image_shape!r}")
        check_dim(state_dim, "state_dim")
        check_dim(action_dim, "action_dim")
        check_dim(horizon, "horizon")
        check_positive_int(cameras, "cameras")
        check_positive_int(max_text, "max_text")
        for name, v in (("width", width), ("depth", depth), ("heads", heads), ("time_embed", time_embed)):
            check_positive_int(v, name)
        if not 0.0 <= instruction_drop < 1.0:
            raise ValueError(f"instruction_drop must be a probability in [0, 1), got {instruction_drop!r}")
        check_choice(time_sampler, tuple(TIME_SAMPLERS), "time_sampler")
        check_choice(solver, tuple(FIXED_SOLVERS), "solver (a fixed-grid solver)")
        check_choice(objective, OBJECTIVES, "objective")
        check_int_range(diffusion_steps, "diffusion_steps", 2)
        check_choice(sampler, SAMPLERS, "sampler")
        clip = check_positive_float(clip, "clip", allow_none=True)
        if objective == "ddpm":
            check_int_range(steps, "steps (DDIM steps of objective='ddpm')", 1, diffusion_steps,
                            high_text=f"diffusion_steps={diffusion_steps}")
        self.image_shape, self.cameras = image_shape, cameras
        self.pixels = image_shape[0] * image_shape[1] * image_shape[2]
        context_dim = state_dim + cameras * self.pixels + max_text
        net = VLANet(image_shape, cameras, state_dim, action_dim, horizon, max_text, width, depth, heads, patch,
                     time_embed, vision_backbone, freeze_backbone)
        FlowMatching.__init__(self, (horizon, action_dim), context_dim, net=net, time_sampler=time_sampler,
                              steps=steps, solver=solver)
        self.default_logprob_solver = None
        self.resolved_options = {}  # FlowMatching's (its coupling's) are not options of this class
        self._init_policy(state_dim, action_dim, horizon, 0)
        self.state_dim = state_dim
        self.tokenizer = ByteTokenizer(max_text)
        self.instruction_drop, self.guidance = float(instruction_drop), float(guidance)
        self.objective, self.sampler, self.clip = objective, sampler, clip
        if objective == "ddpm":
            self.register_buffer("alpha_bar", cosine_alpha_bar(diffusion_steps).float(), persistent=False)
        # ``options`` records how it was built; ``config`` is the ``pf.build("vla-policy")`` record
        # that pf.save stores with the state dict (the tokenizer is byte-level, the normalisation
        # lives in buffers). A user's backbone is a module no config can name: such a policy is
        # pickled whole (config None).
        self.options = {"image_shape": image_shape, "state_dim": state_dim, "action_dim": action_dim,
                        "horizon": horizon, "cameras": cameras, "max_text": max_text, "width": width,
                        "depth": depth, "heads": heads, "patch": patch, "time_embed": time_embed,
                        "instruction_drop": instruction_drop, "guidance": guidance, "time_sampler": time_sampler,
                        "steps": steps, "solver": solver, "objective": objective, "diffusion_steps": diffusion_steps,
                        "sampler": sampler, "clip": clip, "pretrained_backbone": vision_backbone is not None,
                        "freeze_backbone": freeze_backbone}
        self.config = None
        if vision_backbone is None:
            from pushforward.registry import entry

            self.config = {"name": "vla-policy", "dim": action_dim, "context_dim": context_dim,
                           "image_shape": image_shape, **entry("vla-policy").options(supplied=("state_dim", "action_dim")),
                           **{k: v for k, v in self.options.items()
                              if k not in ("image_shape", "state_dim", "action_dim", "pretrained_backbone")}}

    # ----------------------------------------------------------------- context
    def _parts(self, context: Tensor) -> Parts:
        """Packed raw context ``[B, C]`` -> (normalised state, k images in [0, 1], token ids)."""
        s, p = self.state_dim, self.pixels
        state = self.normalize_obs(context[:, :s])
        images = [context[:, s + i * p: s + (i + 1) * p].view(-1, *self.image_shape) / 255.0
                  for i in range(self.cameras)]
        ids = context[:, s + self.cameras * p:]
        bad = (ids != ids.round()) | (ids < 0) | (ids >= VOCAB_SIZE)
        if bool(bad.any()):
            raise ValueError(f"instruction token ids must be integers in [0, {VOCAB_SIZE}), got {ids[bad][:5].tolist()} "
                             "(is the context packed by pf.policy.Demonstrations with this max_text?)")
        return state, images, ids.long()

    def _split_context(self, context: Tensor) -> tuple[Parts, None]:
        return self._parts(context), None

    def pack(self, images: Any, state: Any, instruction: Any) -> Tensor:
        """Checked raw inputs (as :meth:`act` takes them) -> packed context ``[B, C]``."""
        state, images, ids = self._inputs(images, state, instruction)
        return torch.cat([state, *[i.flatten(1) for i in images], ids.to(state)], 1)

    def _inputs(self, images: Any, state: Any, instruction: Any) -> tuple[Tensor, list[Tensor], Tensor]:
        """Raw ``act`` inputs checked -> (state [B, S] raw, k images [B, C, H, W] as float 0..255, ids)."""
        st = self._tensor(state, "state")
        if st is None:
            raise ValueError(f"state is missing: pass state=[B, {self.state_dim}]")
        if st.dim() == 1:
            st = st[None]
        if st.dim() != 2 or st.shape[1] != self.state_dim:
            raise ValueError(f"state must have shape [B, {self.state_dim}] or [{self.state_dim}] "
                             f"(state_dim={self.state_dim}), got {list(st.shape)}")
        check_finite(st, "state")
        b = st.shape[0]
        views = list(images) if isinstance(images, (list, tuple)) else [images]
        if images is None or len(views) != self.cameras:
            raise ValueError(f"images must be {'a list of ' + str(self.cameras) + ' tensors' if self.cameras > 1 else 'a tensor'} "
                             f"[B, {', '.join(map(str, self.image_shape))}] uint8 (cameras={self.cameras}), "
                             f"got {'None' if images is None else str(len(views)) + ' view(s)'}")
        out = []
        for i, v in enumerate(views):
            v = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            if not isinstance(v, Tensor) or v.dtype != torch.uint8:
                raise TypeError(f"images (camera {i}) must be uint8 pixels 0..255, got "
                                f"{v.dtype if isinstance(v, Tensor) else type(v).__name__}")
            if v.dim() == 3:
                v = v[None]
            if tuple(v.shape[1:]) != self.image_shape or v.dim() != 4:
                raise ValueError(f"images (camera {i}) must have shape [B, {', '.join(map(str, self.image_shape))}] "
                                 f"(image_shape={self.image_shape}), got {list(v.shape)}")
            if v.shape[0] != b:
                raise ValueError(f"images (camera {i}) have batch {v.shape[0]} but state has batch {b}")
            out.append(v.to(device=st.device, dtype=st.dtype))
        if instruction is None:
            raise ValueError("instruction is missing: pass instruction=[B strings] (the empty string '' is the "
                             "unconditional instruction)")
        texts = [instruction] if isinstance(instruction, str) else list(instruction)
        if len(texts) == 1 and b > 1:
            texts = texts * b
        if len(texts) != b:
            raise ValueError(f"instruction has {len(texts)} strings but state has batch {b}")
        return st, out, self.tokenizer.encode(texts).to(st.device)

    # ----------------------------------------------------------------- field
    def _field(self, parts: Parts, guidance: float | None = None, prefix: Tensor | None = None,
               x0: Tensor | None = None, cache: bool = True) -> Field:
        """:func:`vla_field` of this policy's net; ``guidance`` None: the policy's default w."""
        return vla_field(self.net, parts, self.guidance if guidance is None else float(guidance), cache, prefix, x0)

    def _fast_chunk(self, parts, task, prefix, x0, steps, solver) -> Tensor:
        return self._fast_solve(functools.partial(vla_field, self.net), (parts, self.guidance, True), prefix, x0,
                                steps, solver)

    def velocity_field(self, context: Tensor | None = None, guidance: float | None = None) -> Field:
        """The field for packed raw contexts ``[N, C]``; the prefix is encoded once, here."""
        return self._field(self._parts(context), guidance)

    def _drop_instruction(self, context: Tensor) -> Tensor:
        # The empty instruction (all padding) is the unconditional one guidance uses.
        if self.instruction_drop == 0:
            return context
        drop = torch.rand(context.shape[0], device=context.device) < self.instruction_drop
        cols = torch.arange(context.shape[1], device=context.device) >= context.shape[1] - self.tokenizer.max_len
        return torch.where(drop[:, None] & cols, torch.zeros_like(context), context)

    def _loss(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.objective == "flow":
            # Time, instruction drop, then noise: the order of draws of seeded runs stays as it was.
            t = self.time_sampler.sample(x.shape[0], device=x.device, dtype=x.dtype)
            context = self._drop_instruction(context)
            return self.paired_loss(torch.randn_like(x), x, context, t)
        # The same network, prefix encoded once; its output is epsilon (ddpm) or the chunk (mse).
        net = self._field(self._parts(self._drop_instruction(context)), 1.0).velocity
        if self.objective == "ddpm":
            return ddpm_loss(net, x, self.alpha_bar)
        return (net(torch.zeros_like(x), 1.0) - x).pow(2).mean()

    def _generate(self, parts: Parts, n: int, generator: torch.Generator | None, steps: int | None,
                  solver: str | None, sampler: str | None, w: float, cache: bool = True, prefix: Tensor | None = None,
                  x0: Tensor | None = None) -> Tensor:
        """Normalised chunks ``[n, T, A]`` for encoded-once prefixes ``parts``, by the objective's sampler."""
        if self.objective == "mse":  # one call on the zero chunk at t = 1: no noise to draw
            x = torch.zeros(n, *self.event_shape, device=parts[0].device, dtype=parts[0].dtype)
            return check_finite(vla_field(self.net, parts, w, cache).velocity(x, 1.0), "generated action chunk")
        x0 = self.base.sample(n, None, generator) if x0 is None else x0
        if self.objective == "ddpm":
            out = ddpm_sample(vla_field(self.net, parts, w, cache).velocity, x0, self.alpha_bar,
                              sampler or self.sampler, self.default_steps if steps is None else steps, self.clip,
                              generator)
            return check_finite(out, "generated action chunk")
        if self.fast_path is not None:
            return self._fast_solve(functools.partial(vla_field, self.net), (parts, w, cache), prefix, x0, steps, solver)
        return self._integrate(vla_field(self.net, parts, w, cache, prefix, x0), x0, steps, solver)

    def _check_sampling(self, steps: Any, solver: Any, sampler: Any, prefix: Any) -> None:
        """Sampling options that the objective has no use for raise instead of being ignored."""
        obj = self.objective
        if sampler is not None:
            if obj != "ddpm":
                raise ValueError(f"sampler={sampler!r} needs objective='ddpm'; this policy has objective={obj!r}")
            check_choice(sampler, SAMPLERS, "sampler")
        if solver is not None and obj != "flow":
            raise ValueError(f"solver={solver!r} is an ODE solver for objective='flow'; this policy has objective={obj!r}")
        if steps is not None and obj == "mse":
            raise ValueError("objective='mse' makes one network call per chunk; steps does not apply")
        if prefix is not None and obj != "flow":
            raise ValueError(f"prefix inpainting (real-time chunking) needs objective='flow'; this policy has "
                             f"objective={obj!r}")

    def _sample(self, n, context, generator=None, steps=None, solver=None, sampler=None, x0=None, **_):
        self._check_sampling(steps, solver, sampler, None)
        if self.objective == "flow":
            return FlowPolicy._sample(self, n, context, generator, steps, solver, x0=x0)
        return self._generate(self._parts(context), n, generator, steps, solver, sampler, self.guidance, x0=x0)

    def _log_prob(self, x, context=None, **kwargs):
        if self.objective != "flow":
            raise NotImplementedError(f"objective={self.objective!r} has no likelihood here; objective='flow' has one")
        return FlowPolicy._log_prob(self, x, context, **kwargs)

    def set_fast_path(self, mode: str | None = "reduce-overhead") -> VLAPolicy:
        """As :meth:`FlowPolicy.set_fast_path` (it compiles the flow's ODE solve: objective='flow' only)."""
        if mode is not None and self.objective != "flow":
            raise ValueError(f"the fast path compiles the flow solve; this policy has objective={self.objective!r}")
        return FlowPolicy.set_fast_path(self, mode)

    # ----------------------------------------------------------------- acting
    def act(self, images: Any = None, state: Any = None, instruction: Any = None, *, steps: int | None = None,
            solver: str | None = None, sampler: str | None = None, guidance: float | None = None, prefix: Any = None,
            generator: torch.Generator | None = None, cache: bool = True) -> Any:
        """A chunk of future actions for each observation, in raw units.

        Args:
            images: ``[B, C, H, W]`` (or ``[C, H, W]``) uint8, or a list of k such for k cameras.
            state: ``[B, S]`` or ``[S]`` raw state.
            instruction: B strings (one string is shared by the batch); ``""`` is unconditional.
            steps, solver: the sampler (default 10 Euler steps; with objective='ddpm', the DDIM steps).
            sampler: objective='ddpm' only: ``"ddpm"`` (K ancestral steps) or ``"ddim"`` (default: the
                policy's ``sampler``). guidance: CFG weight w.
            prefix: ``[B, d, A]`` raw actions the chunk must start with (real-time chunking), d < T.
            generator: seeds the initial noise. cache: reuse the prefix keys/values across steps
                (False recomputes them at every step; the same chunk, slower).

        Returns:
            ``[B, T, A]`` actions; an ndarray if ``state`` was one.

        Raises:
            ValueError / TypeError: naming the wrong shape or dtype, a missing instruction, or a
                batch mismatch between images, state and instruction.
        """
        st, imgs, ids = self._inputs(images, state, instruction)
        self._check_sampling(steps, solver, sampler, prefix)
        pre = None
        if prefix is not None:
            p = self._tensor(prefix, "prefix")
            if p.dim() == 2:
                p = p[None]
            if p.dim() != 3 or p.shape[0] != st.shape[0] or p.shape[2] != self.action_dim or p.shape[1] >= self.horizon:
                raise ValueError(f"prefix must be [B={st.shape[0]}, d < {self.horizon}, {self.action_dim}], "
                                 f"got {list(p.shape)}")
            check_finite(p, "prefix")
            pre = (p - self.data_loc[: p.shape[1]]) / self.data_scale[: p.shape[1]]
        with torch.inference_mode():
            parts = (self.normalize_obs(st), [i / 255.0 for i in imgs], ids)
            w = self.guidance if guidance is None else float(guidance)
            out = self.unstandardize(self._generate(parts, st.shape[0], generator, steps, solver, sampler, w, cache, pre))
        out = out.clone()  # an ordinary tensor (inference tensors cannot enter autograd later)
        return out.cpu().numpy() if isinstance(state, np.ndarray) else out

    def _act_std(self, obs_n, task, generator, prefix=None, steps=None, solver=None):
        raise TypeError("VLAPolicy.act takes images=, state= and instruction=")

    def set_normalization(self, actions: Any = None, state: Any = None) -> None:
        """Exact per-dimension statistics of actions ``[N, T, A]`` and state ``[N, S]`` (raw units)."""
        ChunkPolicyMixin.set_normalization(self, actions, state)

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, cameras={self.cameras}, state_dim={self.state_dim}, "
                f"action_dim={self.action_dim}, horizon={self.horizon}, max_text={self.tokenizer.max_len}, "
                f"objective={self.objective!r}, steps={self.default_steps}, guidance={self.guidance}")
