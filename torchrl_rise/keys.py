"""The tensordict keys the pieces of torchrl_rise agree on.

Every component takes its keys as ``in_keys``/``out_keys`` (or ``set_keys`` on losses) so any of them
can be changed; these are the defaults, kept in one place so the transform, the replay buffer, the
network and the loss line up without configuration.

Conventions (shapes after the batch dims):

- ``PIXELS``: the policy's observation, uint8 ``[S * C, H, W]`` -- ``S`` stacked frames of ``C``
  channels each, oldest first. Frame stacks pad an episode's first steps by repeating its first frame
  (TorchRL ``CatFrames(padding="same")`` semantics).
- ``EMBEDDING``: the frozen encoder's embedding of the observation at this step, ``[D]``, float16 by
  default.
- ``CONTEXT`` / ``CONTEXT_MASK``: the window of the last ``K`` embeddings of the current episode
  ending at (and including) this step, ``[K, D]``, oldest first, and its validity mask ``[K]``
  (bool). Valid entries are always a suffix of the window; invalid entries are zero.
- ``("next", ...)``: in sampled replay batches, the bootstrap state ``s_{t+n}`` of the n-step target,
  with ``("next", "reward")`` the n-step discounted return and ``("next", DISCOUNT)`` the factor
  ``gamma ** m`` (``m <= n`` steps actually taken) applied to its value, zero after termination.
"""

from __future__ import annotations

PIXELS = "pixels"
EMBEDDING = "rise_embedding"
CONTEXT = "rise_context"
CONTEXT_MASK = "rise_context_mask"

ACTION = "action"
REWARD = "reward"
DONE = "done"
TERMINATED = "terminated"
TRUNCATED = "truncated"
DISCOUNT = "discount"
STEPS_TO_NEXT = "steps_to_next_obs"

ACTION_VALUE = "action_value"
QUANTILES = "quantiles"
TAUS = "taus"
GATE = "rise_gate"

PRIORITY = "td_error"
INDEX = "index"
WEIGHT = "priority_weight"  # TorchRL >= 0.4 (PrioritizedSampler's info key)

# Recurrent baseline (R2D2-style, docs/recurrent.md): the LSTM state an actor acted from at each
# step (``[hidden]`` each), TorchRL's episode-start flag, and the masks of sampled sequences
# (``[T]``: which positions hold a record of the sequence's episode, and which are trained).
RECURRENT_STATE_H = "recurrent_state_h"
RECURRENT_STATE_C = "recurrent_state_c"
IS_INIT = "is_init"
SEQUENCE_MASK = "sequence_mask"
LEARN_MASK = "learn_mask"
