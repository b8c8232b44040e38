"""BTR's learner objective: IQN quantile-Huber loss with Munchausen targets, as a TorchRL LossModule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictParams
from tensordict.utils import NestedKey
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import LossModule

from torchrl_rise import keys
from torchrl_rise.modules.diagnostics import gate_statistics_tensors
from torchrl_rise.modules.noisy import resample_noise
from torchrl_rise.objectives.target import iqn_target, sequence_bootstrap

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
        the per-sample loss ``[...]`` and the per-sample mean absolute TD error ``mean_ij |u_ij|``
        ``[...]`` (over the ``N x N'`` pairs; :class:`IQNLoss` derives the PER priority from it).

    Example:
        >>> import torch
        >>> loss, mean_abs_td = quantile_huber_loss(torch.zeros(1, 1), torch.full((1, 1), 0.25),
        ...                                         torch.full((1, 1), 2.0))
        >>> loss.item(), mean_abs_td.item()
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


def _check_options(
    *,
    kappa: float,
    munchausen_tau: float,
    munchausen_clip: float,
    munchausen_log_policy: str,
    priority_reduction: str,
    gamma: float,
    num_target_taus: int,
    autocast_dtype: torch.dtype | None,
) -> None:
    """Raise ``ValueError`` on an :class:`IQNLoss` option out of its range."""
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
            f"priority_reduction must be one of {PRIORITY_REDUCTIONS}, got {priority_reduction!r}."
        )
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
    if num_target_taus < 1:
        raise ValueError(f"num_target_taus must be >= 1, got {num_target_taus}.")
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(
            f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}."
        )


def _action_index(action: torch.Tensor, num_actions: int, *, key: NestedKey) -> torch.Tensor:
    """The taken actions as int64 indices, checked (integer dtype; range, on CPU tensors)."""
    if action.dtype.is_floating_point or action.dtype == torch.bool:
        raise TypeError(
            f"{key!r} must be an integer index (Categorical spec), got dtype {action.dtype}; "
            "one-hot actions are not supported."
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


def _n_step_discount(td: TensorDictBase, tensor_keys: Any, gamma: float) -> torch.Tensor:
    """``("next", "discount")``, else ``gamma ** steps_to_next_obs * (1 - ("next", "terminated"))``."""
    discount = td.get(("next", tensor_keys.discount), None)
    if discount is not None:
        return discount.float()
    steps = td.get(tensor_keys.steps_to_next_obs, None)
    terminated = td.get(("next", tensor_keys.terminated), None)
    if steps is None or terminated is None:
        raise KeyError(
            "IQNLoss needs ('next', 'discount') or both 'steps_to_next_obs' and "
            "('next', 'terminated') to compute gamma ** m * (1 - terminated); sample from "
            "RiseReplayBuffer or add them."
        )
    return gamma ** steps.float() * (1.0 - terminated.float())


def _reduce_sequences(
    per_step: torch.Tensor,
    mean_abs_td: torch.Tensor,
    trained: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked reduction over sequences ``[B, L]``.

    Returns:
        the loss (per sequence the mean over its trained steps, times its importance weight;
        mean over sequences), R2D2's ``eta * max_j + (1 - eta) * mean_j`` of ``mean_abs_td`` over
        the trained steps ``[B]``, and ``mean_abs_td`` zeroed at the untrained steps.
    """
    trained_f = trained.to(per_step.dtype)
    count = trained_f.sum(1).clamp_min(1.0)
    per_seq = (per_step * trained_f).sum(1) / count
    if weight is not None:  # per sequence; a [B, T] layout repeats it along T
        per_seq = per_seq * weight.reshape(per_seq.shape[0], -1)[:, 0].to(per_seq.dtype)
    mean_abs_td = mean_abs_td * trained_f
    mixed = eta * mean_abs_td.max(1).values + (1 - eta) * mean_abs_td.sum(1) / count
    return per_seq.mean(), mixed, mean_abs_td


class IQNLoss(LossModule):
    """IQN loss with Munchausen targets, n-step returns from replay, PER weights and priorities.

    Target quantiles ``T_j``: :func:`~torchrl_rise.objectives.iqn_target` of the n-step return
    ``("next", "reward")``, the discount ``("next", "discount")`` and the target network at
    ``s_{t+n}`` (``("next", ...)``: its pixels *and* its own context window). The loss is
    :func:`quantile_huber_loss` times the PER importance weight ``priority_weight`` (1 if absent),
    averaged. Of ``|u_ij|`` (``u_ij = T_j - Z_i(s_t, a)``, ``N`` online, ``N'`` target taus) two
    reductions leave it:

    - the PER **priority**, written per sample under ``tensor_keys.priority`` (``"td_error"``,
      TorchRL's key: what ``rb.update_tensordict_priority(td)`` reads): ``sum_i mean_j |u_ij|``
      (``priority_reduction="btr_sum_mean"``, BTR) or ``mean_ij |u_ij|`` (``"mean"``);
    - the output ``td_error_mean``: the batch mean of ``mean_ij |u_ij|`` (the absolute TD error
      whatever the priority reduction, not the priorities' mean).

    The networks run with their noise on (``RANDOM`` mode, as BTR trains), fresh at each call
    (``resample_noise``).

    Sequence networks (``is_sequence_model``, R2D2-style): sequences ``[B, T, ...]`` (batch
    ``[B]`` or ``[B, T]``) with per-step ``action``, reward, discount and ``steps_to_next_obs``
    ``m``; online and target networks each unroll the sequence once; step ``j`` bootstraps from
    step ``j + m`` (:func:`~torchrl_rise.objectives.sequence_bootstrap`: not trained if outside);
    the loss is the mean over trained steps per sequence; a sequence's priority is
    ``eta max_j + (1 - eta) mean_j`` of its steps' priorities; the outputs are means over trained
    steps. :class:`~torchrl_rise.objectives.SequenceIQNLoss` adds the replay's ``learn_mask``.

    Args:
        value_network: a network from :func:`~torchrl_rise.modules.make_q_network` (any
            TensorDictModule writing ``quantiles`` ``[N, A]`` and ``taus`` ``[N]``).

    Keyword Args:
        kappa: quantile Huber threshold (BTR: 1).
        munchausen: Munchausen term on (BTR: True).
        munchausen_tau: softmax temperature (0.03).
        munchausen_alpha: scale of the log-policy bonus (0.9).
        munchausen_clip: lower clip ``l0`` of the log-policy bonus (-1).
        munchausen_log_policy: ``"online"`` (BTR's code; no target pass at ``s_t``) or
            ``"target"`` (the M-IQN paper; one more target pass).
        gamma: only used when ``("next", "discount")`` is absent:
            ``gamma ** steps_to_next_obs * (1 - terminated)``.
        num_target_taus: taus sampled for the target network (BTR: 8).
        delay_value: keep a target network (update it with
            :class:`~torchrl_rise.objectives.HardTargetUpdate`).
        resample_noise: resample the noisy layers of both networks at each call.
        noisy_in_loss: ``RANDOM`` exploration mode (noise on); ``False``: ``DETERMINISTIC``.
        batched_target: evaluate the target at ``s_t`` and ``s_{t+n}`` in one batched call.
        autocast_dtype: e.g. ``torch.bfloat16``: the networks under autocast (loss in float32).
        sequence_priority_eta: R2D2's max/mean mix ``eta`` (sequence networks).
        priority_reduction: ``"btr_sum_mean"`` or ``"mean"`` (see above).

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
        >>> out["loss"].shape, td["td_error"].shape  # td_error: the priorities
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
            priority: written: each sample's PER priority. Defaults to ``"td_error"`` (TorchRL's
                key: what the replay's ``update_tensordict_priority`` reads).
            priority_weight: PER importance weights. Defaults to ``"priority_weight"`` (what
                TorchRL's prioritized samplers and ``RiseReplayBuffer`` write); with that default,
                the older ``"_weight"`` (TorchRL < 0.4) is read when ``"priority_weight"`` is absent.
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
        _check_options(
            kappa=kappa,
            munchausen_tau=munchausen_tau,
            munchausen_clip=munchausen_clip,
            munchausen_log_policy=munchausen_log_policy,
            priority_reduction=priority_reduction,
            gamma=gamma,
            num_target_taus=num_target_taus,
            autocast_dtype=autocast_dtype,
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
        return _n_step_discount(td, self.tensor_keys, self.gamma)

    def _priority_weight(self, td: TensorDictBase) -> torch.Tensor | None:
        weight = td.get(self.tensor_keys.priority_weight, None)
        if weight is None and self.tensor_keys.priority_weight == keys.WEIGHT:
            # older buffers (TorchRL < 0.4) wrote "_weight"
            weight = td.get(_LEGACY_PRIORITY_WEIGHT, None)
        return weight

    def _target(
        self,
        next_quantiles: torch.Tensor,
        reward: torch.Tensor,
        discount: torch.Tensor,
        action: torch.Tensor,
        q_bar: torch.Tensor,
    ) -> torch.Tensor:
        """:func:`iqn_target` with this loss's settings; ``q_bar`` ``[..., N, A]``: the quantiles
        at ``s_t`` whose mean over the taus gives the Munchausen log-policy."""
        return iqn_target(
            next_quantiles,
            reward,
            discount,
            munchausen=self.munchausen,
            action=action,
            log_policy_q=q_bar.mean(-2) if self.munchausen else None,
            munchausen_tau=self.munchausen_tau,
            munchausen_alpha=self.munchausen_alpha,
            munchausen_clip=self.munchausen_clip,
        )

    def _priority(self, mean_abs_td: torch.Tensor, num_taus: int) -> torch.Tensor:
        """Per-sample priority from ``mean_ij |u_ij|`` (the mean over the ``N x N'`` pairs)."""
        if self.priority_reduction == "btr_sum_mean":
            return mean_abs_td * num_taus  # sum over the N online taus, mean over target taus
        return mean_abs_td

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
        action = _action_index(
            td.get(self.tensor_keys.action), z.shape[-1], key=self.tensor_keys.action
        )
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
            z_t_target = None
            with self.value_network.taus_override(self.num_target_taus):
                if need_target_t and self.batched_target:
                    both = torch.cat([obs, next_obs], 0)
                    z_both = self._run(target_params, both).get(self.tensor_keys.quantiles)
                    z_t_target, z_next = z_both.float().chunk(2, 0)
                else:
                    z_next = self._run(target_params, next_obs.copy())
                    z_next = z_next.get(self.tensor_keys.quantiles).float()
                    if need_target_t:
                        z_t_target = self._run(target_params, obs.copy())
                        z_t_target = z_t_target.get(self.tensor_keys.quantiles).float()
            reward = td.get(("next", self.tensor_keys.reward)).float().reshape(-1)
            discount = self._discount(td).reshape(-1)
            q_bar = z_t_target if z_t_target is not None else z.detach()
            target = self._target(z_next, reward, discount, action, q_bar)

        per_sample, mean_abs_td = quantile_huber_loss(z_taken, taus, target, kappa=self.kappa)
        weight = self._priority_weight(td)
        if weight is not None:
            per_sample = per_sample * weight.reshape(-1).to(per_sample.dtype)
        loss = per_sample.mean()
        priority = self._priority(mean_abs_td, z_taken.shape[-1])
        tensordict.set(self.tensor_keys.priority, priority.reshape(batch_shape), inplace=True)
        out = TensorDict(
            loss=loss,
            td_error_mean=mean_abs_td.mean(),
            q_value_mean=z.detach().mean(),
            target_mean=target.mean(),
        )
        gate = online.get(self.tensor_keys.gate, None)
        if gate is not None:
            out.update(gate_statistics_tensors(gate))
        return out

    # --- sequences (recurrent_baseline) -----------------------------------------------------
    def _trained_positions(self, td: TensorDictBase, burn: int) -> torch.Tensor | None:
        """The positions after the burn-in to train ``[B, L]`` (bool); ``None``: all of them."""
        return None

    def _per_step(self, td: TensorDictBase, key: NestedKey, burn: int) -> torch.Tensor:
        """A per-position entry ``[B, T(, 1)]`` as ``[B, L]``: the positions after the burn-in."""
        value = td.get(key, None)
        if value is None:
            raise KeyError(
                f"a sequence network needs {key!r} per position ([B, T, ...]); sample the batch "
                "from SequenceReplayBuffer."
            )
        return value.reshape(*value.shape[:2])[:, burn:]

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
        burn = tensordict.get(self.value_network_in_keys[0]).shape[1] - z.shape[1]
        trained = self._trained_positions(tensordict, burn)
        action = _action_index(
            tensordict.get(self.tensor_keys.action), z.shape[-1], key=self.tensor_keys.action
        )
        action = action[:, burn:]
        z_taken = z.gather(-1, action[..., None, None].expand(*z.shape[:-1], 1)).squeeze(-1)
        with torch.no_grad():
            with self.value_network.taus_override(self.num_target_taus):
                z_target = self._run(self._target_params(), obs.copy())
                z_target = z_target.get(self.tensor_keys.quantiles).float()  # [B, L, N', A]
            reward = self._per_step(tensordict, ("next", self.tensor_keys.reward), burn).float()
            discount = self._discount(tensordict)
            discount = discount.reshape(*discount.shape[:2])[:, burn:]
            m = self._per_step(tensordict, self.tensor_keys.steps_to_next_obs, burn).long()
            z_boot, trained = sequence_bootstrap(z_target, m, mask=trained)
            q_bar = z_target if self.munchausen_log_policy == "target" else z.detach()
            target = self._target(z_boot, reward, discount, action, q_bar)
        per_step, mean_abs_td = quantile_huber_loss(z_taken, taus, target, kappa=self.kappa)
        weight = self._priority_weight(tensordict)
        loss, mixed, mean_abs_td = _reduce_sequences(
            per_step, mean_abs_td, trained, weight=weight, eta=self.sequence_priority_eta
        )
        priority = self._priority(mixed, z_taken.shape[-1])
        tensordict.set(self.tensor_keys.priority, priority, inplace=True)
        trained_f = trained.to(per_step.dtype)
        n_trained = trained_f.sum().clamp_min(1.0)
        return TensorDict(
            loss=loss,
            td_error_mean=mean_abs_td.sum() / n_trained,
            q_value_mean=(z.detach().mean((-2, -1)) * trained_f).sum() / n_trained,
            target_mean=(target.mean(-1) * trained_f).sum() / n_trained,
        )
