"""A flow policy that keeps both routes: train on a bimodal scripted expert, then roll out.

    python examples/policy_tworoute.py [seconds]

The expert goes left or right around an obstacle at random; the flow policy reproduces both
routes and never averages them into the obstacle (see benchmarks/policy.py for baselines).
"""

import sys

import torch

import pushforward as pf
from pushforward.envs import TwoRouteEnv, TwoRouteExpert, two_route_metrics
from pushforward.policy import ChunkExecutor, FlowPolicy, evaluate_policy, make_chunks, rollout

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
torch.set_num_threads(1)

# 1. Demonstrations -> (action chunk [N, 8, 2], observation [N, 2]) pairs.
env, expert = TwoRouteEnv(), TwoRouteExpert(seed=1)
episodes = [rollout(env, expert, seed=i, max_steps=80) for i in range(200)]
actions, obs = make_chunks([(e["obs"][:-1], e["actions"]) for e in episodes], horizon=8)

# 2. Train (actions/observations are normalised inside the policy: act speaks raw units).
policy = FlowPolicy(obs_dim=2, action_dim=2, horizon=8, width=64, depth=2)
policy.set_normalization(actions, obs)
pf.fit(policy, torch.tensor(actions, dtype=torch.float32), context=torch.tensor(obs, dtype=torch.float32),
       max_time=seconds, val_fraction=0, progress=False, checkpoint_every=None)

# 3. Receding horizon: execute 4 of the 8 actions, then re-plan with 10 Euler steps.
controller = ChunkExecutor(policy, execute=4, steps=10)
res = evaluate_policy(TwoRouteEnv, controller, episodes=50, seed=0, max_steps=80, metrics=two_route_metrics)
print({k: round(v, 3) for k, v in res["mean"].items()})
