"""Score normalisation: Atari human-normalised, Procgen min-max, and a generic min-max.

Every suite's raw returns live on their own scale; aggregating across games needs a per-game affine
map to a common one. :func:`reference_range` gives the ``(low, high)`` pair for a game (``low`` maps
to 0, ``high`` to 1) and :func:`normalize_score` applies it:

- ``atari``: human-normalised, ``low`` = random agent, ``high`` = human tester
  (:mod:`torchrl_rise.evaluation.atari_scores`).
- ``procgen``: min-max with the constants of Cobbe et al. (2020), "Leveraging Procedural
  Generation to Benchmark Reinforcement Learning", Table 2 (``easy`` or ``hard`` mode).
- ``miniworld``: the bounds of the task's reward. The goal-reaching tasks pay
  ``1 - 0.2 * steps / max_steps`` on success and 0 otherwise (``MiniWorldEnv._reward``), so
  ``(0, 1)``; ``Sign`` pays ``+1``/``-1``, so ``(-1, 1)``. These are bounds, not published scores.
- any suite: ``ranges={env_id: (low, high)}`` given by the caller wins over the tables, which is how
  ViZDoom or the memory diagnostic get normalised (they have no published reference).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from torchrl_rise.evaluation.atari_scores import ATARI_SCORES_SOURCE, atari_reference

__all__ = [
    "MINIWORLD_RANGES",
    "MINIWORLD_RANGES_SOURCE",
    "PROCGEN_GAMES",
    "PROCGEN_RANGES",
    "PROCGEN_RANGES_SOURCE",
    "ReferenceRange",
    "human_normalized_score",
    "min_max_normalized_score",
    "normalize_score",
    "procgen_game_name",
    "procgen_normalized_score",
    "reference_range",
]

PROCGEN_RANGES_SOURCE = (
    "Cobbe et al. 2020, 'Leveraging Procedural Generation to Benchmark Reinforcement Learning' "
    "(arXiv 1912.01588), normalisation constants R_min/R_max"
)

# game -> {mode: (R_min, R_max)}.
PROCGEN_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "coinrun": {"easy": (5.0, 10.0), "hard": (5.0, 10.0)},
    "starpilot": {"easy": (2.5, 64.0), "hard": (1.5, 35.0)},
    "caveflyer": {"easy": (3.5, 12.0), "hard": (2.0, 13.4)},
    "dodgeball": {"easy": (1.5, 19.0), "hard": (1.5, 19.0)},
    "fruitbot": {"easy": (-1.5, 32.4), "hard": (-0.5, 27.2)},
    "chaser": {"easy": (0.5, 13.0), "hard": (0.5, 14.2)},
    "miner": {"easy": (1.5, 13.0), "hard": (1.5, 20.0)},
    "jumper": {"easy": (3.0, 10.0), "hard": (1.0, 10.0)},
    "leaper": {"easy": (3.0, 10.0), "hard": (1.5, 10.0)},
    "maze": {"easy": (5.0, 10.0), "hard": (4.0, 10.0)},
    "bigfish": {"easy": (1.0, 40.0), "hard": (0.0, 40.0)},
    "heist": {"easy": (3.5, 10.0), "hard": (2.0, 10.0)},
    "climber": {"easy": (2.0, 12.6), "hard": (1.0, 12.6)},
    "plunder": {"easy": (4.5, 30.0), "hard": (3.0, 30.0)},
    "ninja": {"easy": (3.5, 10.0), "hard": (2.0, 10.0)},
    "bossfight": {"easy": (0.5, 13.0), "hard": (0.5, 13.0)},
}
PROCGEN_GAMES: tuple[str, ...] = tuple(sorted(PROCGEN_RANGES))

MINIWORLD_RANGES_SOURCE = "MiniWorld reward bounds (miniworld 2.1 MiniWorldEnv._reward, Sign.step)"
_GOAL_TASKS = [
    "Hallway",
    "OneRoom",
    "OneRoomS6",
    "OneRoomS6Fast",
    "FourRooms",
    "TMaze",
    "TMazeLeft",
    "TMazeRight",
    "YMaze",
    "YMazeLeft",
    "YMazeRight",
    "Maze",
    "MazeS2",
    "MazeS3",
    "MazeS3Fast",
    "WallGap",
    "Sidewalk",
    "PutNext",
]
# task -> (low, high) episode-return bounds
MINIWORLD_RANGES: dict[str, tuple[float, float]] = {
    **{task: (0.0, 1.0) for task in _GOAL_TASKS},
    "Sign": (-1.0, 1.0),
}
_PROCGEN_PATTERN = re.compile("|".join(sorted(PROCGEN_GAMES, key=len, reverse=True)))


class ReferenceRange(NamedTuple):
    """The scores a normalisation maps to 0 (``low``) and 1 (``high``), and where they come from."""

    low: float
    high: float
    source: str


def min_max_normalized_score(score: float | np.ndarray, *, low: float, high: float):
    """``(score - low) / (high - low)``, element-wise for arrays.

    Raises:
        ValueError: ``high`` is not greater than ``low`` or either is not finite.

    Example:
        >>> min_max_normalized_score(7.5, low=5.0, high=10.0)
        0.5
    """
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(
            f"a min-max normalisation needs finite bounds with high > low, got low={low}, "
            f"high={high}; pass the score that should map to 0 as low and to 1 as high."
        )
    if isinstance(score, np.ndarray):
        return (score.astype(np.float64) - low) / (high - low)
    return (float(score) - low) / (high - low)


def human_normalized_score(score: float | np.ndarray, game: str):
    """Atari human-normalised score ``(score - random) / (human - random)``.

    Args:
        score: raw (unclipped) game score(s).
        game: any Atari id :func:`~torchrl_rise.evaluation.atari_game_name` understands.

    Example:
        >>> round(human_normalized_score(14.6, "ALE/Pong-v5"), 6)
        1.0
        >>> human_normalized_score(1.7, "Breakout")
        0.0
    """
    ref = atari_reference(game)
    return min_max_normalized_score(score, low=ref.random, high=ref.human)


def procgen_game_name(env_id: str) -> str:
    """The Procgen game an id names: ``"procgen:procgen-coinrun-v0"``, ``"CoinrunEasy-v0"``, ...

    Raises:
        KeyError: the id names none (or more than one) of the 16 Procgen games.

    Example:
        >>> procgen_game_name("procgen:procgen-bigfish-v0")
        'bigfish'
    """
    found = set(_PROCGEN_PATTERN.findall(env_id.lower()))
    if len(found) != 1:
        raise KeyError(
            f"{env_id!r} does not name exactly one Procgen game (known: {', '.join(PROCGEN_GAMES)}); "
            f"use an id like 'coinrun' or 'procgen-coinrun-v0'."
        )
    return found.pop()


def procgen_normalized_score(score: float | np.ndarray, game: str, *, mode: str = "easy"):
    """Procgen min-max normalised score with the constants of Cobbe et al. (2020).

    Args:
        score: raw episode return(s).
        game: a Procgen game or env id.
        mode: the distribution mode the agent was trained and evaluated in, ``"easy"`` or ``"hard"``.

    Example:
        >>> procgen_normalized_score(7.5, "coinrun")
        0.5
    """
    low, high, _ = reference_range("procgen", game, procgen_mode=mode)
    return min_max_normalized_score(score, low=low, high=high)


def reference_range(
    suite: str,
    env_id: str,
    *,
    ranges: Mapping[str, tuple[float, float] | list[float]] | None = None,
    procgen_mode: str = "easy",
) -> ReferenceRange | None:
    """The ``(low, high)`` normalisation pair of ``env_id`` in ``suite``, or ``None`` if none is known.

    ``ranges`` (keyed by env id) wins over the built-in tables. Suites without a table
    (``vizdoom``, ``memory``, ...) and MiniWorld tasks without known reward bounds
    (``CollectHealth``, ``PickupObjects``, ...) only have what ``ranges`` gives them.

    Raises:
        KeyError: an ``atari`` or ``procgen`` id names no known game (a typo, not a missing table).
        ValueError: ``procgen_mode`` is neither ``"easy"`` nor ``"hard"``, or a given range is bad.

    Example:
        >>> reference_range("atari", "ALE/Pong-v5").low
        -20.7
        >>> reference_range("vizdoom", "basic") is None
        True
        >>> reference_range("miniworld", "MiniWorld-Hallway-v0")[:2]
        (0.0, 1.0)
        >>> reference_range("vizdoom", "basic", ranges={"basic": (-400, 100)})[:2]
        (-400.0, 100.0)
    """
    if ranges and env_id in ranges:
        pair = ranges[env_id]
        if len(pair) != 2:
            raise ValueError(f"the range for {env_id!r} must be [low, high], got {pair!r}.")
        low, high = float(pair[0]), float(pair[1])
        if not high > low:
            raise ValueError(f"the range for {env_id!r} needs high > low, got [{low}, {high}].")
        return ReferenceRange(low, high, "user-given range")
    suite = suite.lower()
    if suite == "atari":
        ref = atari_reference(env_id)
        return ReferenceRange(ref.random, ref.human, f"human-normalised; {ATARI_SCORES_SOURCE}")
    if suite == "procgen":
        if procgen_mode not in ("easy", "hard"):
            raise ValueError(f"procgen_mode must be 'easy' or 'hard', got {procgen_mode!r}.")
        low, high = PROCGEN_RANGES[procgen_game_name(env_id)][procgen_mode]
        return ReferenceRange(low, high, f"Procgen {procgen_mode} min-max; {PROCGEN_RANGES_SOURCE}")
    if suite == "miniworld":
        task = re.sub(r"^(miniworld-)|(-v\d+)$", "", env_id.strip(), flags=re.I)
        if task in MINIWORLD_RANGES:
            return ReferenceRange(*MINIWORLD_RANGES[task], MINIWORLD_RANGES_SOURCE)
    return None


def normalize_score(
    score: float | np.ndarray,
    *,
    suite: str,
    env_id: str,
    ranges: Mapping[str, tuple[float, float] | list[float]] | None = None,
    procgen_mode: str = "easy",
):
    """Normalise raw score(s) of ``env_id`` in ``suite`` with :func:`reference_range`.

    Raises:
        KeyError: no reference range is known for ``env_id``; the message says how to give one.

    Example:
        >>> normalize_score(30.5, suite="atari", env_id="ALE/Breakout-v5")
        1.0
        >>> normalize_score(50.0, suite="vizdoom", env_id="basic", ranges={"basic": [0, 100]})
        0.5
    """
    ref = reference_range(suite, env_id, ranges=ranges, procgen_mode=procgen_mode)
    if ref is None:
        raise KeyError(
            f"no reference range to normalise {suite}/{env_id} scores: pass "
            f"ranges={{{env_id!r}: (low, high)}} with the scores that should map to 0 and 1 "
            f"(e.g. a random policy's and the best known score)."
        )
    return min_max_normalized_score(score, low=ref.low, high=ref.high)
