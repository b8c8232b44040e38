"""RISE in a plain TorchRL DQN pipeline: a frozen encoder's context window feeds an LSTM stream.

Everything but two pieces is stock TorchRL: a Gymnasium Atari env (ale-py), TorchRL's
``Collector``, a ``ReplayBuffer`` on ``LazyTensorStorage``, ``QValueActor`` + ``EGreedyModule``,
``DQNLoss`` and ``SoftUpdate``. From torchrl_rise: ``RiseContextTransform`` (embeds each frame once
with a frozen encoder and keeps the window of the last K embeddings, ``rise_context`` /
``rise_context_mask``) and ``RiseContextStream`` (a user's CNN and head with RISE's LSTM + gate).

    python examples/rise_dqn.py --frames 20000
"""

from __future__ import annotations

import argparse

import torch
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import GymEnv, TransformedEnv
from torchrl.envs.transforms import CatFrames, Compose, GrayScale, Resize, ToTensorImage
from torchrl.modules import EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, SoftUpdate

from torchrl_rise import RiseContextModule, RiseContextStream, RiseContextTransform, make_encoder

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--env", default="ALE/Pong-v5")
parser.add_argument("--frames", type=int, default=20_000, help="env steps to collect")
parser.add_argument("--context", type=int, default=16, help="window length K")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

# 1. env: 84x84 grayscale, 4 stacked frames, then the frozen encoder and its context window
encoder = make_encoder("downsample", size=8)  # weight-free: 4 frames x 8x8 pixels -> 256-d
env = TransformedEnv(
    GymEnv(args.env, frameskip=4, categorical_action_encoding=True),
    Compose(
        ToTensorImage(from_int=False, dtype=torch.uint8, shape_tolerant=True),
        GrayScale(),
        Resize(84, 84),
        CatFrames(N=4, dim=-3),
        RiseContextTransform(encoder, context_length=args.context),
    ),
)
env.set_seed(args.seed)

# 2. Q-network: a small CNN and a linear head, with RISE's context stream fused in between
cnn = nn.Sequential(
    nn.Conv2d(4, 16, 8, stride=4), nn.ReLU(),  # 84 -> 20
    nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),  # 20 -> 9
    nn.Flatten(),
)  # fmt: skip


class Scale(nn.Module):  # uint8 pixels -> [0, 1]
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() / 255.0


stream = RiseContextStream(
    nn.Sequential(Scale(), cnn),
    nn.Sequential(nn.Linear(32 * 9 * 9, 256), nn.ReLU(), nn.Linear(256, env.action_spec.space.n)),
    embedding_dim=encoder.embedding_dim,  # the LSTM reads the window of frozen embeddings
    feature_shape=32 * 9 * 9,  # its projection gates these CNN features: f * sigmoid(c)
    lstm_hidden=128,
)
actor = QValueActor(RiseContextModule(stream), spec=env.action_spec)
explore = EGreedyModule(env.action_spec, eps_end=0.05, annealing_num_steps=args.frames)
policy = TensorDictSequential(actor, explore)

# 3. collector, replay (each stored step carries its window), loss, target updates
# (the LSTM reads the stored window, it carries no state: no InitTracker / recurrent transforms)
collector = Collector(env, policy, frames_per_batch=64, total_frames=args.frames,
                      auto_register_policy_transforms=False)  # fmt: skip
buffer = ReplayBuffer(
    storage=LazyTensorStorage(min(args.frames, 50_000)), batch_size=args.batch_size
)
loss_fn = DQNLoss(actor, action_space=env.action_spec, delay_value=True)
loss_fn.make_value_estimator(gamma=0.99)
target_updater = SoftUpdate(loss_fn, eps=0.995)
optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-4)

frames = 0
for batch in collector:
    frames += batch.numel()
    buffer.extend(batch.reshape(-1))
    explore.step(batch.numel())
    if len(buffer) < 4 * args.batch_size:
        continue
    for _ in range(4):  # a few updates per collected batch
        loss = loss_fn(buffer.sample())["loss"]
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(loss_fn.parameters(), 10.0)
        optim.step()
        target_updater.step()
    collector.update_policy_weights_()
    print(f"frames {frames:>7d}  loss {loss.item():.4f}  eps {explore.eps.item():.3f}")  # noqa: T201
collector.shutdown()
env.close()
