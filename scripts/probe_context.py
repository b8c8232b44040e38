"""Does a RISE run's context stream carry the cue? A linear probe at every checkpoint of the run.

For a finished (or running) ``method=rise`` run on Mortar Mayhem, rebuild its network from the run's
``config.json``, and for the initial weights (drawn from the run's seed, as the run drew them) and
each checkpoint, play evaluation episodes whose observations carry the cue (the suite's
``expose_cue``), then score a held-out linear probe of the cue from the context stream's LSTM
output and from its gate (:mod:`torchrl_rise.evaluation.context_probe`). Read-only: the run
directory is not written to.

    python scripts/probe_context.py runs/.../rise/seed0                 # prints one JSON line
    python scripts/probe_context.py runs/.../rise/seed0 --steps 400 --out probe.json

A probe near 1 at a checkpoint whose success rate is low says the stream holds the cue and the head
ignores it; a probe near chance says the stream never learned it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def probe_run(run_dir: Path, *, steps: int, num_envs: int, seed: int) -> dict:
    """The probe's result for the initial network and each checkpoint of ``run_dir``."""
    import torch

    from torchrl_rise.evaluation.context_probe import probe_context_stream
    from torchrl_rise.training import load_config
    from torchrl_rise.training.builders import build_assembly, make_env_factory
    from torchrl_rise.training.checkpoint import list_checkpoints, load_checkpoint

    raw = json.loads((run_dir / "config.json").read_text())
    raw["env"]["kwargs"] = {**(raw["env"].get("kwargs") or {}), "expose_cue": True}
    raw.update(resume=False, device="cpu")
    cfg = load_config(raw)
    if cfg.method != "rise":
        raise SystemExit(f"{run_dir} is a method={cfg.method} run; the probe reads rise's stream.")
    torch.set_num_threads(1)
    parts = build_assembly(cfg)
    env = make_env_factory(
        cfg, eval_mode=True, encoder=parts.encoder, num_envs=num_envs, seed=seed
    )()
    points = [("initial", 0, None)]
    for ckpt in sorted(list_checkpoints(run_dir / "checkpoints")):  # oldest first
        points.append((ckpt.name, None, ckpt))
    rows = []
    try:
        for name, frames, ckpt in points:
            if ckpt is not None:
                state = load_checkpoint(ckpt)["state"]
                parts.actor.load_state_dict(state["actor"])
                frames = int(state["counters"]["frames"])
            result = probe_context_stream(parts.net, env, steps=steps, seed=seed)
            rows.append({"checkpoint": name, "frames": frames, **result})
    finally:
        env.close()
    return {"run_dir": str(run_dir), "env_id": cfg.env.env_id, "probes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=300, help="vector steps per probe")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.json").is_file():
        parser.error(f"{args.run_dir} holds no config.json: pass a run directory.")
    result = probe_run(args.run_dir, steps=args.steps, num_envs=args.num_envs, seed=args.seed)
    text = json.dumps(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
