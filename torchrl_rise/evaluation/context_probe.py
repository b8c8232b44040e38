"""Does RISE's context stream carry the cue? A held-out linear probe of its output.

On a memory task an agent fails either because its memory never holds what it must remember, or
because it holds it and the Q-head ignores it; the two need different fixes. The probe tells them
apart: it plays episodes with a network, records the context stream's LSTM output (and the gate it
produces) at the steps where the cue is no longer on screen, and fits a linear classifier of the cue
on half of the episodes, scoring it on the other half. An accuracy near 1 means the stream carries
the cue linearly; near ``chance`` means it does not.

- :func:`linear_probe`: held-out accuracy of a multinomial logistic regression, split by episode.
- :func:`collect_context_samples`: play a rise network in an env whose observations carry the cue
  (Memory Gym's ``expose_cue=True``) and return the stream's outputs, the cues and episode ids.
- :func:`probe_context_stream`: both, for the LSTM output and the gate.

``scripts/probe_context.py`` runs it on every checkpoint of a run (docs/results.md, "Ablations").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rise import keys

__all__ = ["ProbeResult", "collect_context_samples", "linear_probe", "probe_context_stream"]


@dataclass
class ProbeResult:
    """A held-out linear probe's score.

    Attributes:
        accuracy: fraction of the held-out samples whose label the probe predicts.
        chance: the held-out accuracy of always predicting the training split's most common label.
        n_train / n_test: samples in each split (episodes are never split across them).
        classes: distinct labels seen.
    """

    accuracy: float
    chance: float
    n_train: int
    n_test: int
    classes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    train_fraction: float = 0.5,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Held-out accuracy of a multinomial logistic regression ``features -> labels``.

    The samples are split by ``groups`` (episode ids): a seeded ``train_fraction`` of the groups
    trains the probe (features standardised with the training split's statistics, L-BFGS on the
    cross-entropy plus ``l2 * |W|^2``), the rest scores it, so steps of one episode never appear on
    both sides.

    Args:
        features: ``[N, F]``.
        labels: ``[N]`` integer labels.
        groups: ``[N]`` group ids (at least two distinct ones).

    Keyword Args:
        train_fraction: share of the groups used for training, in (0, 1).
        l2: weight decay of the probe.
        max_iter: L-BFGS iterations.
        seed: seed of the split.

    Example:
        >>> import torch
        >>> g = torch.arange(40).repeat_interleave(5)
        >>> y = g % 2
        >>> x = torch.randn(200, 8) + 3 * y.unsqueeze(-1).float()
        >>> linear_probe(x, y, g).accuracy
        1.0
    """
    if features.dim() != 2 or labels.shape != features.shape[:1] or groups.shape != labels.shape:
        raise ValueError(
            f"expected features [N, F] with labels and groups [N], got {tuple(features.shape)}, "
            f"{tuple(labels.shape)} and {tuple(groups.shape)}."
        )
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    unique = groups.unique()
    if unique.numel() < 2:
        raise ValueError("the probe needs samples from at least two groups (episodes).")
    order = unique[torch.randperm(unique.numel(), generator=torch.Generator().manual_seed(seed))]
    n_train = min(max(1, round(train_fraction * unique.numel())), unique.numel() - 1)
    train = torch.isin(groups, order[:n_train])
    x = features.double()
    mean, std = x[train].mean(0), x[train].std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    classes, y = labels.unique(return_inverse=True)
    weight = torch.zeros(x.shape[1], classes.numel(), dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes.numel(), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x[train] @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, y[train]) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[~train] @ weight + bias).argmax(-1)
    majority = torch.bincount(y[train], minlength=classes.numel()).argmax()
    return ProbeResult(
        accuracy=float((predicted == y[~train]).double().mean()),
        chance=float((y[~train] == majority).double().mean()),
        n_train=int(train.sum()),
        n_test=int((~train).sum()),
        classes=int(classes.numel()),
    )


def _steps_since_reset(done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, T]`` done flags -> each step's index in its episode and an id per episode."""
    n, t = done.shape
    step = torch.zeros(n, t, dtype=torch.long)
    episode = torch.zeros(n, t, dtype=torch.long)
    for i in range(1, t):
        ended = done[:, i - 1]
        step[:, i] = torch.where(ended, 0, step[:, i - 1] + 1)
        episode[:, i] = episode[:, i - 1] + ended.long()
    return step, episode + torch.arange(n).unsqueeze(-1) * (t + 1)


@torch.no_grad()
def collect_context_samples(
    net: torch.nn.Module,
    env: EnvBase,
    *,
    steps: int,
    cue_key: str = "cue",
    first_step: int = 1,
) -> dict[str, torch.Tensor]:
    """Play ``net`` greedily (noise off) for ``steps`` vector steps and record its context stream.

    Args:
        net: a ``rise`` :class:`~torchrl_rise.modules.RiseQNetwork` (it has ``net.context``).
        env: a batched env with :class:`~torchrl_rise.transforms.RiseContextTransform` whose
            observations carry the cue under ``cue_key``.

    Keyword Args:
        steps: vector steps to play (episodes still running at the end are kept).
        cue_key: the cue's key in the env's observations.
        first_step: keep only steps at or after this index of their episode (1: the cue, shown at
            step 0, is no longer on screen).

    Returns:
        ``{"hidden": [M, H], "gate": [M, F], "cue": [M], "episode": [M]}`` (``gate`` is the
        sigmoid of the stream's projection, whatever the fusion).
    """
    context = getattr(net, "context", None)
    if context is None or not hasattr(context, "recurrent_output"):
        raise TypeError(
            "the probe reads a rise network's context stream (net.context, a ContextLSTM); "
            f"{type(net).__name__} has none (btr and recurrent networks have no context stream)."
        )

    def greedy(td: TensorDictBase) -> TensorDictBase:
        td = net(td)
        return td.set(keys.ACTION, td.get(keys.ACTION_VALUE).argmax(-1))

    was_training = net.training
    net.eval()
    try:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(steps, greedy, break_when_any_done=False)
    finally:
        net.train(was_training)
    if cue_key not in rollout.keys(include_nested=True):
        raise KeyError(
            f"the env's observations have no {cue_key!r}: build it with the suite's cue option "
            "(Memory Gym: env.kwargs.expose_cue=true)."
        )
    rollout = rollout.reshape(-1, rollout.shape[-1]) if rollout.dim() > 1 else rollout.unsqueeze(0)
    step, episode = _steps_since_reset(rollout.get(("next", keys.DONE)).squeeze(-1).bool())
    keep = step >= first_step
    window = rollout.get(keys.CONTEXT)[keep].float()
    mask = rollout.get(keys.CONTEXT_MASK)[keep].bool()
    hidden = context.recurrent_output(window, mask)
    return {
        "hidden": hidden,
        "gate": torch.sigmoid(context.proj(hidden)),
        "cue": rollout.get(cue_key)[keep].reshape(-1).long(),
        "episode": episode[keep],
    }


def probe_context_stream(
    net: torch.nn.Module, env: EnvBase, *, steps: int, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """:func:`collect_context_samples` then :func:`linear_probe` of the cue from the LSTM output
    and from the gate; ``{"hidden": ProbeResult dict, "gate": ..., "episodes": n}``."""
    samples = collect_context_samples(net, env, steps=steps, **kwargs)
    out: dict[str, Any] = {"episodes": int(samples["episode"].unique().numel())}
    for name in ("hidden", "gate"):
        result = linear_probe(samples[name], samples["cue"], samples["episode"], seed=seed)
        out[name] = result.as_dict()
    return out
