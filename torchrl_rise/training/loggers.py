"""Run logs: ``train.csv`` / ``eval.csv`` always, TensorBoard and W&B (TorchRL loggers) on request.

The CSV files are what other tools read (``torchrl_rise.evaluation`` aggregates them), so their
columns are fixed and documented in ``docs/training.md``; each row is flushed as it is written, so
nothing is lost when a run is interrupted. TorchRL's ``CSVLogger`` writes one file per scalar,
which does not fit a table per run, hence the small writer here.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from torchrl_rise._fileio import write_atomic
from torchrl_rise._optional import import_optional

__all__ = ["EVAL_COLUMNS", "TRAIN_COLUMNS", "CSVTable", "RunLogger", "write_video"]

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = (
    "frames",
    "updates",
    "episodes",
    "walltime_s",
    "fps",
    "return_recent",
    "episode_length_recent",
    "success_recent",
    "loss",
    "td_error",
    "q_mean",
    "grad_norm",
    "eps",
    "replay_size",
)
EVAL_COLUMNS = (
    "frames",
    "updates",
    "walltime_s",
    "mean",
    "std",
    "median",
    "min",
    "max",
    "n",
    "success_rate",
)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


class CSVTable:
    """Append-only CSV file with a header; each row is flushed to disk.

    Known ``columns`` come first; a key not seen before is appended as a new column (the file is
    rewritten once with the wider header). Re-opening an existing file appends to it (resume).

    Args:
        path: the CSV file.
        columns: the leading columns, in order.
        drop_after_frames: on re-opening, first drop the rows whose ``frames`` exceed this (a
            resume from a checkpoint older than the last row logs those frames again); the file
            is rewritten atomically.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> table = CSVTable(path, columns=("frames", "loss"))
        >>> table.write({"frames": 10, "loss": 0.5})
        >>> table.write({"frames": 20, "gate_mean": 0.4})
        >>> table.close()
        >>> path.read_text().splitlines()
        ['frames,loss,gate_mean', '10,0.5,', '20,,0.4']
    """

    def __init__(
        self, path: str | Path, *, columns: Sequence[str], drop_after_frames: int | None = None
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.dropped = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            self.columns += [c for c in header if c not in self.columns]
            rows = None
            if drop_after_frames is not None:
                rows = self._read_rows()
                kept = [r for r in rows if not _after(r.get("frames"), drop_after_frames)]
                self.dropped = len(rows) - len(kept)
                if self.dropped:
                    logger.warning(
                        "%s: dropped %d rows past frame %d (logged after the checkpoint this run "
                        "resumes from; they are logged again)",
                        self.path,
                        self.dropped,
                        drop_after_frames,
                    )
                rows = kept
            if header != self.columns or self.dropped:
                self._rewrite(rows)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open for the run)
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")

    def _read_rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, str]] | None = None) -> None:
        """Rewrite the file atomically with the current header (and ``rows``, else its own)."""
        if rows is None:
            rows = self._read_rows()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k is not None} for r in rows)
        write_atomic(self.path, text.getvalue().encode())

    def write(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (missing columns stay empty) and flush."""
        new = [k for k in row if k not in self.columns]
        if new:
            self._file.close()
            self.columns += new
            self._rewrite()
            self._file = open(self.path, "a", newline="")  # noqa: SIM115
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def _after(value: str | None, frames: int) -> bool:
    try:
        return int(float(value)) > frames
    except (TypeError, ValueError):
        return False


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 30) -> Path:
    """Write ``frames`` (``[T, H, W]`` or ``[T, H, W, C]`` uint8) as an mp4 with moviepy.

    Grayscale frames are replicated to RGB.
    """
    from moviepy import ImageSequenceClip  # a core dependency, imported only when used

    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    elif frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clip = ImageSequenceClip(list(frames), fps=fps)
    clip.write_videofile(str(path), codec="libx264", audio=False, logger=None)
    clip.close()
    return path


class RunLogger:
    """The run's logs: ``train.csv`` and ``eval.csv`` plus optional TorchRL loggers.

    Args:
        run_dir: the run directory.
        backends: ``csv`` is always on; add ``tensorboard`` and/or ``wandb``.
        experiment_name: name given to TensorBoard / W&B.
        wandb_project: the W&B project.
        config: the resolved config, logged as hyperparameters.
        drop_after_frames: a resumed run's checkpoint frame counter: rows of ``train.csv`` and
            ``eval.csv`` past it are dropped first, so that each frame is logged once.

    Example:
        >>> import tempfile
        >>> log = RunLogger(tempfile.mkdtemp(), backends=["csv"])
        >>> log.log_train({"frames": 64, "updates": 1, "loss": 0.3})
        >>> log.log_eval({"frames": 64, "mean": 1.0, "n": 2})
        >>> log.close()
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        backends: Sequence[str] = ("csv",),
        experiment_name: str = "run",
        wandb_project: str = "torchrl_rise",
        config: Mapping[str, Any] | None = None,
        drop_after_frames: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.train = CSVTable(
            self.run_dir / "train.csv", columns=TRAIN_COLUMNS, drop_after_frames=drop_after_frames
        )
        self.eval = CSVTable(
            self.run_dir / "eval.csv", columns=EVAL_COLUMNS, drop_after_frames=drop_after_frames
        )
        self.extra: list[Any] = []
        if "tensorboard" in backends:
            from torchrl.record.loggers import TensorboardLogger

            self.extra.append(
                TensorboardLogger(exp_name=experiment_name, log_dir=str(self.run_dir / "tb"))
            )
        if "wandb" in backends:
            import_optional("wandb", extra="wandb", purpose="W&B logging")
            from torchrl.record.loggers import WandbLogger

            self.extra.append(
                WandbLogger(
                    exp_name=experiment_name,
                    project=wandb_project,
                    save_dir=str(self.run_dir),
                    config=dict(config) if config else None,
                )
            )
        if config:
            for extra in self.extra:
                try:
                    extra.log_hparams(dict(config))
                except Exception as err:  # hparam logging is best effort (nested dicts)
                    logger.debug("could not log hyperparameters to %s: %s", extra, err)

    def _scalars(self, prefix: str, row: Mapping[str, Any]) -> None:
        step = int(row.get("frames", 0))
        for extra in self.extra:
            for key, value in row.items():
                if key == "frames" or value is None:
                    continue
                if isinstance(value, (int, float)) and not (
                    isinstance(value, float) and math.isnan(value)
                ):
                    extra.log_scalar(f"{prefix}/{key}", float(value), step=step)

    def log_train(self, row: Mapping[str, Any]) -> None:
        """Append a ``train.csv`` row and send its scalars to the extra loggers."""
        self.train.write(row)
        self._scalars("train", row)

    def log_eval(self, row: Mapping[str, Any]) -> None:
        """Append an ``eval.csv`` row and send its scalars to the extra loggers."""
        self.eval.write(row)
        self._scalars("eval", row)

    def log_video(self, frames: np.ndarray, *, step: int, fps: int = 30) -> Path:
        """Write ``videos/eval_<step>.mp4``; TensorBoard / W&B also get it."""
        path = write_video(self.run_dir / "videos" / f"eval_{step:012d}.mp4", frames, fps=fps)
        if self.extra:
            import torch

            video = torch.as_tensor(np.asarray(frames))
            if video.ndim == 3:
                video = video.unsqueeze(-1).expand(*video.shape, 3)
            video = video.permute(0, 3, 1, 2).unsqueeze(0)  # [1, T, C, H, W]
            for extra in self.extra:
                try:
                    extra.log_video("eval/video", video, step=step, fps=fps)
                except Exception as err:  # a missing codec must not end the run
                    logger.warning("could not send the video to %s: %s", type(extra).__name__, err)
        return path

    def flush(self) -> None:
        self.train._file.flush()
        self.eval._file.flush()

    def close(self) -> None:
        self.train.close()
        self.eval.close()
        for extra in self.extra:
            exp = getattr(extra, "experiment", None)
            finish = getattr(exp, "finish", None) or getattr(exp, "close", None)
            if callable(finish):
                try:
                    finish()
                except Exception as err:
                    logger.debug("closing %s failed: %s", type(extra).__name__, err)
