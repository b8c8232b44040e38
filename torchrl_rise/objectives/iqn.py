"""BTR's learner objective: IQN quantile-Huber loss with Munchausen targets, as a TorchRL LossModule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictParams
from tensordict.utils import NestedKey
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import LossModule

from torchrl_rise import keys
from torchrl_rise.modules.diagnostics import gate_statistics_tensors
from torchrl_rise.modules.noisy import resample_noise

__all__ = ["PRIORITY_REDUCTIONS", "IQNLoss", "quantile_huber_loss"]

MUNCHAUSEN_LOG_POLICY = ("target", "online")
PRIORITY_REDUCTIONS = ("btr_sum_mean", "mean")
_LEGACY_PRIORITY_WEIGHT = "_weight"  # TorchRL < 0.4 and torchrl_rise < 0.2


def quantile_huber_loss(
    quantiles: torch.Tensor, taus: torch.Tensor, target: torch.Tensor, *, kappa: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile Huber loss of IQN (Dabney et al., 2018), as BTR reduces it.

    With ``u_ij = target_j - quantiles_i``: ``rho_ij = |tau_i - 1{u_ij < 0}| * H_kappa(u_ij) / kappa``
    where ``H_kappa(u) = u^2 / 2`` if ``|u| <= kappa`` else ``kappa (|u| - kappa / 2)``; the loss of
    one sample is ``sum_i mean_j rho_ij``.

    Args:
        quantiles: online quantiles of the taken action ``[..., N]``.
        taus: their fractions ``[..., N]``.
        target: target quantiles ``[..., N']`` (no gradient needed).

    Keyword Args:
        kappa: Huber threshold (> 0).

    Returns:
        the per-sample loss ``[...]`` and the per-sample mean absolute TD error ``[...]`` (over the
        ``N x N'`` pairs; the PER priority).

    Example:
        >>> import torch
        >>> loss, td = quantile_huber_loss(torch.zeros(1, 1), torch.full((1, 1), 0.25),
        ...                                torch.full((1, 1), 2.0))
        >>> loss.item(), td.item()
        (0.375, 2.0)
    """
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}.")
    u = target.unsqueeze(-2) - quantiles.unsqueeze(-1)  # [..., N, N']
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa))
    weight = (taus.unsqueeze(-1) - (u.detach() < 0).to(u.dtype)).abs()
    loss = (weight * huber / kappa).sum(-2).mean(-1)
    return loss, abs_u.detach().mean((-2, -1))


class IQNLoss(LossModule):
    """IQN loss with Munchausen targets, n-step returns from replay, PER weights and priorities.

    Per sampled transition (``a`` the action, ``R`` = ``("next", "reward")`` the n-step return,
    ``gamma_m`` = ``("next", "discount")``, ``q`` the mean over taus of the quantiles, ``tau_m`` the
    Munchausen temperature)::

        pi'(.)     = softmax(q_target(s_{t+n}, .) / tau_m)
        l'(.)      = tau_m * log_softmax(q_target(s_{t+n}, .) / tau_m)
        T_j        = R + alpha * clip(tau_m * log_softmax(q_bar(s_t, .) / tau_m)[a], l0, 0)
                       + gamma_m * sum_b pi'(b) * (Z_target_j(s_{t+n}, b) - l'(b))

    with ``q_bar`` the target network (``munchausen_log_policy="target"``, the M-IQN paper) or the
    detached online network (``"online"``, BTR's code: saves the target pass at ``s_t``). Without
    Munchausen: ``T_j = R + gamma_m * Z_target_j(s_{t+n}, argmax_b q_target(s_{t+n}, b))`` (no
    double DQN, as BTR). ``s_{t+n}`` is read from ``("next", ...)`` -- its pixels *and* its own
    context window. The loss is :func:`quantile_huber_loss` weighted by ``priority_weight`` (PER
    importance weights; 1 if absent) and averaged; the per-sample priority ``td_error`` is
    written into the input tensordict for ``rb.update_tensordict_priority(td)``: ``|u_ij|``
    summed over the online taus ``i`` and averaged over the target taus ``j``
    (``priority_reduction="btr_sum_mean"``, BTR's code), or averaged over both (``"mean"``:
    ``N`` times smaller).

    Noise: BTR trains with noisy nets on, so this loss runs its networks in ``RANDOM`` exploration
    mode (TorchRL losses default to ``DETERMINISTIC``, which would silently turn the noise off) and,
    with ``resample_noise=True``, draws fresh noise for the online and the target network once per
    call.

    Sequence networks (``recurrent_baseline``, ``is_sequence_model``) are trained R2D2-style: the
    input holds sequences ``[B, T, ...]``; per-step ``action``, ``("next", "reward")``,
    ``("next", "discount")`` and ``steps_to_next_obs`` ``m``; the bootstrap state of step ``j`` is
    step ``j + m`` of the same sequence (steps whose bootstrap falls outside are not trained); the
    online and target networks each run once over the sequence (burn-in included); the priority of
    a sequence is ``0.9 max_j + 0.1 mean_j`` of the per-step ``td_error`` (written ``[B]``, or
    broadcast to ``[B, T]`` when the batch is laid out ``[B, T]``).

    Args:
        value_network: a network from :func:`~torchrl_rise.modules.make_q_network` (any
            TensorDictModule writing ``quantiles`` ``[N, A]`` and ``taus`` ``[N]``).

    Keyword Args:
        kappa: quantile Huber threshold (BTR: 1).
        munchausen: Munchausen term on (BTR: True).
        munchausen_tau: softmax temperature (0.03).
        munchausen_alpha: scale of the log-policy bonus (0.9).
        munchausen_clip: lower clip ``l0`` of the log-policy bonus (-1).
        munchausen_log_policy: ``"online"`` (default, BTR's code: the detached online quantiles at
            ``s_t``, already computed, so no target pass at ``s_t``; about 1.2x faster updates on
            CPU) or ``"target"`` (the M-IQN paper's definition: one more target pass).
        gamma: only used when ``("next", "discount")`` is absent:
            ``gamma ** steps_to_next_obs * (1 - terminated)``.
        num_target_taus: taus sampled for the target network (BTR: 8).
        delay_value: keep a target network (update it with
            :class:`~torchrl_rise.objectives.HardTargetUpdate`).
        resample_noise: resample the noisy layers of both networks at each call.
        noisy_in_loss: run in ``RANDOM`` exploration mode (noise on), as BTR; ``False`` follows
            TorchRL's default (``DETERMINISTIC``: noise off).
        batched_target: evaluate the target at ``s_t`` and ``s_{t+n}`` in one batched call.
        autocast_dtype: e.g. ``torch.bfloat16``: run the networks under autocast (the loss itself is
            computed in float32).
        sequence_priority_eta: R2D2's max/mean mix of per-step priorities (sequence networks).
        priority_reduction: ``"btr_sum_mean"`` (BTR's code: sum over online taus, mean over
            target taus) or ``"mean"`` (mean over both).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rise.modules import make_q_network
        >>> net = make_q_network("btr", num_actions=3, in_channels=4, width_scale=1, mlp_hidden=32)
        >>> loss = IQNLoss(net)
        >>> px = lambda: torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
        >>> td = TensorDict({"pixels": px(), "action": torch.tensor([0, 2]),
        ...     "next": {"pixels": px(), "reward": torch.ones(2, 1),
        ...              "discount": torch.full((2, 1), 0.99)}}, [2])
        >>> out = loss(td)
        >>> out["loss"].shape, td["td_error"].shape
        (torch.Size([]), torch.Size([2]))
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (change them with ``loss.set_keys(...)``).

        Attributes:
            action: the taken action (int64 index). Defaults to ``"action"``.
            quantiles: network output ``[N, A]``. Defaults to ``"quantiles"``.
            taus: network output ``[N]``. Defaults to ``"taus"``.
            reward: n-step return, read under ``"next"``. Defaults to ``"reward"``.
            discount: bootstrap discount, read under ``"next"``. Defaults to ``"discount"``.
            terminated: read under ``"next"`` when the discount is absent.
            steps_to_next_obs: steps ``m`` to the bootstrap state. Defaults to
                ``"steps_to_next_obs"``.
            priority: written per sample: ``|TD|`` reduced over the taus as
                ``priority_reduction`` says. Defaults to ``"td_error"``.
            priority_weight: PER importance weights. Defaults to ``"priority_weight"`` (what
                TorchRL's prioritized samplers and ``RiseReplayBuffer`` write); with that default,
                the older ``"_weight"`` is read when ``"priority_weight"`` is absent.
            gate: gate written by the rise network, summarised in the output.
        """

        action: NestedKey = keys.ACTION
        quantiles: NestedKey = keys.QUANTILES
        taus: NestedKey = keys.TAUS
        reward: NestedKey = keys.REWARD
        discount: NestedKey = keys.DISCOUNT
        terminated: NestedKey = keys.TERMINATED
        steps_to_next_obs: NestedKey = keys.STEPS_TO_NEXT
        priority: NestedKey = keys.PRIORITY
        priority_weight: NestedKey = keys.WEIGHT
        gate: NestedKey = keys.GATE

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = None
    out_keys = ["loss"]

    value_network: TensorDictModuleBase
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        value_network: TensorDictModuleBase,
        *,
        kappa: float = 1.0,
        munchausen: bool = True,
        munchausen_tau: float = 0.03,
        munchausen_alpha: float = 0.9,
        munchausen_clip: float = -1.0,
        munchausen_log_policy: str = "online",
        gamma: float = 0.997,
        num_target_taus: int = 8,
        delay_value: bool = True,
        resample_noise: bool = True,
        noisy_in_loss: bool = True,
        batched_target: bool = True,
        autocast_dtype: torch.dtype | None = None,
        sequence_priority_eta: float = 0.9,
        priority_reduction: str = "btr_sum_mean",
    ) -> None:
        if kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {kappa}.")
        if munchausen_tau <= 0:
            raise ValueError(f"munchausen_tau must be > 0, got {munchausen_tau}.")
        if munchausen_clip > 0:
            raise ValueError(f"munchausen_clip (l0) must be <= 0, got {munchausen_clip}.")
        if munchausen_log_policy not in MUNCHAUSEN_LOG_POLICY:
            raise ValueError(
                f"munchausen_log_policy must be one of {MUNCHAUSEN_LOG_POLICY}, got "
                f"{munchausen_log_policy!r}."
            )
        if priority_reduction not in PRIORITY_REDUCTIONS:
            raise ValueError(
                f"priority_reduction must be one of {PRIORITY_REDUCTIONS}, got "
                f"{priority_reduction!r}."
            )
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
        if num_target_taus < 1:
            raise ValueError(f"num_target_taus must be >= 1, got {num_target_taus}.")
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}."
            )
        for attr in ("quantiles_key", "taus_key", "num_taus"):
            if not hasattr(value_network, attr):
                raise TypeError(
                    f"IQNLoss needs an IQN network (with {attr!r}); build it with "
                    "torchrl_rise.modules.make_q_network."
                )
        super().__init__()
        self._in_keys = None
        self.delay_value = delay_value
        self.convert_to_functional(value_network, "value_network", create_target_params=delay_value)
        self.value_network_in_keys = list(value_network.in_keys)
        self.is_sequence_model = bool(getattr(value_network, "is_sequence_model", False))
        self.kappa = kappa
        self.munchausen = munchausen
        self.munchausen_tau = munchausen_tau
        self.munchausen_alpha = munchausen_alpha
        self.munchausen_clip = munchausen_clip
        self.munchausen_log_policy = munchausen_log_policy
        self.gamma = gamma
        self.num_target_taus = num_target_taus
        self.resample_noise = resample_noise
        self.noisy_in_loss = noisy_in_loss
        self.deterministic_sampling_mode = (
            ExplorationType.RANDOM if noisy_in_loss else ExplorationType.DETERMINISTIC
        )
        self.batched_target = batched_target
        self.autocast_dtype = autocast_dtype
        self.sequence_priority_eta = sequence_priority_eta
        self.priority_reduction = priority_reduction
        self.set_keys(quantiles=value_network.quantiles_key, taus=value_network.taus_key)

    # --- TorchRL plumbing -------------------------------------------------------------------
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._set_in_keys()

    def make_value_estimator(self, value_type=None, **hyperparams):
        raise NotImplementedError(
            "IQNLoss uses the n-step return and discount stored by the replay buffer "
            "(('next', 'reward') and ('next', 'discount')); it has no value estimator to set."
        )

    def _set_in_keys(self) -> None:
        net_keys = list(self.value_network_in_keys)
        in_keys = [
            *net_keys,
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.discount),
            self.tensor_keys.priority_weight,
        ]
        if not self.is_sequence_model:
            in_keys += [("next", k) if isinstance(k, str) else ("next", *k) for k in net_keys]
        self._in_keys = list(dict.fromkeys(in_keys))

    @property
    def in_keys(self):
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    # --- helpers ----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(iter(self.value_network_params.values(True, True))).device
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def _run(self, params: TensorDictBase, obs: TensorDictBase) -> TensorDictBase:
        with params.to_module(self.value_network), self._autocast():
            return self.value_network(obs)

    def _target_params(self) -> TensorDictBase:
        if self.delay_value:
            return self.target_value_network_params
        return self.value_network_params.detach()

    def _observation(self, td: TensorDictBase) -> TensorDictBase:
        present = [k for k in self.value_network_in_keys if k in td.keys(True)]
        return td.select(*present)

    def _discount(self, td: TensorDictBase) -> torch.Tensor:
        discount = td.get(("next", self.tensor_keys.discount), None)
        if discount is not None:
            return discount.float()
        steps = td.get(self.tensor_keys.steps_to_next_obs, None)
        terminated = td.get(("next", self.tensor_keys.terminated), None)
        if steps is None or terminated is None:
            raise KeyError(
                "IQNLoss needs ('next', 'discount') or both 'steps_to_next_obs' and "
                "('next', 'terminated') to compute gamma ** m * (1 - terminated); sample from "
                "RiseReplayBuffer or add them."
            )
        return self.gamma ** steps.float() * (1.0 - terminated.float())

    def _priority_weight(self, td: TensorDictBase) -> torch.Tensor | None:
        weight = td.get(self.tensor_keys.priority_weight, None)
        if weight is None and self.tensor_keys.priority_weight == keys.WEIGHT:
            # older buffers (TorchRL < 0.4) wrote "_weight"
            weight = td.get(_LEGACY_PRIORITY_WEIGHT, None)
        return weight

    def _munchausen_bonus(self, q_mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        log_pi = self.munchausen_tau * F.log_softmax(q_mean / self.munchausen_tau, dim=-1)
        chosen = log_pi.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return self.munchausen_alpha * chosen.clamp(min=self.munchausen_clip, max=0.0)

    def _next_value(self, z_next: torch.Tensor) -> torch.Tensor:
        """Target quantiles ``[..., N', A]`` at s_{t+n} -> bootstrap value per tau ``[..., N']``."""
        q_next = z_next.mean(-2)
        if self.munchausen:
            tau = self.munchausen_tau
            pi = F.softmax(q_next / tau, dim=-1)
            log_pi = tau * F.log_softmax(q_next / tau, dim=-1)
            return (pi.unsqueeze(-2) * (z_next - log_pi.unsqueeze(-2))).sum(-1)
        greedy = q_next.argmax(-1)
        index = greedy[..., None, None].expand(*z_next.shape[:-1], 1)
        return z_next.gather(-1, index).squeeze(-1)

    def _priority(self, td_abs: torch.Tensor, num_taus: int) -> torch.Tensor:
        """Per-sample priority from the mean ``|u|`` over the ``N x N'`` pairs."""
        if self.priority_reduction == "btr_sum_mean":
            return td_abs * num_taus  # sum over the N online taus of the mean over target taus
        return td_abs

    def _action(self, td: TensorDictBase, num_actions: int) -> torch.Tensor:
        action = td.get(self.tensor_keys.action)
        if action.dtype.is_floating_point or action.dtype == torch.bool:
            raise TypeError(
                f"{self.tensor_keys.action!r} must be an integer index (Categorical spec), got "
                f"dtype {action.dtype}; one-hot actions are not supported."
            )
        # The range check reads the actions on the host: free on the CPU, a device sync per
        # update elsewhere and a graph break under torch.compile, so it runs on CPU tensors only
        # (out of range on CUDA, gather raises a device-side assert).
        check = action.device.type == "cpu" and not torch.compiler.is_compiling()
        if check and action.numel() and (int(action.min()) < 0 or int(action.max()) >= num_actions):
            raise ValueError(
                f"actions must lie in [0, {num_actions}), got values in "
                f"[{int(action.min())}, {int(action.max())}]."
            )
        return action.long()

    # --- forward ----------------------------------------------------------------------------
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.resample_noise:
            with torch.no_grad():
                with self.value_network_params.to_module(self.value_network):
                    resample_noise(self.value_network)
                if self.delay_value:
                    with self.target_value_network_params.to_module(self.value_network):
                        resample_noise(self.value_network)
        if self.is_sequence_model:
            return self._forward_sequence(tensordict)
        return self._forward_transition(tensordict)

    def _forward_transition(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch_shape = tensordict.batch_size
        if len(batch_shape) == 0:
            raise ValueError("IQNLoss needs a batch of transitions (batch_size [B]), got [].")
        td = tensordict.reshape(-1) if len(batch_shape) > 1 else tensordict
        obs = self._observation(td)
        online = self._run(self.value_network_params, obs.copy())
        z = online.get(self.tensor_keys.quantiles).float()  # [B, N, A]
        taus = online.get(self.tensor_keys.taus).float()
        action = self._action(td, z.shape[-1])
        z_taken = z.gather(-1, action.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(-1)

        with torch.no_grad():
            next_obs = self._observation(td.get("next"))
            missing = [k for k in self.value_network_in_keys if k not in next_obs.keys(True)]
            if missing:
                raise KeyError(
                    f"the bootstrap state needs ('next', k) for k in {missing}: the target for "
                    "s_{t+n} must use s_{t+n}'s own pixels and context window."
                )
            need_target_t = self.munchausen and self.munchausen_log_policy == "target"
            target_params = self._target_params()
            net = self.value_network
            with net.taus_override(self.num_target_taus):
                if need_target_t and self.batched_target:
                    both = torch.cat([obs, next_obs], 0)
                    z_both = self._run(target_params, both).get(self.tensor_keys.quantiles)
                    z_t_target, z_next = z_both.float().chunk(2, 0)
                else:
                    z_next = self._run(target_params, next_obs.copy())
                    z_next = z_next.get(self.tensor_keys.quantiles).float()
                    z_t_target = None
                    if need_target_t:
                        z_t_target = self._run(target_params, obs.copy())
                        z_t_target = z_t_target.get(self.tensor_keys.quantiles).float()
            reward = td.get(("next", self.tensor_keys.reward)).float().reshape(-1)
            discount = self._discount(td).reshape(-1)
            target = reward.unsqueeze(-1) + discount.unsqueeze(-1) * self._next_value(z_next)
            if self.munchausen:
                q_t = z_t_target.mean(-2) if need_target_t else z.detach().mean(-2)
                target = target + self._munchausen_bonus(q_t, action).unsqueeze(-1)

        per_sample, td_abs = quantile_huber_loss(z_taken, taus, target, kappa=self.kappa)
        weight = self._priority_weight(td)
        if weight is not None:
            per_sample = per_sample * weight.reshape(-1).to(per_sample.dtype)
        loss = per_sample.mean()
        priority = self._priority(td_abs, z_taken.shape[-1])
        tensordict.set(self.tensor_keys.priority, priority.reshape(batch_shape), inplace=True)
        out = TensorDict(
            loss=loss,
            td_error_mean=td_abs.mean(),
            q_value_mean=z.detach().mean(),
            target_mean=target.mean(),
        )
        gate = online.get(self.tensor_keys.gate, None)
        if gate is not None:
            out.update(gate_statistics_tensors(gate))
        return out

    def _forward_sequence(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.batch_dims == 2:  # [B, T] layout (e.g. TorchRL's SliceSampler, reshaped)
            seq_td = tensordict.clone(False)
            seq_td.batch_size = tensordict.batch_size[:1]
            out = self._forward_sequence(seq_td)
            priority = seq_td.get(self.tensor_keys.priority)
            tensordict.set(
                self.tensor_keys.priority,
                priority.unsqueeze(-1).expand(tensordict.batch_size).clone(),
                inplace=True,
            )
            return out
        if tensordict.batch_dims != 1:
            raise ValueError(
                "a sequence network needs a batch of sequences with batch_size [B] or [B, T] "
                f"(per-step entries [B, T, ...]), got batch_size {tuple(tensordict.batch_size)}."
            )
        obs = self._observation(tensordict)
        online = self._run(self.value_network_params, obs.copy())
        z = online.get(self.tensor_keys.quantiles).float()  # [B, L, N, A]
        taus = online.get(self.tensor_keys.taus).float()
        steps = z.shape[1]
        burn = tensordict.get(self.value_network_in_keys[0]).shape[1] - steps
        action = self._action(tensordict, z.shape[-1])[:, burn:]
        z_taken = z.gather(-1, action[..., None, None].expand(*z.shape[:-1], 1)).squeeze(-1)
        with torch.no_grad():
            with self.value_network.taus_override(self.num_target_taus):
                z_target = self._run(self._target_params(), obs.copy())
                z_target = z_target.get(self.tensor_keys.quantiles).float()  # [B, L, N', A]
            reward = tensordict.get(("next", self.tensor_keys.reward)).float()
            reward = reward.reshape(*reward.shape[:2])[:, burn:]
            discount = self._discount(tensordict)
            discount = discount.reshape(*discount.shape[:2])[:, burn:]
            m = tensordict.get(self.tensor_keys.steps_to_next_obs, None)
            if m is None:
                raise KeyError(
                    "a sequence network needs 'steps_to_next_obs' to find each step's bootstrap "
                    "state inside the sequence."
                )
            m = m.reshape(*m.shape[:2])[:, burn:].long()
            boot = torch.arange(steps, device=m.device) + m
            valid = boot < steps
            boot = boot.clamp(max=steps - 1)
            z_boot = z_target.gather(
                1, boot[..., None, None].expand(*boot.shape, *z_target.shape[2:])
            )
            target = reward.unsqueeze(-1) + discount.unsqueeze(-1) * self._next_value(z_boot)
            if self.munchausen:
                q_t = (
                    z_target.mean(-2)
                    if self.munchausen_log_policy == "target"
                    else z.detach().mean(-2)
                )
                target = target + self._munchausen_bonus(q_t, action).unsqueeze(-1)
        per_step, td_abs = quantile_huber_loss(z_taken, taus, target, kappa=self.kappa)
        valid_f = valid.to(per_step.dtype)
        count = valid_f.sum(1).clamp_min(1.0)
        per_seq = (per_step * valid_f).sum(1) / count
        weight = self._priority_weight(tensordict)
        if weight is not None:  # per sequence; a [B, T] layout repeats it along T
            per_seq = per_seq * weight.reshape(per_seq.shape[0], -1)[:, 0].to(per_seq.dtype)
        loss = per_seq.mean()
        td_abs = td_abs * valid_f
        eta = self.sequence_priority_eta
        mixed = eta * td_abs.max(1).values + (1 - eta) * td_abs.sum(1) / count
        priority = self._priority(mixed, z_taken.shape[-1])
        tensordict.set(self.tensor_keys.priority, priority, inplace=True)
        return TensorDict(
            loss=loss,
            td_error_mean=mixed.mean(),
            q_value_mean=z.detach().mean(),
            target_mean=target.mean(),
        )
