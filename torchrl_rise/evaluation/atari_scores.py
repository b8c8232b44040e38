"""Published random and human reference scores for the Atari-57 games.

Source: DQN Zoo, ``dqn_zoo/atari_data.py`` (google-deepmind/dqn_zoo, Apache-2.0), which collects the
per-game random-agent and professional-human-tester scores used by Mnih et al. (2015), van Hasselt
et al. (2016) and the Agent57 paper (Badia et al., 2020, Table H.1/H.2). Each score is the mean
undiscounted return over episodes that start after 1-30 no-op actions and are capped at 108,000
frames (30 minutes of play).

A human-normalised score is ``(score - random) / (human - random)``: 0 is the random agent, 1 the
human tester (see :func:`torchrl_rise.evaluation.human_normalized_score`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "ATARI_5",
    "ATARI_57",
    "ATARI_REFERENCE_SCORES",
    "ATARI_SCORES_SOURCE",
    "AtariReference",
    "atari_game_name",
    "atari_reference",
]

ATARI_SCORES_SOURCE = (
    "DQN Zoo dqn_zoo/atari_data.py (random and human scores of Mnih et al. 2015 / "
    "Badia et al. 2020 'Agent57', Tables H.1-H.2)"
)


class AtariReference(NamedTuple):
    """Random-agent and human reference scores of one Atari game."""

    random: float
    human: float


# game -> (random, human), game names in DQN Zoo's snake_case.
ATARI_REFERENCE_SCORES: dict[str, AtariReference] = {
    name: AtariReference(*scores)
    for name, scores in {
        "alien": (227.8, 7127.7),
        "amidar": (5.8, 1719.5),
        "assault": (222.4, 742.0),
        "asterix": (210.0, 8503.3),
        "asteroids": (719.1, 47388.7),
        "atlantis": (12850.0, 29028.1),
        "bank_heist": (14.2, 753.1),
        "battle_zone": (2360.0, 37187.5),
        "beam_rider": (363.9, 16926.5),
        "berzerk": (123.7, 2630.4),
        "bowling": (23.1, 160.7),
        "boxing": (0.1, 12.1),
        "breakout": (1.7, 30.5),
        "centipede": (2090.9, 12017.0),
        "chopper_command": (811.0, 7387.8),
        "crazy_climber": (10780.5, 35829.4),
        "defender": (2874.5, 18688.9),
        "demon_attack": (152.1, 1971.0),
        "double_dunk": (-18.6, -16.4),
        "enduro": (0.0, 860.5),
        "fishing_derby": (-91.7, -38.7),
        "freeway": (0.0, 29.6),
        "frostbite": (65.2, 4334.7),
        "gopher": (257.6, 2412.5),
        "gravitar": (173.0, 3351.4),
        "hero": (1027.0, 30826.4),
        "ice_hockey": (-11.2, 0.9),
        "jamesbond": (29.0, 302.8),
        "kangaroo": (52.0, 3035.0),
        "krull": (1598.0, 2665.5),
        "kung_fu_master": (258.5, 22736.3),
        "montezuma_revenge": (0.0, 4753.3),
        "ms_pacman": (307.3, 6951.6),
        "name_this_game": (2292.3, 8049.0),
        "phoenix": (761.4, 7242.6),
        "pitfall": (-229.4, 6463.7),
        "pong": (-20.7, 14.6),
        "private_eye": (24.9, 69571.3),
        "qbert": (163.9, 13455.0),
        "riverraid": (1338.5, 17118.0),
        "road_runner": (11.5, 7845.0),
        "robotank": (2.2, 11.9),
        "seaquest": (68.4, 42054.7),
        "skiing": (-17098.1, -4336.9),
        "solaris": (1236.3, 12326.7),
        "space_invaders": (148.0, 1668.7),
        "star_gunner": (664.0, 10250.0),
        "surround": (-10.0, 6.5),
        "tennis": (-23.8, -8.3),
        "time_pilot": (3568.0, 5229.2),
        "tutankham": (11.4, 167.6),
        "up_n_down": (533.4, 11693.2),
        "venture": (0.0, 1187.5),
        # Under other evaluation protocols the random score of Video Pinball can exceed the human one.
        "video_pinball": (16256.9, 17667.9),
        "wizard_of_wor": (563.5, 4756.5),
        "yars_revenge": (3092.9, 54576.9),
        "zaxxon": (32.5, 9173.3),
    }.items()
}

ATARI_57: tuple[str, ...] = tuple(sorted(ATARI_REFERENCE_SCORES))
"""The 57 games, snake_case, sorted."""

ATARI_5: tuple[str, ...] = ("battle_zone", "double_dunk", "name_this_game", "phoenix", "qbert")
"""Atari-5 (Aitchison et al., 2023): the 5 games whose scores best predict the Atari-57 median; the
subset BTR and RISE use for ablations."""

_COMPACT = {name.replace("_", ""): name for name in ATARI_REFERENCE_SCORES}
_ID_NOISE = re.compile(r"(?i)^(ale/)|(noframeskip|deterministic)?(-v\d+)?$")


def atari_game_name(env_id: str) -> str:
    """Map an environment id to the snake_case game name used by the reference table.

    Accepts ALE ids (``"ALE/MontezumaRevenge-v5"``), Gym ids (``"PongNoFrameskip-v4"``), CamelCase
    (``"KungFuMaster"``) and snake_case (``"up_n_down"``) names, case-insensitively.

    Raises:
        KeyError: the id names no Atari-57 game.

    Example:
        >>> atari_game_name("ALE/MontezumaRevenge-v5")
        'montezuma_revenge'
        >>> atari_game_name("PongNoFrameskip-v4")
        'pong'
    """
    stem = _ID_NOISE.sub("", env_id.strip().split(":")[-1])
    compact = re.sub(r"[^a-z0-9]", "", stem.lower())
    try:
        return _COMPACT[compact]
    except KeyError:
        raise KeyError(
            f"{env_id!r} is not one of the Atari-57 games with published random/human scores "
            f"(expected an id like 'ALE/Pong-v5', 'PongNoFrameskip-v4' or 'pong'; known games: "
            f"{', '.join(ATARI_57)})."
        ) from None


def atari_reference(env_id: str) -> AtariReference:
    """The random and human reference scores of the game ``env_id`` names.

    Example:
        >>> atari_reference("ALE/Breakout-v5")
        AtariReference(random=1.7, human=30.5)
    """
    return ATARI_REFERENCE_SCORES[atari_game_name(env_id)]
