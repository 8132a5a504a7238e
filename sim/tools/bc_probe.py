"""Learnability probe: can a small image+instruction behaviour-cloning net learn the demos? (needs torch)

    python sim/tools/bc_probe.py DATASET [DATASET ...] [--seconds 720] [--episodes 30]

Not the product model: a 3-layer CNN whose features are FiLM-modulated by a bag-of-words of the instruction
(Perez et al. 2018), plus joint positions/velocities, regressing the normalised action delta (action - joint_pos).
It is trained for a fixed wall-clock budget on one thread, then run closed loop in the sim on held-out seeds
(1000000+) through `gato_ros.evaluation.evaluate`. Its purpose is to show the demonstrations are learnable from
64x64 pixels and text (grounding the colour word, not just the motion), and how much data that takes.

Measured on the shared 2-core box (sim/README.md): 300 reach demos, ~1800 steps: ~20% (chance: 25%, it goes to
the wrong object); 1200 reach demos, 2784 steps of batch 128 (720 s at nice 19): 27/30 = 90%.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    import torch
    import torch.nn as nn

    from gato_ros.dataset import EpisodeDataset
    from gato_ros.evaluation import evaluate
    from gato_ros.sim import ArmEnv, EnvConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="+")
    p.add_argument("--seconds", type=float, default=720.0, help="training wall-clock budget")
    p.add_argument("--episodes", type=int, default=30, help="closed-loop episodes per task")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    episodes = [ep for d in args.datasets for ep in EpisodeDataset(d, successful_only=True)]
    words = sorted({w for ep in episodes for w in ep.instruction.split()})

    def bag(text: str) -> np.ndarray:  # (len(words),) word counts; unknown words ignored
        v = np.zeros(len(words), np.float32)
        for w in text.split():
            if w in words:
                v[words.index(w)] += 1
        return v

    def state(obs_pos, obs_vel):
        return np.concatenate([obs_pos, obs_vel], -1)

    x = torch.tensor(np.concatenate([ep.observations["image"] for ep in episodes])).permute(0, 3, 1, 2).contiguous()
    txt = torch.tensor(np.concatenate([np.repeat(bag(ep.instruction)[None], len(ep), 0) for ep in episodes]))
    q = torch.tensor(np.concatenate([state(ep.observations["joint_pos"], ep.observations["joint_vel"])
                                     for ep in episodes])).float()
    y = torch.tensor(np.concatenate([ep.actions - ep.observations["joint_pos"] for ep in episodes])).float()
    y_scale, q_mean, q_std = y.std(0) + 1e-3, q.mean(0), q.std(0) + 1e-3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                     nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten())  # (B, 64*8*8)
            self.film = nn.Linear(len(words), 64 * 8 * 8)
            self.head = nn.Sequential(nn.Linear(64 * 64 + len(words) + 14, 256), nn.ReLU(), nn.Linear(256, 256),
                                      nn.ReLU(), nn.Linear(256, 7))

        def forward(self, img, t, s):
            h = self.cnn(img) * (1 + self.film(t))
            return self.head(torch.cat([h, t, (s - q_mean) / q_std], 1))

    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t0, steps = time.time(), 0
    while time.time() - t0 < args.seconds:
        idx = torch.randint(len(x), (128,))
        loss = ((net(x[idx].float() / 255, txt[idx], q[idx]) - y[idx] / y_scale) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1

    class Policy:
        def reset(self):
            pass

        def set_instruction(self, text):
            self.t = torch.tensor(bag(text))[None]

        def act(self, obs):
            with torch.no_grad():
                img = torch.tensor(obs["image"][None]).permute(0, 3, 1, 2).float() / 255
                s = torch.tensor(state(obs["joint_pos"], obs["joint_vel"])[None]).float()
                delta = net(img, self.t, s)[0] * y_scale
            return obs["joint_pos"] + delta.double().numpy()

    tasks = sorted({ep.task for ep in episodes})
    env = ArmEnv(EnvConfig(image_size=int(x.shape[-1])))
    result = evaluate(env, Policy(), tasks, args.episodes, seed=1_000_000, policy_name="bc_probe", progress=False)
    result["train"] = {"episodes": len(episodes), "samples": len(x), "steps": steps, "batch": 128,
                       "seconds": args.seconds, "final_loss": float(loss.detach())}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
