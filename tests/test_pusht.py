"""PushT wrappers and scripted expert (gym-pusht comes with the ``test`` extra, via ``policy``;
CI fails on any skip, so the guard below only helps a checkout installed without the extra)."""

import numpy as np
import pytest

pytest.importorskip("gym_pusht", reason="gym-pusht not installed (pip install -e '.[test]')")

from pushforward.envs.pusht import OBS_DIM, PushTExpert, make_env, pusht_metrics  # noqa: E402
from pushforward.policy import ObsHistory, make_chunks, rollout  # noqa: E402


def test_flat_observation_and_metrics():
    env = make_env()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS_DIM,) and np.isfinite(obs).all()
    ep = rollout(env, lambda o: o[:2], seed=0, max_steps=5)  # stand still
    m = pusht_metrics(ep)
    assert ep["obs"].shape == (6, OBS_DIM) and ep["actions"].shape == (5, 2)
    assert 0.0 <= m["max_coverage"] < 0.95 and m["success"] == 0.0


def test_expert_planning_leaves_the_state_untouched():
    env = make_env()
    env.reset(seed=3)
    u = env.unwrapped
    before = (tuple(u.block.position), u.block.angle, tuple(u.agent.position))
    ex = PushTExpert(env)
    ex._choose()  # simulates dozens of pushes on the live physics, then restores
    after = (tuple(u.block.position), u.block.angle, tuple(u.agent.position))
    np.testing.assert_allclose(np.hstack([before[0], before[1], before[2]]), np.hstack([after[0], after[1], after[2]]),
                               atol=1e-9)
    assert ex.pre is not None and len(ex.plan) >= 1


def test_expert_improves_coverage_and_chunks_build():
    env = make_env()
    ex = PushTExpert(env)
    ep = rollout(env, ex, seed=100_001, max_steps=60)
    cov = [i["coverage"] for i in ep["infos"][1:]]
    assert max(cov) > cov[0] + 0.1  # it pushes the T toward the goal
    a, o = make_chunks([(ep["obs"][:-1], ep["actions"])], horizon=16, obs_history=2)
    assert a.shape == (ep["steps"], 16, 2) and o.shape == (ep["steps"], 2 * OBS_DIM)
    seen = []
    h = ObsHistory(lambda x: seen.append(x) or x[-OBS_DIM:-OBS_DIM + 2], 2)
    rollout(env, h, seed=0, max_steps=3)
    assert all(s.shape == (2 * OBS_DIM,) for s in seen)


def test_vectorised_coverage_and_keypoints_match_the_environment():
    from pushforward.envs.pusht import coverage, keypoint_distance

    env = make_env()
    u = env.unwrapped
    rng = np.random.default_rng(0)
    poses, want = [], []
    for s in range(8):
        env.reset(seed=s)
        for _ in range(4):
            env.step(rng.uniform(100, 400, 2))
        poses.append([u.block.position[0], u.block.position[1], u.block.angle])
        want.append(u._get_coverage())
    np.testing.assert_allclose(coverage(np.array(poses), u.goal_pose), want, atol=1e-9)
    assert np.ptp(want) > 0.05  # the states differ, so the check means something
    assert keypoint_distance(np.array([u.goal_pose]), u.goal_pose)[0] < 1e-9
    assert coverage(np.array([u.goal_pose]), u.goal_pose)[0] > 1 - 1e-9


def test_expert_plans_are_a_function_of_the_state():
    # The expert keeps no memory across plans, so a policy that sees the state can imitate it.
    env = make_env()
    obs, _ = env.reset(seed=5)
    a = PushTExpert(env)
    first = a(obs)
    env.reset(seed=5)
    b = PushTExpert(env)
    np.testing.assert_allclose(b(obs), first)
    assert a.replan == 8


def test_expert_chunk_is_what_the_expert_does_and_leaves_the_state():
    # chunk() simulates with the expert's copy of the environment's step; executing the same
    # actions for real must reproduce a fresh expert's first 16 actions (the labels are faithful).
    env = make_env()
    env.reset(seed=7)
    u = env.unwrapped
    for _ in range(5):  # somewhere mid-episode, with the agent and block moving
        env.step(np.array([300.0, 250.0]))
    ex = PushTExpert(env)
    ex(np.asarray(u.agent.position))  # an expert with a plan of its own, which chunk() must keep
    memory = (len(ex.plan), ex.t)
    state = (tuple(u.block.position), u.block.angle, tuple(u.agent.position), tuple(u.agent.velocity))
    labels = ex.chunk(16)
    assert labels.shape == (16, 2) and (len(ex.plan), ex.t) == memory
    np.testing.assert_allclose(np.hstack([np.ravel(v) for v in state]),
                               np.hstack([np.ravel(v) for v in (tuple(u.block.position), u.block.angle,
                                                                tuple(u.agent.position), tuple(u.agent.velocity))]),
                               atol=1e-9)
    fresh = PushTExpert(env)
    done = []
    for _ in range(16):
        a = np.clip(fresh(np.asarray(u.agent.position)), 0, 512)
        done.append(a)
        env.step(a)
    np.testing.assert_allclose(np.asarray(done), labels, atol=1e-6)
    with pytest.raises(ValueError, match="horizon"):
        ex.chunk(0)


def test_relabel_collects_expert_chunks_on_the_learners_states():
    from pushforward.envs import relabel

    env = make_env()
    ex = PushTExpert(env)
    learner = ObsHistory(lambda o: o[-OBS_DIM:-OBS_DIM + 2] + 5.0, 2)  # a poor learner: drifts
    data = relabel(env, learner, lambda e: ex.chunk(16), episodes=2, seed=3, every=10, obs_history=2,
                   max_steps=25, metrics=pusht_metrics)
    assert data["actions"].shape == (6, 16, 2) and data["obs"].shape == (6, 2 * OBS_DIM)
    assert len(data["episodes"]) == 2 and "max_coverage" in data["episodes"][0]
    # The first record of an episode repeats its first observation; labels are the expert's.
    obs0, _ = env.reset(seed=3)
    np.testing.assert_allclose(data["obs"][0], np.concatenate([obs0, obs0]))
    np.testing.assert_allclose(data["actions"][0], PushTExpert(env).chunk(16), atol=1e-9)
    with pytest.raises(ValueError, match="every"):
        relabel(env, learner, lambda e: ex.chunk(16), episodes=1, every=0)


def test_expert_plans_when_no_pre_contact_point_fits():
    # A learner can jam the T into a corner where every pre-contact point lies outside the
    # arena; the expert then pushes from where the agent stands instead of failing.
    env = make_env()
    env.reset(seed=0)
    u = env.unwrapped
    u.block.angle = 1.8326
    u.block.position = (10.0, 10.0)
    u.agent.position = (200.0, 200.0)
    u.space.reindex_shapes_for_body(u.block)
    u.space.reindex_shapes_for_body(u.agent)
    ex = PushTExpert(env)
    ex._choose()
    assert len(ex.plan) >= 1 and np.isfinite(np.asarray(ex.plan)).all()
    np.testing.assert_allclose(ex.pre, [200.0, 200.0])  # from here: no walk to a contact point
    assert ex.chunk(4).shape == (4, 2)


# ----------------------------------------------------------------- PushT from pixels
def _random_episode(env, seed=2, steps=12):
    rng = np.random.default_rng(seed)
    obs = [env.reset(seed=seed)[0]]
    acts = rng.uniform(80, 430, (steps, 2))
    for a in acts:
        obs.append(env.step(a)[0])
    return np.asarray(obs), acts


def test_demo_rendering_is_the_image_the_policy_sees_at_evaluation():
    """Same seed and actions in the state env and the pixel env: the demonstration images
    rendered from the recorded states equal the pixel env's observations bit for bit, and
    PixelPolicy hands the VLA exactly those images and the agent position."""
    import torch

    from pushforward.envs.pusht_pixels import (
        PixelPolicy,
        block_pose,
        make_pixel_env,
        pixel_demos,
        render_states,
    )

    state_obs, acts = _random_episode(make_env())
    pix_obs, _ = _random_episode(make_pixel_env(32))
    assert pix_obs.shape == (13, 2 + 3 * 32 * 32)
    np.testing.assert_array_equal(pix_obs[:, :2], state_obs[:, :2])
    env = make_env()
    _random_episode(env)
    u = env.unwrapped
    np.testing.assert_allclose(block_pose(state_obs[-1:, 2:])[0], [*u.block.position, u.block.angle], atol=1e-9)
    images = render_states(state_obs, 32)
    assert images.shape == (13, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(13, -1), pix_obs[:, 2:])
    assert images.std() > 0  # not blank: the T, the goal and the agent are drawn

    demos = pixel_demos([(state_obs[:-1], acts)], horizon=4, size=32, instruction="push", max_text=8)
    assert demos.actions.shape == (12, 4, 2) and demos.state.shape == (12, 2) and demos.image_shape == (3, 32, 32)
    assert demos.images[0].dtype == torch.uint8 and demos.instructions == ["push"] * 12

    seen = {}

    class Spy:
        state_dim, image_shape, horizon = 2, (3, 32, 32), 4

        def act(self, images, state, instruction, **kw):
            seen.update(images=images, state=state, instruction=instruction)
            return np.zeros((len(state), 4, 2))

    PixelPolicy(Spy(), "push").act(pix_obs[3:5])
    assert torch.equal(seen["images"], demos.images[0][3:5]) and seen["instruction"] == "push"
    np.testing.assert_array_equal(seen["state"], state_obs[3:5, :2])  # (Demonstrations keep float32)


def test_evaluate_pixels_runs_every_objective():
    import torch

    from pushforward.envs.pusht_pixels import evaluate_pixels
    from pushforward.policy import VLAPolicy

    for objective, kw in (("flow", {}), ("ddpm", {"sampler": "ddim", "steps": 3}), ("mse", {})):
        torch.manual_seed(0)
        p = VLAPolicy(image_shape=(3, 32, 32), state_dim=2, action_dim=2, horizon=4, width=16, depth=1, heads=2,
                      patch=8, max_text=1, objective=objective, diffusion_steps=10).eval()
        p.set_normalization(actions=torch.rand(8, 4, 2) * 512, state=torch.rand(8, 2) * 512)
        r = evaluate_pixels(p, episodes=2, max_steps=6, execute=2, **kw)
        assert len(r["episodes"]) == 2 and 0.0 <= r["mean_max_coverage"] < 0.95 and r["success_rate"] == 0.0
        assert r["act_ms_median"] > 0
