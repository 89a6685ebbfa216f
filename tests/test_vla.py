"""VLAPolicy, its tokenizer, encoders, Demonstrations and LeRobot-layout files, ColorReach."""

import json

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward.envs import color_reach
from pushforward.policy import ByteTokenizer, Demonstrations, VLAPolicy
from pushforward.policy.demos import write_video

IMG = (3, 16, 16)
S, A, T = 3, 2, 4


def _policy(**kw):
    torch.manual_seed(0)
    opts = dict(width=32, depth=2, heads=4, patch=8, max_text=12, time_embed=16)
    opts.update(kw)
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, **opts).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # break the symmetric init so every path matters
        for q in p.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return p.eval()


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, *IMG), generator=g, dtype=torch.uint8),
            torch.randn(b, S, generator=g, dtype=torch.float64))


def _parts(p, images, state, texts):
    return (p.normalize_obs(state), [i.double() / 255 for i in images], p.tokenizer.encode(texts))


# ----------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_unknown_characters_and_truncation():
    tok = ByteTokenizer(max_len=24)
    texts = ["push the T to the goal", "", "naïve café ☕", "日本語", "tab\tand\x00nul"]
    ids = tok.encode(texts)
    assert ids.shape == (5, 24) and ids.dtype == torch.long
    assert tok.decode(ids) == texts  # every character has bytes: nothing is unknown
    assert (ids[1] == 0).all()  # the empty instruction is all padding
    assert tok.decode(tok.encode("x" * 30)) == ["x" * 24]  # truncated to max_len bytes
    assert tok.decode(ByteTokenizer(4).encode("ab☕")) == ["ab"]  # a cut character is dropped
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.tensor([[300]]))
    with pytest.raises(TypeError, match="strings"):
        tok.encode([1, 2])


# ----------------------------------------------------------------- attention and cache
def test_prefix_cache_is_exact_and_actions_never_reach_the_prefix():
    p = _policy()
    images, state = _inputs()
    parts = _parts(p, [images], state, ["go left", "a longer instruction"])
    x = torch.randn(2, T, A, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    seen = []
    hooks = [b.qkv.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone())) for b in p.net.prefix_blocks]
    v_cached = p.net.decode(x, t, p.net.encode(parts))
    from_encode, seen[:] = list(seen), []
    v_joint = p.net.forward_joint(x, t, parts)
    joint_a, seen[:] = list(seen), []
    x2 = x.clone()
    x2[:, -1] += 1.0  # a later action token changes
    v_joint2 = p.net.forward_joint(x2, t, parts)
    joint_b = list(seen)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(v_joint, v_cached, rtol=1e-12, atol=1e-12)  # one masked sequence == cached path
    for a, b, c in zip(from_encode, joint_a, joint_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # the same prefix, as one sequence or alone
        torch.testing.assert_close(b, c, rtol=0, atol=0)  # the prefix never sees the actions: bit-equal
    assert not torch.allclose(v_joint2[:, 0], v_joint[:, 0])  # but action tokens see each other


def test_instruction_padding_is_masked_and_the_text_is_read():
    p = _policy()
    images, state = _inputs()
    x = torch.randn(2, T, A, dtype=torch.float64)
    t = torch.full((2,), 0.5, dtype=torch.float64)
    base = _parts(p, [images], state, ["go left", "go left"])
    v = p.net.decode(x, t, p.net.encode(base))
    # Changing the embedding of the padding token changes nothing: padding is never attended to.
    with torch.no_grad():
        p.net.text.weight[0] += 3.0
    torch.testing.assert_close(p.net.decode(x, t, p.net.encode(base)), v, rtol=1e-12, atol=1e-12)
    other = p.net.decode(x, t, p.net.encode(_parts(p, [images], state, ["go right", "go left"])))
    assert not torch.allclose(other[0], v[0]) and torch.allclose(other[1], v[1])


def test_cache_on_and_off_give_identical_chunks():
    p = _policy()
    images, state = _inputs(3)
    kw = dict(images=images, state=state, instruction=["a", "bb", ""], steps=5)
    a = p.act(**kw, generator=torch.Generator().manual_seed(3))
    b = p.act(**kw, generator=torch.Generator().manual_seed(3), cache=False)
    assert a.shape == (3, T, A)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_guidance_zero_is_the_empty_instruction_and_empty_is_valid():
    p = _policy(instruction_drop=0.2)
    images, state = _inputs()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    empty = p.act(images=images, state=state, instruction=["", ""], generator=g())
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(p.act(images=images, state=state, instruction="go", guidance=0.0, generator=g()),
                               empty, rtol=1e-10, atol=1e-10)
    cond = p.act(images=images, state=state, instruction="go", generator=g())
    w2 = p.act(images=images, state=state, instruction="go", guidance=2.0, generator=g())
    assert not torch.allclose(w2, cond)
    # Guidance is linear in the two fields: one Euler step of w = 2 is 2 cond - uncond.
    one = dict(images=images, state=state, steps=1)
    torch.testing.assert_close(p.act(**one, instruction="go", guidance=2.0, generator=g()),
                               2 * p.act(**one, instruction="go", generator=g())
                               - p.act(**one, instruction="", generator=g()), rtol=1e-9, atol=1e-9)


def test_real_time_chunking_keeps_the_committed_prefix():
    p = _policy()
    images, state = _inputs()
    pre = torch.randn(2, 2, A, dtype=torch.float64)
    out = p.act(images=images, state=state, instruction="go", prefix=pre, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :2], pre, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------- input checks
def test_bad_input_is_named():
    p = _policy()
    images, state = _inputs()
    with pytest.raises(ValueError, match=r"shape \[B, 3, 16, 16\]"):
        p.act(images=images[:, :, :8], state=state, instruction="go")
    with pytest.raises(TypeError, match="uint8"):
        p.act(images=images.double(), state=state, instruction="go")
    with pytest.raises(ValueError, match="instruction is missing"):
        p.act(images=images, state=state)
    with pytest.raises(ValueError, match="batch 2 but state has batch 1"):
        p.act(images=images, state=state[:1], instruction="go")
    with pytest.raises(ValueError, match="3 strings but state has batch 2"):
        p.act(images=images, state=state, instruction=["a", "b", "c"])
    with pytest.raises(ValueError, match="state_dim=3"):
        p.act(images=images, state=state[:, :2], instruction="go")
    with pytest.raises(ValueError, match="cameras=2"):
        _policy(cameras=2).act(images=images, state=state, instruction="go")
    with pytest.raises(ValueError, match="patch"):
        VLAPolicy(image_shape=(3, 18, 18), state_dim=S, action_dim=A, horizon=T, patch=8)
    with pytest.raises(ValueError, match="image_shape"):
        VLAPolicy(image_shape=(16, 16), state_dim=S, action_dim=A, horizon=T)
    with pytest.raises(ValueError, match="token ids"):
        p.loss(torch.randn(2, T, A, dtype=torch.float64), torch.randn(2, p.context_dim, dtype=torch.float64))
    with pytest.raises(ValueError, match="state must be"):
        Demonstrations(actions=torch.randn(2, T, A), state=torch.randn(3, S), images=images, instructions=["", ""])
    with pytest.raises(TypeError, match="uint8"):
        Demonstrations(actions=torch.randn(2, T, A), state=torch.randn(2, S), images=images.float(),
                       instructions=["", ""])
    with pytest.raises(ValueError, match="N=2 strings"):
        Demonstrations(actions=torch.randn(2, T, A), state=torch.randn(2, S), images=images, instructions=["a"])


# ----------------------------------------------------------------- fit, save, load
def _demos(n=32, cameras=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (n, *IMG), generator=g, dtype=torch.uint8) for _ in range(cameras)]
    sign = torch.tensor([1.0 if i % 2 else -1.0 for i in range(n)])
    acts = sign[:, None, None] * torch.ones(n, T, A) + 0.05 * torch.randn(n, T, A, generator=g)
    return Demonstrations(actions=acts + 3.0, state=torch.randn(n, S, generator=g) * 2 + 1,
                          images=imgs if cameras > 1 else imgs[0],
                          instructions=["go right" if i % 2 else "go left" for i in range(n)], max_text=12,
                          episode_index=torch.arange(n) // 8)


def test_fit_through_the_trainer_and_save_load_act_identically(tmp_path):
    demos = _demos(cameras=2)
    torch.manual_seed(0)
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, cameras=2, width=32, depth=1, patch=8,
                  max_text=12, instruction_drop=0.1)
    h = pf.fit(p, demos, steps=3, progress=False, checkpoint_every=None, batch_size=16)
    assert h.steps == 3 and np.isfinite(h.loss).all()
    assert not torch.allclose(p.obs_loc, torch.zeros(S))  # the state normalisation was set from the data
    assert torch.allclose(p.data_loc, torch.full((T, A), 3.0), atol=0.2)  # actions: raw units
    pf.save(p, tmp_path / "vla.pt")
    q = pf.load(tmp_path / "vla.pt").eval()
    p.eval()
    kw = dict(images=[demos.images[0][:2], demos.images[1][:2]], state=demos.state[:2], instruction=["go left", "é"])
    torch.testing.assert_close(q.act(**kw, generator=torch.Generator().manual_seed(1)),
                               p.act(**kw, generator=torch.Generator().manual_seed(1)), rtol=0, atol=0)
    assert q.tokenizer.max_len == 12 and torch.equal(q.obs_scale, p.obs_scale)


@pytest.mark.slow
def test_the_policy_learns_to_read_the_instruction():
    """Actions are +1 for "go right" and -1 for "go left" whatever the image: the chunk's sign must follow the text."""
    demos = _demos(n=64)
    torch.manual_seed(0)
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, width=32, depth=2, patch=8, max_text=12)
    pf.fit(p, demos, steps=150, progress=False, checkpoint_every=None, batch_size=32, lr=1e-3, ema=None)
    p.eval()
    images, state = demos.images[0][:8], demos.state[:8]
    g = torch.Generator().manual_seed(0)
    right = p.act(images=images, state=state, instruction="go right", generator=g) - 3.0
    left = p.act(images=images, state=state, instruction="go left", generator=g) - 3.0
    assert right.mean() > 0.5 and left.mean() < -0.5, (right.mean(), left.mean())


def test_pretrained_backbone_is_used_frozen_and_saved(tmp_path):
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU())  # -> [B, 8, 4, 4]
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, width=32, depth=1, max_text=12,
                  vision_backbone=backbone, freeze_backbone=True)
    assert p.net.vision.tokens == 16 and not any(q.requires_grad for q in backbone.parameters())
    demos = _demos()
    pf.fit(p, demos, steps=2, progress=False, checkpoint_every=None, batch_size=16)
    pf.save(p, tmp_path / "p.pt")
    q = pf.load(tmp_path / "p.pt")
    torch.testing.assert_close(q.net.vision.backbone[0].weight, backbone[0].weight)


# ----------------------------------------------------------------- LeRobot layout
def test_lerobot_layout_round_trip(tmp_path):
    d = _demos(n=20, cameras=2)
    d.save(tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["total_frames"] == 20
    assert info["features"]["observation.images.cam1"]["dtype"] == "image"
    assert (tmp_path / "ds" / "data" / "chunk-000" / "episode_000002.parquet").is_file()
    e = Demonstrations.load(tmp_path / "ds", max_text=12)
    assert torch.equal(e.actions, d.actions) and torch.equal(e.state, d.state)
    assert all(torch.equal(a, b) for a, b in zip(e.images, d.images))
    assert e.instructions == d.instructions and torch.equal(e.episode_index, d.episode_index)
    assert torch.equal(e.context, d.context)


def test_lerobot_per_step_dataset_with_video_is_chunked(tmp_path):
    """A per-frame LeRobot dataset (action [A], images as an mp4): chunks of the next T actions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, m, h, w = tmp_path / "rec", 6, 16, 16
    frames = np.zeros((m, h, w, 3), np.uint8)
    for i in range(m):
        frames[i, :, : 2 * (i + 1)] = (200, 40, 40)  # a bar that grows: frames are distinct
    write_video(root / "videos/chunk-000/observation.images.top/episode_000000.mp4", frames)
    acts = np.arange(m * A, dtype=np.float32).reshape(m, A)
    tab = pa.table({"action": pa.FixedSizeListArray.from_arrays(pa.array(acts.ravel()), A),
                    "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(m * S, np.float32)), S),
                    "frame_index": pa.array(np.arange(m)), "episode_index": pa.array(np.zeros(m, np.int64)),
                    "task_index": pa.array(np.zeros(m, np.int64))})
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(tab, root / "data/chunk-000/episode_000000.parquet")
    (root / "meta").mkdir()
    (root / "meta/info.json").write_text(json.dumps({"fps": 10, "features": {
        "action": {"dtype": "float32", "shape": [A]}, "observation.state": {"dtype": "float32", "shape": [S]},
        "observation.images.top": {"dtype": "video", "shape": [h, w, 3]}}}))
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "stack the cups"}) + "\n")
    with pytest.raises(ValueError, match="horizon"):
        Demonstrations.load(root)
    d = Demonstrations.load(root, horizon=3)
    assert d.actions.shape == (m, 3, A) and d.instructions == ["stack the cups"] * m
    torch.testing.assert_close(d.actions[0], torch.from_numpy(acts[:3]))
    torch.testing.assert_close(d.actions[-1], torch.from_numpy(acts[[-1, -1, -1]]))  # padded with the last action
    got = d.images[0].permute(0, 2, 3, 1).numpy().astype(int)
    assert got.shape == (m, h, w, 3) and np.abs(got - frames).max() <= 2  # lossless codec: at most rounding
    with pytest.raises(FileNotFoundError, match="info.json"):
        Demonstrations.load(tmp_path / "nothing")


# ----------------------------------------------------------------- the language task
def test_color_reach_expert_and_chance_structure(monkeypatch):
    env = color_reach.ColorReachEnv(size=32)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (3, 32, 32) and obs["image"].dtype == np.uint8
    assert info["target"] in obs["instruction"]
    data = color_reach.collect(12, horizon=T, size=32)
    n = len(data["instructions"])
    assert n > 12 and data["images"].shape == (n, 3, 32, 32) and data["actions"].shape == (n, T, 2)
    assert len({s.split()[-2] if s.split()[-1] in ("disc", "one", "target") else s.split()[-1]
                for s in data["instructions"]}) == 3
    demos = Demonstrations(**data)
    assert len(demos) == n
    # The expert's closed-loop success on the evaluation episodes is the ceiling a policy imitates.
    ceiling = color_reach.evaluate_expert(episodes=30, size=32, horizon=T)
    assert ceiling["touched_any"] == 1.0 and ceiling["success"] >= 0.85, ceiling

    class Scripted:  # goes to the disc named by the instruction it is given
        def act(self, images, state, instruction, generator=None):
            env_color = next(c for c in color_reach.COLORS if c in instruction[0])
            goal = self.env.discs[env_color]
            d = goal - state[0]
            return (np.tile(d / max(np.linalg.norm(d) / env.max_step, 1.0), (T, 1)))[None]

    # The expert reading the instruction succeeds; one always going for red succeeds about 1/3 of the time.
    s = Scripted()
    orig_reset = color_reach.ColorReachEnv.reset

    def reset(self, seed=None, options=None):
        s.env = self
        return orig_reset(self, seed, options)

    monkeypatch.setattr(color_reach.ColorReachEnv, "reset", reset)
    told = color_reach.evaluate(s, episodes=30, size=32)["success"]
    red = color_reach.evaluate(s, episodes=30, size=32, instruction="move to red")["success"]
    assert told >= 0.85 and 0.1 <= red <= 0.6, (told, red)


def test_fused_action_embedding_is_the_unfused_function():
    from pushforward.nets.time import batch_times
    from pushforward.policy import FlowPolicy
    from pushforward.policy.nets import fused_action_embedding

    torch.manual_seed(0)
    net = FlowPolicy(5, 2, 6, width=32, time_embed=16).double().net
    x, t = torch.randn(3, 6, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    te = net.embed_t(batch_times(t, x))[:, None].expand(-1, 6, -1)
    ref = net.action_time(torch.cat([net.in_action(x), te], -1)) + net.pos
    got = fused_action_embedding(net.in_action, net.action_time, net.embed_t, net.pos, x, t)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    got.sum().backward()  # every parameter of the fused path still trains
    assert all(p.grad is not None for p in (*net.in_action.parameters(), *net.action_time.parameters(), net.pos))


def test_lean_act_decoder_equals_the_module_decode_path():
    # act's decoder (folded weights once per chunk, functional block steps, cached time terms)
    # against the original per-step net.decode path, float64, same noise.
    from pushforward.continuous.cnf import Field

    p = _policy()
    images, state = _inputs(3)
    texts = ["push the T", "", "go"]
    kw = dict(images=images, state=state, instruction=texts, steps=7)
    got = p.act(**kw, generator=torch.Generator().manual_seed(5))
    assert not got.is_inference() and got.dtype == torch.float64
    with torch.no_grad():
        x0 = p.base.sample(3, None, torch.Generator().manual_seed(5))
        cache = p.net.encode(_parts(p, [images], state, texts))
        ref = p.unstandardize(p._solve(Field(lambda x, t: p.net.decode(x, t, cache)), x0, "euler", 7))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # a cache of one observation shared by several chunks still goes through decode
    with torch.no_grad():
        c1 = p.net.encode(_parts(p, [images[:1]], state[:1], texts[:1]))
        x, t = torch.randn(2, T, A, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
        torch.testing.assert_close(p.net.decoder(c1)(x, t), p.net.decode(x, t, c1), rtol=1e-12, atol=1e-12)


def test_registered_name_builds_saves_by_config_and_reloads(tmp_path):
    """``vla-policy`` is a build name: saved as config + state dict (not pickled), the state size
    follows from the packed context size, and a bad context size is named."""
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, width=16, depth=1, patch=8, max_text=6)
    q = pf.build("vla-policy", A, context_dim=p.context_dim, image_shape=IMG, horizon=T, width=16, depth=1, patch=8,
                 max_text=6)
    assert q.config == p.config and q.state_dim == S
    p.set_normalization(actions=torch.randn(20, T, A) * 3 + 1, state=torch.randn(20, S) * 2)
    pf.save(p, tmp_path / "p.pt")
    payload = torch.load(tmp_path / "p.pt", weights_only=False)
    assert "config" in payload and "module" not in payload
    r = pf.load(tmp_path / "p.pt")
    img, st = torch.randint(0, 256, (2, *IMG), dtype=torch.uint8), torch.randn(2, S)
    kw = {"images": img, "state": st, "instruction": ["go left", ""]}
    assert torch.equal(r.act(**kw, generator=torch.Generator().manual_seed(0)),
                       p.act(**kw, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="context_dim"):
        pf.build("vla-policy", A, context_dim=10, image_shape=IMG)
    with pytest.raises(ValueError, match="image_shape"):
        pf.build("vla-policy", A, context_dim=p.context_dim)


# ----------------------------------------------------------------- objectives: ddpm and mse baselines on the VLA's network
VARIANTS = [("flow", {}), ("ddpm", {"sampler": "ddpm"}), ("ddpm", {"sampler": "ddim", "steps": 4}), ("mse", {})]


@pytest.mark.parametrize("objective,kw", VARIANTS)
def test_every_objective_caches_exactly_and_reloads_identically(objective, kw, tmp_path):
    """The prefix cache is exact for every sampler, and a saved policy (config + state dict)
    records its objective and acts bit-identically after loading."""
    p = _policy(objective=objective, diffusion_steps=12)
    images, state = _inputs(3)
    act = dict(images=images, state=state, instruction=["a", "bb", ""], **kw)
    a = p.act(**act, generator=torch.Generator().manual_seed(3))
    b = p.act(**act, generator=torch.Generator().manual_seed(3), cache=False)
    assert a.shape == (3, T, A) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert p.config["objective"] == objective and p.config["diffusion_steps"] == 12
    pf.save(p, tmp_path / "p.pt")
    assert "module" not in torch.load(tmp_path / "p.pt", weights_only=False)  # saved by config
    q = pf.load(tmp_path / "p.pt").eval()
    assert q.objective == objective
    torch.testing.assert_close(q.act(**act, generator=torch.Generator().manual_seed(3)), a, rtol=0, atol=0)
    ctx = p.pack(images, state, ["a", "bb", ""])
    assert p.sample(3, ctx).shape == (3, T, A)


def test_mse_act_is_one_deterministic_call_on_the_zero_chunk():
    p = _policy(objective="mse")
    images, state = _inputs(2)
    kw = dict(images=images, state=state, instruction="go")
    a = p.act(**kw, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.act(**kw, generator=torch.Generator().manual_seed(9)), a, rtol=0, atol=0)
    parts = _parts(p, [images], state, ["go", "go"])
    direct = p.net.decode(torch.zeros(2, T, A, dtype=torch.float64), 1.0, p.net.encode(parts))
    torch.testing.assert_close(a, p.unstandardize(direct), rtol=1e-10, atol=1e-10)


def test_ddpm_samplers_differ_and_ddpm_draws_depend_on_the_generator():
    p = _policy(objective="ddpm", diffusion_steps=12)
    images, state = _inputs(2)
    kw = dict(images=images, state=state, instruction="go")
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    ddpm, ddim = p.act(**kw, generator=g(0)), p.act(**kw, sampler="ddim", steps=4, generator=g(0))
    assert not torch.allclose(ddpm, ddim)
    assert not torch.allclose(ddpm, p.act(**kw, generator=g(1)))
    torch.testing.assert_close(p.act(**kw, generator=g(0)), ddpm, rtol=0, atol=0)


@pytest.mark.parametrize("objective", ["flow", "ddpm", "mse"])
def test_every_objective_loss_is_finite_and_decreases(objective):
    demos = _demos(n=32)
    torch.manual_seed(0)
    p = VLAPolicy(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, width=32, depth=1, patch=8, max_text=12,
                  objective=objective, diffusion_steps=20)
    p.set_normalization(actions=demos.actions, state=demos.state)
    x, ctx = (demos.actions - p.data_loc) / p.data_scale, demos.context  # the loss is in normalised units

    def fixed_loss():  # the same noise / times every time it is measured
        torch.manual_seed(123)
        with torch.no_grad():
            return float(np.mean([p._loss(x, ctx).item() for _ in range(4)]))

    before = fixed_loss()
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = p._loss(x, ctx)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before


def test_objective_and_sampler_errors_are_named():
    kw = dict(image_shape=IMG, state_dim=S, action_dim=A, horizon=T, width=16, depth=1, patch=8)
    with pytest.raises(ValueError, match="objective"):
        VLAPolicy(**kw, objective="ppo")
    with pytest.raises(ValueError, match="sampler"):
        VLAPolicy(**kw, objective="ddpm", sampler="euler")
    with pytest.raises(ValueError, match="diffusion_steps"):
        VLAPolicy(**kw, objective="ddpm", diffusion_steps=1)
    with pytest.raises(ValueError, match="DDIM steps"):
        VLAPolicy(**kw, objective="ddpm", diffusion_steps=8, steps=10)
    with pytest.raises(ValueError, match="clip"):
        VLAPolicy(**kw, objective="ddpm", clip=-1.0)
    images, state = _inputs()
    act = dict(images=images, state=state, instruction="go")
    flow, ddpm, mse = (_policy(objective=o, diffusion_steps=12) for o in ("flow", "ddpm", "mse"))
    with pytest.raises(ValueError, match="sampler='ddim' needs objective='ddpm'"):
        flow.act(**act, sampler="ddim")
    with pytest.raises(ValueError, match="sampler must be one of"):
        ddpm.act(**act, sampler="euler")
    with pytest.raises(ValueError, match="DDIM steps"):
        ddpm.act(**act, sampler="ddim", steps=20)
    with pytest.raises(ValueError, match="ODE solver for objective='flow'"):
        ddpm.act(**act, solver="rk4")
    with pytest.raises(ValueError, match="steps does not apply"):
        mse.act(**act, steps=5)
    with pytest.raises(ValueError, match="prefix inpainting"):
        ddpm.act(**act, prefix=torch.zeros(2, 1, A, dtype=torch.float64))
    with pytest.raises(ValueError, match="fast path"):
        mse.set_fast_path("eager")
    with pytest.raises(NotImplementedError, match="likelihood"):
        ddpm.log_prob(torch.zeros(2, T, A, dtype=torch.float64), ddpm.pack(images, state, "go"))
