"""Golden test: seeded memory-diagnostic runs of rise, btr and recurrent, kept bit for bit.

What it guards: the behaviour of a whole training run (issue 22: the guard that a redesign of the
replay buffer and of the Trainer must keep passing unchanged). Each method runs
``recipes/memory.py``'s assembly under ``Trainer.from_components`` (``preset=tiny``, cue-L20,
16x16 frames, a 256-transition replay, one torch thread, CPU, seed 0, 768 frames, learning from
the 64th transition on: 177 updates; ``OVERRIDES`` below) and is compared with ``tests/golden/memory_<method>.json``, recorded from the code of
the commit that added (or last regenerated) the file:

- every update: the loss value, the sampled slot indices, a digest of the batch the loss saw
  (every tensor, bit for bit: frame stacks, n-step returns and discounts, context windows and
  their masks, sequences, PER weights), a digest and the sum of the PER priorities it wrote, a
  digest of the loss's other outputs (TD error, mean Q, gate statistics);
- a per-key digest and sum of the batch at the first 8 updates and every 30th (to name the key
  that changed), and a digest of the loss's weights (online and target) every 16 updates;
- the end of the run, read from the final checkpoint: the counters (frames, env_steps, updates,
  episodes, iterations; not walltime), the schedule, the target-update counter, digests of the
  loss, actor and optimizer state and of the RNG states, the evaluations and their episode scores.

Nothing path-, time- or machine-load-dependent is recorded. Everything is compared exactly: on
one machine two runs in fresh processes give identical records (checked with ``--determinism``
below), so no quantity needs a tolerance. Float tensors are digested after ``+ 0.0`` (``-0.0``
and ``0.0`` digest alike); float values are stored as JSON numbers, which round-trip exactly.
Batch keys the golden file does not list are ignored (a new key changes nothing unless the loss
reads it, and then the loss values change); a listed key that is missing fails.

The record is bit-exact only for one PyTorch build on one kind of CPU (MKL and oneDNN pick
kernels by CPU model, not only by instruction set: an AMD and an Intel machine with the same
torch and AVX512 differ in the 7th digit from the first update on). The golden file keeps the
versions, torch's CPU capability and the CPU model it was recorded with:

- same versions, same CPU: everything is compared exactly, as above;
- same versions, another CPU: the run is compared to float rounding (``tolerant`` below): the
  sampled slot indices, integer batch keys, counters, schedule, RNG states and evaluations
  exactly; losses, PER priority sums and the float batch keys' sums within a relative
  ``FLOAT_RTOL``; digests of float tensors and weights are not compared. Rounding differences do
  not grow in these runs (measured: at most 6e-7 relative over 177 updates, every index equal);
- other versions: the test is skipped, saying why.

Regenerate it on your machine from the commit *before* the change you check for the exact guard.

Regenerating: an intended behaviour change (new sampling, other losses...) must rewrite the golden
data deliberately and say in the commit message what changed and why::

    GOLDEN_REGENERATE=1 PYTHONPATH=$PWD python -m pytest -p no:xdist tests/test_golden.py
    PYTHONPATH=$PWD python tests/test_golden.py --regenerate [rise btr recurrent]
    PYTHONPATH=$PWD python tests/test_golden.py --determinism [METHOD ...]  # record twice, compare

A refactoring (issue 22's redesign) must pass without regenerating. If it changes only how the
replay spells its slot indices, the failure says so (the indices are compared apart from the
batch digest); judge then whether that is a behaviour change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # as conftest.py does for the test run, before torch is imported
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import pytest
import torch

from tests.test_fault_injection import _memory_suite_available

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
METHODS = ("rise", "btr", "recurrent")
FORMAT = 1
# preset=tiny + what makes the run short and reach the replay's corners: 16x16 frames, 3/8 of the
# tiny frames with learning from the 64th transition (177 updates), one evaluation and one
# checkpoint in the middle of the run. cue-L20's 21-step episodes are longer than RISE's K=8
# window and than recurrent's 15-step sequences (windows cut by K as well as by the episode start,
# sequences that start mid-episode from a stored LSTM state), and a 256-transition replay is
# overwritten twice (ring wrap-around, windows clamped at a lane's oldest record).
OVERRIDES = (
    "preset=tiny",
    "env.env_id=cue-L20",
    "env.frame_size=16",
    "total_frames=768",
    "replay.capacity=256",
    "replay.learning_starts=64",
    "exploration.eps_decay_frames=768",
    "eval.interval_frames=384",
    "checkpoint.interval_frames=384",
    "seed=0",
)
DETAIL_FIRST = 8  # per-key batch digests at the first updates ...
DETAIL_EVERY = 30  # ... and every DETAIL_EVERY-th
WEIGHTS_EVERY = 16  # digest of the loss's weights before every WEIGHTS_EVERY-th update
INDEX_KEY = "index"
FLOAT_RTOL = 1e-5  # another CPU's rounding: measured at most 6e-7 relative (module docstring)
FLOAT_ATOL = 1e-9
REGENERATE_HINT = (
    "If this change of behaviour is intended, regenerate the golden data "
    "(GOLDEN_REGENERATE=1 PYTHONPATH=$PWD python -m pytest -p no:xdist tests/test_golden.py, or "
    "PYTHONPATH=$PWD python tests/test_golden.py --regenerate) and say in the commit message "
    "what changed and why. A refactoring must not need it."
)


# ------------------------------------------------------------------------------------ digests


def _canonical(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t + 0.0  # -0.0 -> 0.0 (the same value, other bits)
    return t.contiguous()


def tensor_digest(t: torch.Tensor) -> str:
    """16 hex digits of sha256 over the dtype, the shape and the bytes of ``t``."""
    t = _canonical(t)
    raw = t.to(torch.uint8) if t.dtype == torch.bool else t.reshape(-1).view(torch.uint8)
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(raw.numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_sum(t: torch.Tensor) -> float:
    """The float64 sum of ``t`` (for the reader of a failure, not for the comparison)."""
    return float(_canonical(t).double().sum())


def tree_digest(obj: Any) -> str:
    """A digest of nested dicts/lists of tensors, arrays and plain values, keys sorted."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(b"T" + tensor_digest(x).encode())
        elif isinstance(x, np.ndarray):
            h.update(b"A" + tensor_digest(torch.from_numpy(np.ascontiguousarray(x))).encode())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode() + b":")
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
                h.update(b",")
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()[:16]


def _key_name(key: Any) -> str:
    return "/".join(key) if isinstance(key, tuple) else str(key)


def batch_digest(per_key: dict[str, str], keys: Iterable[str]) -> str:
    """One digest over the per-key digests of ``keys`` (the index excluded: compared apart)."""
    h = hashlib.sha256()
    for key in sorted(k for k in keys if k != INDEX_KEY):
        h.update(f"{key}={per_key.get(key, 'MISSING')};".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ recording


class Recorder:
    """Hooks on the loss module: what each update's loss saw, returned and wrote.

    The loss is where a batch meets the learning numerics whatever samples or drives it, so the
    hooks stay valid when the replay buffer or the trainer is reorganised. The forward pre-hook
    digests the batch (before the loss writes into it) and every ``WEIGHTS_EVERY``-th update the
    weights; the forward hook reads the loss value, the other outputs and the priorities the
    loss wrote into the batch (what the learner hands to ``update_tensordict_priority``).
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        self.loss = loss
        self.priority_key = getattr(getattr(loss, "tensor_keys", None), "priority", "td_error")
        self.per_key: list[dict[str, str]] = []
        self.sums: list[dict[str, float]] = []
        self.specs: dict[str, list[Any]] = {}
        self.updates: list[dict[str, Any]] = []
        self.weights: dict[str, str] = {}
        loss.register_forward_pre_hook(self._before)
        loss.register_forward_hook(self._after)

    def _before(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        batch = args[0]
        i = len(self.per_key)
        if i % WEIGHTS_EVERY == 0:
            self.weights[str(i)] = tree_digest(dict(module.state_dict()))
        digests, sums = {}, {}
        for key, value in batch.items(include_nested=True, leaves_only=True):
            name = _key_name(key)
            digests[name] = tensor_digest(value)
            if _wants_detail(i):
                sums[name] = tensor_sum(value)
            if i == 0:
                self.specs[name] = [str(value.dtype).replace("torch.", ""), list(value.shape)]
        index = batch.get(INDEX_KEY, None)
        self.per_key.append(digests)
        self.sums.append(sums)
        self.updates.append({"index": [] if index is None else index.reshape(-1).tolist()})

    def _after(self, module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        priority = args[0].get(self.priority_key)
        record = self.updates[-1]
        record["loss"] = float(out.get("loss").detach())
        record["priority"] = tensor_digest(priority)
        record["priority_sum"] = tensor_sum(priority)
        others = {_key_name(k): v for k, v in out.items(True, True) if _key_name(k) != "loss"}
        record["outputs"] = tree_digest(others)

    def as_json(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The per-update records with the batch digest over ``keys`` (default: every key)."""
        keys = sorted(self.specs) if keys is None else sorted(keys)
        updates = []
        for rec, per_key in zip(self.updates, self.per_key, strict=True):
            updates.append(
                {
                    "loss": rec["loss"],
                    "batch": batch_digest(per_key, keys),
                    "priority": rec["priority"],
                    "priority_sum": rec["priority_sum"],
                    "outputs": rec["outputs"],
                    "index": rec["index"],
                }
            )
        detail = {
            str(i): {k: [self.per_key[i][k], self.sums[i][k]] for k in sorted(self.per_key[i])}
            for i in range(len(self.per_key))
            if _wants_detail(i)
        }
        return {"updates": updates, "detail": detail, "weights": dict(self.weights)}


def _wants_detail(i: int) -> bool:
    return i < DETAIL_FIRST or i % DETAIL_EVERY == 0


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_golden_recipe_{name}", ROOT / "recipes" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def golden_config(method: str, root: Path):
    """The TrainConfig of the golden run of ``method`` (``recipes/config/memory.yaml``)."""
    from hydra import compose, initialize_config_dir

    from torchrl_rise.training import load_config

    overrides = [*OVERRIDES, f"method={method}", f"logging.root={root}"]
    with initialize_config_dir(config_dir=str(ROOT / "recipes" / "config"), version_base="1.3"):
        return load_config(compose(config_name="memory", overrides=overrides))


def cpu_model() -> str:
    """The CPU's vendor, family, model and name (what MKL and oneDNN choose kernels by)."""
    import platform

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "model name") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    if not fields:
        return platform.processor() or platform.machine()
    return " / ".join(
        fields.get(k, "?") for k in ("vendor_id", "cpu family", "model", "model name")
    )


# what the exact record depends on besides the code; a difference in one of these skips the test
BUILD_KEYS = ("torch", "torchrl", "tensordict", "numpy", "cpu_capability")


def environment() -> dict[str, str]:
    """What bit-exactness depends on besides the code: library builds and the CPU's kernels."""
    import tensordict
    import torchrl

    return {
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(),
    }


def _final(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The end of the run, from the final checkpoint (the format resume relies on)."""
    from torchrl_rise.training import load_checkpoint

    state = load_checkpoint(run_dir)["state"]
    counters = {k: v for k, v in state["counters"].items() if k != "walltime_s"}
    return {
        "status": summary["status"],
        "counters": counters,
        "schedule": dict(state["schedule"]),
        "target_updates": int(state["target_updater_counter"]),
        "loss_state": tree_digest(dict(state["loss"])),
        "actor_state": tree_digest(dict(state["actor"])),
        "optimizer_state": tree_digest(state["optimizer"]),
        "rng": tree_digest(state["rng"]),
        "recent": tree_digest(state["recent"]),
        "evaluations": list(state["evaluations"]),
        "final_episodes": list(state["final_eval"].get("episodes", [])),
    }


def record(method: str, workdir: Path) -> tuple[Recorder, dict[str, Any]]:
    """Run the golden run of ``method`` under ``workdir``; return its recorder and final state."""
    from torchrl_rise.training import Trainer

    cfg = golden_config(method, workdir)
    assembly = _recipe("memory").assemble(cfg)
    recorder = Recorder(assembly.loss)
    trainer = Trainer.from_components(cfg, assembly)
    summary = trainer.run()
    return recorder, _final(trainer.run_dir, summary)


def golden_document(method: str, recorder: Recorder, final: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "about": "tests/test_golden.py: a seeded run of recipes/memory.py; regenerate with "
        "`python tests/test_golden.py --regenerate` (see its docstring)",
        "method": method,
        "overrides": list(OVERRIDES),
        "environment": environment(),
        "batch_keys": recorder.specs,
        **recorder.as_json(),
        "final": final,
    }


def golden_path(method: str) -> Path:
    return GOLDEN_DIR / f"memory_{method}.json"


def write_golden(path: Path, doc: dict[str, Any]) -> None:
    """JSON with one update per line (diffs of a regeneration stay readable)."""
    lines = ["{"]
    items = list(doc.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if key == "updates":
            rows = [json.dumps(u, separators=(",", ":")) for u in value]
            lines.append('  "updates": [\n    ' + ",\n    ".join(rows) + f"\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}{comma}")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ comparing


def _first_diff(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _keys_that_differ(golden: dict[str, Any], now: dict[str, Any], first: int) -> str:
    """Per-key differences at the detailed update nearest at or after ``first``."""
    detailed = sorted(int(i) for i in golden["detail"] if int(i) >= first and i in now["detail"])
    if not detailed:
        return ""
    i = str(detailed[0])
    g, n = golden["detail"][i], now["detail"][i]
    parts = []
    for key in sorted(g):
        if key not in n:
            parts.append(f"{key} missing")
        elif g[key][0] != n[key][0]:
            parts.append(f"{key} (sum {g[key][1]!r} -> {n[key][1]!r})")
    return f"; at update {i} these batch keys differ: {', '.join(parts) or 'none'}"


def _close(a: Any, b: Any) -> bool:
    """Equal, with floats (also inside lists and dicts) equal to ``FLOAT_RTOL``."""
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        return math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _is_float_key(spec: list[Any]) -> bool:
    return spec[0].startswith(("float", "bfloat"))


def _tolerant_detail(golden: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first detailed update whose batch differs beyond rounding, and the keys that do."""
    specs = golden["batch_keys"]
    for i in sorted(golden["detail"], key=int):
        if i not in now["detail"]:
            continue
        g, n = golden["detail"][i], now["detail"][i]
        parts = []
        for key in sorted(g):
            if key not in n:
                parts.append(f"{key} missing")
            elif key in specs and _is_float_key(specs[key]):
                if not _close(g[key][1], n[key][1]):
                    parts.append(f"{key} (sum {g[key][1]!r} -> {n[key][1]!r})")
            elif g[key][0] != n[key][0]:
                parts.append(f"{key} (bits; sum {g[key][1]!r} -> {n[key][1]!r})")
        if parts:
            return f"batch first differs at update {i} beyond rounding: {', '.join(parts)}"
    return None


# compared exactly even across CPUs: no float rounding reaches them
EXACT_FINAL = ("status", "counters", "schedule", "target_updates", "rng")


def compare(golden: dict[str, Any], now: dict[str, Any], *, tolerant: bool = False) -> list[str]:
    """What differs between two golden documents, one line per kind of difference.

    Args:
        golden: the recorded document.
        now: this run's document.

    Keyword Args:
        tolerant: compare to float rounding (another CPU; see the module docstring) instead of
            bit for bit.
    """
    if tolerant:
        return _compare_tolerant(golden, now)
    out = _compare_head(golden, now)
    g_up, n_up = golden["updates"], now["updates"]
    for field in ("loss", "index", "batch", "priority", "outputs"):
        i = _first_diff([u[field] for u in g_up], [u[field] for u in n_up])
        if i is None:
            continue
        if i >= min(len(g_up), len(n_up)):
            continue  # only the count differs (reported above)
        g, n = g_up[i][field], n_up[i][field]
        line = f"{field} first differs at update {i}: golden {g!r}, now {n!r}"
        if field == "priority":
            line += f" (sums {g_up[i]['priority_sum']!r} -> {n_up[i]['priority_sum']!r})"
        if field == "batch":
            line += _keys_that_differ(golden, now, i)
        out.append(line)
    w = _first_diff(
        sorted(golden["weights"].items(), key=lambda kv: int(kv[0])),
        sorted(now["weights"].items(), key=lambda kv: int(kv[0])),
    )
    if w is not None:
        at = sorted(golden["weights"], key=int)[min(w, len(golden["weights"]) - 1)]
        out.append(f"loss weights first differ before update {at}")
    for key in sorted(set(golden["final"]) | set(now["final"])):
        g, n = golden["final"].get(key), now["final"].get(key)
        if g != n:
            out.append(f"final {key}: golden {g!r}, now {n!r}")
    return out


def _compare_head(golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Overrides, batch keys and the number of updates (the same in both modes)."""
    out = []
    if golden["overrides"] != now["overrides"]:
        out.append(f"overrides: golden {golden['overrides']} vs now {now['overrides']}")
    missing = sorted(set(golden["batch_keys"]) - set(now["batch_keys"]))
    changed = sorted(
        k
        for k in golden["batch_keys"]
        if k in now["batch_keys"] and golden["batch_keys"][k] != now["batch_keys"][k]
    )
    if missing:
        out.append(f"batch keys missing now: {missing}")
    if changed:
        out.append(
            "batch key dtype/shape changed: "
            + ", ".join(f"{k} {golden['batch_keys'][k]} -> {now['batch_keys'][k]}" for k in changed)
        )
    if len(golden["updates"]) != len(now["updates"]):
        out.append(f"number of updates: golden {len(golden['updates'])}, now {len(now['updates'])}")
    return out


def _compare_tolerant(golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = _compare_head(golden, now)
    g_up, n_up = golden["updates"], now["updates"]
    checks = {
        "index": lambda u: u["index"],
        "loss": lambda u: u["loss"],
        "priority_sum": lambda u: u["priority_sum"],
    }
    for field, get in checks.items():
        for i, (g, n) in enumerate(zip(g_up, n_up)):
            if not _close(get(g), get(n)):
                out.append(
                    f"{field} first differs at update {i} beyond rounding: golden "
                    f"{get(g)!r}, now {get(n)!r}"
                )
                break
    detail = _tolerant_detail(golden, now)
    if detail:
        out.append(detail)
    for key in sorted(set(golden["final"]) | set(now["final"])):
        if key.endswith("_state") or key == "recent":
            continue  # digests of float tensors: bits, not values
        g, n = golden["final"].get(key), now["final"].get(key)
        if not (g == n if key in EXACT_FINAL else _close(g, n)):
            out.append(f"final {key}: golden {g!r}, now {n!r}")
    return out


def environment_mismatch(golden: dict[str, Any]) -> list[str]:
    """What differs between the golden file's build and this one (a difference skips the test)."""
    here = environment()
    return [
        f"{k} {golden['environment'].get(k)!r} (golden) vs {here[k]!r} (here)"
        for k in BUILD_KEYS
        if golden["environment"].get(k) != here[k]
    ]


def same_cpu(golden: dict[str, Any]) -> bool:
    """Whether the golden file was recorded on this kind of CPU (then it is compared exactly)."""
    return golden["environment"].get("cpu") == cpu_model()


# ------------------------------------------------------------------------------------ the tests


@pytest.mark.skipif(not _memory_suite_available(), reason="the memory suite is not available")
@pytest.mark.parametrize("method", METHODS)
def test_golden_run(tmp_path, method):
    path = golden_path(method)
    if os.environ.get("GOLDEN_REGENERATE") == "1":
        recorder, final = record(method, tmp_path)
        write_golden(path, golden_document(method, recorder, final))
        pytest.skip(f"GOLDEN_REGENERATE=1: wrote {path.relative_to(ROOT)}")
    assert path.exists(), f"no golden data at {path}: record it with GOLDEN_REGENERATE=1"
    golden = json.loads(path.read_text())
    assert golden["format"] == FORMAT, f"{path} has format {golden['format']}, expected {FORMAT}"
    mismatch = environment_mismatch(golden)
    if mismatch:
        pytest.skip(
            "the golden data is bit-exact for the build it was recorded with: "
            + "; ".join(mismatch)
            + ". Regenerate it here from the commit before your change to use this guard."
        )
    recorder, final = record(method, tmp_path)
    assert len(recorder.updates) >= 30, "the golden run must learn-step a few dozen times"
    now = {**golden_document(method, recorder, final), **recorder.as_json(golden["batch_keys"])}
    tolerant = not same_cpu(golden)
    diffs = compare(golden, now, tolerant=tolerant)
    extra = sorted(set(now["batch_keys"]) - set(golden["batch_keys"]))
    assert not diffs, (
        f"the {method} golden run differs from {path.relative_to(ROOT)}"
        + (
            f" (recorded on another CPU, {golden['environment'].get('cpu')!r}: compared to "
            "float rounding)"
            if tolerant
            else ""
        )
        + ":\n  "
        + "\n  ".join(diffs)
        + (f"\n  (batch keys not in the golden data, not compared: {extra})" if extra else "")
        + f"\n{REGENERATE_HINT}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_golden_run_is_reproducible(tmp_path, method):
    """Two runs in one process record the same (what makes the exact comparison possible)."""
    a = golden_document(method, *record(method, tmp_path / "a"))
    torch.manual_seed(12345)  # the ambient RNG state must not matter either
    b = golden_document(method, *record(method, tmp_path / "b"))
    assert compare(a, b) == []


def _update(loss: float, index: list[int], batch: str, priority: str) -> dict[str, Any]:
    """One update's record for the comparison tests (the priorities' sum equals the loss)."""
    return {
        "loss": loss,
        "index": index,
        "batch": batch,
        "priority": priority,
        "priority_sum": loss,
        "outputs": "o",
    }


def test_compare_names_the_first_difference():
    """The comparison reports where a run left the golden path, field by field."""
    base = {
        "overrides": ["x"],
        "batch_keys": {"pixels": ["uint8", [2]], "index": ["int64", [2]]},
        "updates": [_update(1.0, [1, 2], "aa", "p"), _update(2.0, [3, 4], "bb", "q")],
        "detail": {"1": {"pixels": ["d1", 5.0], "index": ["i", 7.0]}},
        "weights": {"0": "w0"},
        "final": {"counters": {"frames": 8}},
    }
    assert compare(base, json.loads(json.dumps(base))) == []
    other = json.loads(json.dumps(base))
    other["updates"][1].update(loss=2.5, batch="cc")
    other["detail"]["1"]["pixels"] = ["d2", 6.0]
    other["final"]["counters"]["frames"] = 9
    diffs = compare(base, other)
    assert diffs[0] == "loss first differs at update 1: golden 2.0, now 2.5"
    assert diffs[1].startswith("batch first differs at update 1: golden 'bb', now 'cc'")
    assert "pixels (sum 5.0 -> 6.0)" in diffs[1]
    assert diffs[2] == "final counters: golden {'frames': 8}, now {'frames': 9}"
    assert len(diffs) == 3


def test_tolerant_compare_passes_rounding_and_names_what_goes_beyond_it():
    """On another CPU: indices and integer keys exactly, floats to FLOAT_RTOL, no float digests."""
    base = {
        "overrides": ["x"],
        "batch_keys": {"pixels": ["uint8", [2]], "weight": ["float32", [2]]},
        "updates": [_update(2.0, [3, 4], "bb", "q")],
        "detail": {"0": {"pixels": ["d1", 5.0], "weight": ["w1", 1.5]}},
        "weights": {"0": "w0"},
        "final": {"counters": {"frames": 8}, "actor_state": "a", "evaluations": [{"mean": 0.5}]},
    }
    rounded = json.loads(json.dumps(base))
    rounded["updates"][0].update(loss=2.0 * (1 + 1e-7), batch="other bits", priority="p2")
    rounded["detail"]["0"]["weight"] = ["w2", 1.5 * (1 - 1e-7)]
    rounded["weights"]["0"] = "w1"
    rounded["final"].update(actor_state="b", evaluations=[{"mean": 0.5 + 1e-9}])
    assert compare(base, rounded, tolerant=True) == []
    assert compare(base, rounded) != []  # bit for bit, the same documents differ
    off = json.loads(json.dumps(rounded))
    off["updates"][0]["index"] = [3, 5]
    off["updates"][0]["loss"] = 2.1
    off["detail"]["0"]["pixels"] = ["d2", 5.0]
    off["final"]["counters"]["frames"] = 9
    diffs = compare(base, off, tolerant=True)
    assert diffs[0] == "index first differs at update 0 beyond rounding: golden [3, 4], now [3, 5]"
    assert diffs[1] == "loss first differs at update 0 beyond rounding: golden 2.0, now 2.1"
    assert diffs[2] == (
        "batch first differs at update 0 beyond rounding: pixels (bits; sum 5.0 -> 5.0)"
    )
    assert diffs[3] == "final counters: golden {'frames': 8}, now {'frames': 9}"
    assert len(diffs) == 4


def test_digests_see_bits_not_storage():
    """Digests follow dtype, shape and values; not strides, not the sign of zero."""
    x = torch.arange(6.0).reshape(2, 3)
    assert tensor_digest(x) == tensor_digest(x.t().contiguous().t())
    assert tensor_digest(torch.tensor([0.0])) == tensor_digest(torch.tensor([-0.0]))
    assert tensor_digest(x) != tensor_digest(x.double())
    assert tensor_digest(x) != tensor_digest(x.reshape(3, 2))
    y = x.clone()
    y[1, 2] = torch.nextafter(y[1, 2], torch.tensor(10.0))
    assert tensor_digest(x) != tensor_digest(y)
    assert tensor_digest(torch.tensor([True, False])) != tensor_digest(torch.tensor([False, True]))
    assert tree_digest({"a": x, "b": [1, 2]}) == tree_digest({"b": [1, 2], "a": x.clone()})


# ------------------------------------------------------------------------------------ script


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--regenerate", action="store_true", help="rewrite tests/golden/*.json")
    mode.add_argument("--determinism", action="store_true", help="record twice, print what differs")
    parser.add_argument("methods", nargs="*", help=f"some of {', '.join(METHODS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    import logging
    import random

    logging.basicConfig(level=logging.WARNING)
    status = 0
    for method in args.methods or METHODS:
        random.seed(0)  # as conftest.py's autouse fixture (the run seeds itself anyway)
        np.random.seed(0)
        torch.manual_seed(0)
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            doc = golden_document(method, *record(method, Path(tmp) / "a"))
            if args.regenerate:
                write_golden(golden_path(method), doc)
                size = golden_path(method).stat().st_size
                print(  # noqa: T201
                    f"{method}: {len(doc['updates'])} updates -> {golden_path(method)} ({size} B)"
                )
                continue
            again = golden_document(method, *record(method, Path(tmp) / "b"))
            diffs = compare(doc, again)
            print(f"{method}: {'reproducible' if not diffs else 'NOT reproducible'}")  # noqa: T201
            for line in diffs:
                print("  " + line)  # noqa: T201
            status |= bool(diffs)
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
