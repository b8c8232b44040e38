"""RiseReplayBuffer crash safety: scratch-dir lock and reclaim, preallocation, verified and
incremental snapshots (chunk store, prune)."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_replay import assert_same, make_batch, make_rb

from torchrl_rise.replay import (
    CheckpointCorruptError,
    InsufficientDiskSpaceError,
    ScratchInUseError,
    prune_chunk_store,
)
from torchrl_rise.replay import scratch as scratch_module
from torchrl_rise.replay import snapshot as snapshot_module
from torchrl_rise.replay import storage as storage_module

REPO = Path(__file__).resolve().parents[1]


def fill(rb, batches, *, seed=0, T=7, end_every=3):
    """Write ``batches`` collector batches and update some priorities after each."""
    g = torch.Generator().manual_seed(seed)
    for i in range(batches):
        rb.extend(make_batch(rb.num_envs, T, end_every=end_every, seed=seed * 100 + i))
        if len(rb):
            batch = rb.sample()
            batch["td_error"] = torch.rand(batch.shape[0], generator=g) * (i + 1)
            rb.update_tensordict_priority(batch)


def loaded(dump: Path, scratch_dir: Path, **kwargs):
    """A new buffer (``make_rb`` with ``kwargs``, its scratch in ``scratch_dir``) loaded from
    ``dump``."""
    rb = make_rb(scratch_dir, scratch_dir=scratch_dir, **kwargs)
    rb.loads(dump)
    return rb


def assert_same_buffer(a, b):
    """Every stored field, readiness, priorities, cursors and the next sample."""
    assert a._fields.keys() == b._fields.keys()
    for name in a._fields:
        assert torch.equal(a._fields[name], b._fields[name]), name
    for name in ("_ready", "_lane_next", "_episode_open", "_episode_id", "_episode_step"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a._next_episode_id == b._next_episode_id
    assert len(a) == len(b)
    every = torch.arange(a.capacity)
    assert torch.equal(a.sampler.tree_values(every), b.sampler.tree_values(every))
    assert torch.equal(a._generator.get_state(), b._generator.get_state())
    if len(a):
        assert_same(a.sample(), b.sample())


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file()}


def chunk_files(dump: Path) -> set[str]:
    return {c["file"] for c in json.loads((dump / snapshot_module.MANIFEST).read_text())["chunks"]}


# ---------------------------------------------------------------- scratch lock and reclaim

_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from test_replay_snapshot import fill, make_rb
    tmp = Path(sys.argv[1])
    rb = make_rb(tmp, scratch_dir=tmp / "scratch")
    fill(rb, 4)
    rb.dumps(tmp / "ckpt")
    fill(rb, 2, seed=1)  # more writes after the checkpoint, then a hard crash
    print("ready", flush=True)
    sys.stdin.readline()
    os._exit(1)  # no close(), no atexit: the memmaps stay behind
    """
)


def test_resume_after_a_hard_crash_reclaims_the_scratch_dir(tmp_path, caplog):
    # Extend the parent's import path (it may hold the packages' folder), never replace it.
    path = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in child.stdout:  # torchrl logs to stdout too
            if line.strip() == "ready":
                break
        else:
            pytest.fail(f"the child process ended early (rc={child.wait()})")
        # While the other process lives, its scratch_dir is refused, naming it and its pid.
        with pytest.raises(ScratchInUseError, match=f"pid {child.pid}") as err:
            make_rb(tmp_path, scratch_dir=tmp_path / "scratch")
        assert str(tmp_path / "scratch") in str(err.value)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 1
    finally:
        child.kill()
    assert (tmp_path / "scratch" / "frame.memmap").exists()  # left behind by the crash

    with caplog.at_level(logging.WARNING, logger=scratch_module.__name__):
        resumed = make_rb(tmp_path, scratch_dir=tmp_path / "scratch")
    assert "reclaimed" in caplog.text and "frame.memmap" in caplog.text
    assert not (tmp_path / "scratch" / "frame.memmap").exists()
    resumed.loads(tmp_path / "ckpt")
    reference = make_rb(tmp_path, scratch_dir=tmp_path / "reference")
    fill(reference, 4)
    assert_same_buffer(resumed, reference)
    more = make_batch(2, 5, seed=7)
    resumed.extend(more)
    reference.extend(more)
    assert_same_buffer(resumed, reference)


def test_lock_is_held_until_close_and_close_deletes_the_memmaps(tmp_path):
    scratch = tmp_path / "scratch"
    with make_rb(tmp_path, scratch_dir=scratch) as rb:
        rb.extend(make_batch(2, 6))
        assert (scratch / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(ScratchInUseError, match="this process"):
            make_rb(tmp_path, scratch_dir=scratch)
    assert not list(scratch.glob("*.memmap"))
    with pytest.raises(RuntimeError, match="closed"):
        rb.extend(make_batch(2, 6))
    rb.close()  # idempotent
    again = make_rb(tmp_path, scratch_dir=scratch)  # the lock was released
    again.cleanup()  # cleanup() closes too
    make_rb(tmp_path, scratch_dir=scratch).close()


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    rb = make_rb(tmp_path, scratch_dir=tmp_path / "scratch")
    fd = rb._lock_fd
    pid = os.fork()
    if pid == 0:  # the child: its copy of the lock descriptor is closed
        try:
            os.fstat(fd)
            os._exit(1)
        except OSError:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(ScratchInUseError):  # the parent still holds it
        make_rb(tmp_path, scratch_dir=tmp_path / "scratch")
    rb.close()


def test_unusable_scratch_dir_fails_at_construction(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"scratch_dir .* cannot hold the replay memmaps"):
        make_rb(tmp_path, scratch_dir=tmp_path / "a_file" / "storage")
    with pytest.raises(ValueError, match="writable directory"):
        make_rb(tmp_path, scratch_dir=tmp_path / "a_file")


def test_full_disk_fails_at_the_first_write_not_with_sigbus(tmp_path, monkeypatch):
    calls = []

    def no_room(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "posix_fallocate", no_room)
    rb = make_rb(tmp_path)
    with pytest.raises(InsufficientDiskSpaceError, match="No room to allocate") as err:
        rb.extend(make_batch(2, 6))
    assert err.value.errno == errno.ENOSPC and "scratch_dir" in str(err.value)
    assert calls == [(rb.capacity + 1) * 9]  # the first field's whole file (frames 1x3x3)
    assert not list((tmp_path / "storage").glob("*.memmap"))  # freed again
    with pytest.raises(RuntimeError, match="closed"):  # a sparse storage is never written
        rb.extend(make_batch(2, 6))
    monkeypatch.undo()
    ok = make_rb(tmp_path, scratch_dir=tmp_path / "ok")
    ok.extend(make_batch(2, 6))
    for value in ok.storage._storage.values():  # every block allocated up front
        st = os.stat(value.filename)
        assert st.st_blocks * 512 >= st.st_size


# ---------------------------------------------------------------- verified loads


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "pad"])
@pytest.mark.parametrize("store", [False, True])
def test_damaged_chunk_is_named_and_never_touched(tmp_path, damage, store):
    rb = make_rb(tmp_path, chunk_records=16)
    fill(rb, 4)
    chunk_store = tmp_path / "store" if store else None
    rb.dumps(tmp_path / "ckpt", chunk_store=chunk_store)
    root = chunk_store or tmp_path / "ckpt" / "chunks"
    victim = root / sorted(chunk_files(tmp_path / "ckpt"))[1]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[:-9])
    elif damage == "flip":
        victim.write_bytes(data[:5] + bytes([data[5] ^ 1]) + data[6:])
    elif damage == "pad":
        victim.write_bytes(data + b"\0")
    else:
        victim.unlink()
    before = victim.read_bytes() if victim.exists() else None
    resumed = make_rb(tmp_path, scratch_dir=tmp_path / "s2", chunk_records=16)
    resumed.extend(make_batch(2, 6))
    with pytest.raises(CheckpointCorruptError, match=victim.name):
        resumed.loads(tmp_path / "ckpt")
    assert (victim.read_bytes() if victim.exists() else None) == before  # opened read-only
    if damage == "flip":  # found while copying: the buffer's old contents are gone, it is emptied
        assert len(resumed) == 0 and not resumed._lane_next.any()
        resumed.extend(make_batch(2, 6))  # and still usable
    else:  # sizes are checked before a byte is copied: the buffer is unchanged
        assert len(resumed) == 2 * (6 - 2)
        assert torch.equal(resumed._lane_next, torch.tensor([6, 6]))
    assert len(resumed) == 2 * (6 - 2)


def test_damaged_state_and_manifest_are_reported(tmp_path):
    rb = make_rb(tmp_path)
    fill(rb, 2)
    rb.dumps(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / snapshot_module.MANIFEST).read_text())
    for part in ("state", "sampler"):
        file = tmp_path / "ckpt" / manifest[part]["file"]
        good = file.read_bytes()
        file.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
        with pytest.raises(CheckpointCorruptError, match=file.name):
            make_rb(tmp_path, scratch_dir=tmp_path / f"s-{part}").loads(tmp_path / "ckpt")
        file.write_bytes(good)
    (tmp_path / "ckpt" / snapshot_module.MANIFEST).write_text("{ not json")
    with pytest.raises(CheckpointCorruptError, match="manifest"):
        make_rb(tmp_path, scratch_dir=tmp_path / "s3").loads(tmp_path / "ckpt")
    (tmp_path / "ckpt" / snapshot_module.MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        make_rb(tmp_path, scratch_dir=tmp_path / "s4").loads(tmp_path / "ckpt")


def test_rejects_another_n_step(tmp_path):
    rb = make_rb(tmp_path, n_step=2)
    fill(rb, 2)
    rb.dumps(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="n_step"):
        make_rb(tmp_path, n_step=3, scratch_dir=tmp_path / "s2").loads(tmp_path / "ckpt")


# ---------------------------------------------------------------- incremental snapshots


def written_chunks(rb, old_next, chunk):
    """Chunk ids of the slots each lane wrote since ``old_next`` (computed from cursors alone)."""
    ids = set()
    L = rb.lane_capacity
    for e in range(rb.num_envs):
        for step in range(int(old_next[e]), int(rb._lane_next[e])):
            ids.add((e * L + step % L) // chunk)
    return ids


def test_incremental_dumps_are_exact(tmp_path):
    chunk = 8
    rb = make_rb(tmp_path, chunk_records=chunk)  # 2 lanes of 32 slots + the pad: 9 chunks
    store = tmp_path / "store"
    fill(rb, 3)  # 21 steps + 7 finals per lane: nearly full, not wrapped
    moments = []

    def dump(k):
        stats = rb.dumps(tmp_path / f"inc{k}", chunk_store=store)
        full = rb.dumps(tmp_path / f"full{k}")
        moments.append(k)
        return stats, full

    stats, full = dump(1)
    assert (
        stats["files_reused"] == 0 and stats["files_written"] == 9 + 3
    )  # + state, sampler, manifest
    assert sum(f.stat().st_size for f in store.iterdir()) == rb.nbytes

    old = rb._lane_next.clone()
    fill(rb, 2, seed=1, T=5)  # the rings wrap past their seam
    assert bool((rb._lane_next > rb.lane_capacity).all()) and bool((old <= rb.lane_capacity).all())
    dirty = written_chunks(rb, old, chunk)
    stats, full = dump(2)
    assert stats["files_written"] == len(dirty) + 3
    assert stats["files_reused"] == 9 - len(dirty) > 0
    assert stats["bytes_written"] < full["bytes_written"]
    fill(rb, 1, seed=2)  # more writes after the last dump must not leak into it

    for k in moments:
        inc = loaded(tmp_path / f"inc{k}", tmp_path / f"si{k}", chunk_records=chunk, seed=5)
        ful = loaded(tmp_path / f"full{k}", tmp_path / f"sf{k}", chunk_records=chunk, seed=6)
        assert_same_buffer(inc, ful)
        inc.close()
        ful.close()

    # A buffer loaded from a store dump dumps incrementally into the same store.
    resumed = loaded(tmp_path / "inc2", tmp_path / "resumed", chunk_records=chunk)
    old = resumed._lane_next.clone()
    resumed.extend(make_batch(2, 2, seed=9))
    dirty = written_chunks(resumed, old, chunk)
    stats = resumed.dumps(tmp_path / "inc3", chunk_store=store)
    assert stats["files_written"] == len(dirty) + 3 and stats["files_reused"] == 9 - len(dirty)
    resumed.dumps(tmp_path / "full3")
    a = loaded(tmp_path / "inc3", tmp_path / "a3", chunk_records=chunk)
    b = loaded(tmp_path / "full3", tmp_path / "b3", chunk_records=chunk)
    assert_same_buffer(a, b)
    # A dump into another store, or a self-contained one, writes everything.
    assert resumed.dumps(tmp_path / "other", chunk_store=tmp_path / "store2")["files_reused"] == 0


def test_a_chunk_gone_from_the_store_is_written_again(tmp_path, caplog):
    rb = make_rb(tmp_path, chunk_records=8)
    fill(rb, 3)
    store = tmp_path / "store"
    rb.dumps(tmp_path / "d1", chunk_store=store)
    gone = sorted(chunk_files(tmp_path / "d1"))[2]
    (store / gone).unlink()
    with caplog.at_level(logging.WARNING, logger="torchrl_rise.replay.checkpoint"):
        stats = rb.dumps(tmp_path / "d2", chunk_store=store)
    assert gone in caplog.text and "again" in caplog.text
    assert stats["files_written"] == 1 + 3 and stats["files_reused"] == 9 - 1
    b = loaded(tmp_path / "d2", tmp_path / "b", chunk_records=8)
    assert_same_buffer(rb, b)


def test_other_chunk_size_loads_and_next_dump_is_full(tmp_path):
    rb = make_rb(tmp_path, chunk_records=8)
    fill(rb, 3)
    rb.dumps(tmp_path / "ckpt", chunk_store=tmp_path / "store")
    other = loaded(tmp_path / "ckpt", tmp_path / "s2", chunk_records=5)
    for name in rb._fields:
        assert torch.equal(rb._fields[name], other._fields[name])
    stats = other.dumps(tmp_path / "ckpt2", chunk_store=tmp_path / "store")
    assert stats["files_reused"] == 0 and stats["files_written"] == 13 + 3  # ceil(65 / 5) chunks


def test_prune_keeps_exactly_what_kept_dumps_reference(tmp_path):
    rb = make_rb(tmp_path, chunk_records=8)
    store = tmp_path / "store"
    dumps = []
    for k in range(3):
        fill(rb, 2, seed=k)
        rb.dumps(tmp_path / f"d{k}", chunk_store=store)
        dumps.append(tmp_path / f"d{k}")
    (store / ".chunk000001-x.bin.tmp-123").write_bytes(b"left by a crash")
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing was deleted"):
        prune_chunk_store(store, keep=[dumps[2], tmp_path / "incomplete"])
    before = {p.name: p.stat().st_size for p in store.iterdir()}
    freed = prune_chunk_store(store, keep=[dumps[0], dumps[2]])
    assert files_in(store) == chunk_files(dumps[0]) | chunk_files(dumps[2])
    assert freed == sum(size for name, size in before.items() if name not in files_in(store))
    assert freed > 0
    for k in (0, 2):
        make_rb(tmp_path, chunk_records=8, scratch_dir=tmp_path / f"s{k}").loads(dumps[k])
    assert chunk_files(dumps[1]) - files_in(store)  # d1's own chunks went
    with pytest.raises(CheckpointCorruptError, match="missing"):
        make_rb(tmp_path, chunk_records=8, scratch_dir=tmp_path / "s1").loads(dumps[1])
    assert prune_chunk_store(store, keep=[dumps[0], dumps[2]]) == 0
    assert prune_chunk_store(tmp_path / "no_store", keep=[]) == 0


def test_crash_during_a_dump_leaves_the_previous_dump_loadable(tmp_path, monkeypatch):
    rb = make_rb(tmp_path, chunk_records=8)
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    fill(rb, 3)
    rb.dumps(ckpt, chunk_store=store)
    rb.dumps(tmp_path / "full_before")
    fill(rb, 2, seed=1)

    def crash(path, manifest):
        raise OSError(errno.EIO, "simulated crash before the manifest")

    monkeypatch.setattr(snapshot_module, "write_manifest", crash)
    with pytest.raises(OSError, match="simulated"):
        rb.dumps(ckpt, chunk_store=store)  # the same directory: replaced only when complete
    monkeypatch.undo()
    a = loaded(ckpt, tmp_path / "a", chunk_records=8)
    b = loaded(tmp_path / "full_before", tmp_path / "b", chunk_records=8)
    assert_same_buffer(a, b)
    assert prune_chunk_store(store, keep=[ckpt]) > 0  # the crashed dump's chunks
    # The failed dump did not reset the bookkeeping: the next dump holds everything written.
    rb.dumps(ckpt, chunk_store=store)
    rb.dumps(tmp_path / "full_after")
    assert prune_chunk_store(store, keep=[ckpt]) > 0  # the first dump's replaced chunks
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("state-")) == [
        json.loads((ckpt / snapshot_module.MANIFEST).read_text())["state"]["file"]
    ]
    c = loaded(ckpt, tmp_path / "c", chunk_records=8)
    d = loaded(tmp_path / "full_after", tmp_path / "d", chunk_records=8)
    assert_same_buffer(c, d)


def test_sizes_for_disk_budgets(tmp_path):
    rb = make_rb(tmp_path, chunk_records=8)
    fill(rb, 2)
    assert rb.nbytes == (rb.capacity + 1) * rb.nbytes_per_transition
    assert rb.nbytes == sum(v.numel() * v.element_size() for v in rb._fields.values())
    assert rb.chunk_nbytes == 8 * rb.nbytes_per_transition
    stats = rb.dumps(tmp_path / "ckpt")
    chunks = sum(p.stat().st_size for p in (tmp_path / "ckpt" / "chunks").iterdir())
    assert chunks == rb.nbytes
    assert stats["bytes_written"] - chunks < rb.state_nbytes


# ---------------------------------------------------------------- issue 24: portable, redundant


def test_consecutive_dumps_share_no_chunk_file_and_stay_incremental(tmp_path):
    rb = make_rb(tmp_path, chunk_records=8)  # 9 chunks
    store = tmp_path / "store"
    fill(rb, 3)
    dumps, stats = [], []
    for k in range(4):
        if k:
            rb.extend(make_batch(2, 2, seed=10 + k))  # a few slots: most chunks stay clean
        dumps.append(tmp_path / f"d{k}")
        stats.append(rb.dumps(dumps[-1], chunk_store=store, share_with_previous=False))
        rb.dumps(tmp_path / f"full{k}")
        a = loaded(dumps[-1], tmp_path / f"a{k}", chunk_records=8)
        b = loaded(tmp_path / f"full{k}", tmp_path / f"b{k}", chunk_records=8)
        assert_same_buffer(a, b)
        a.close()
        b.close()
    for older, newer in itertools.pairwise(dumps):
        assert not chunk_files(older) & chunk_files(newer)
    assert stats[0]["files_reused"] == stats[1]["files_reused"] == 0  # two full copies first
    # then each dump refers to the files of the dump before the previous one
    assert stats[2]["files_reused"] > 0 and stats[3]["files_reused"] > 0
    assert chunk_files(dumps[2]) & chunk_files(dumps[0])
    # one damaged file of the newest dump: the previous one still loads
    victim = store / sorted(chunk_files(dumps[3]))[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CheckpointCorruptError, match=victim.name):
        make_rb(tmp_path, chunk_records=8, scratch_dir=tmp_path / "c").loads(dumps[3])
    make_rb(tmp_path, chunk_records=8, scratch_dir=tmp_path / "d").loads(dumps[2])


def test_a_moved_dump_reads_only_its_own_store(tmp_path, caplog):
    rb = make_rb(tmp_path, chunk_records=8)
    fill(rb, 3)
    original = tmp_path / "original"
    rb.dumps(original / "ckpt", chunk_store=original / "store")
    text = (original / "ckpt" / snapshot_module.MANIFEST).read_text()
    assert str(tmp_path) not in text  # the store is named relative to the dump only
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    first = json.loads(text)["chunks"][0]["file"]
    (copy / "store" / first).unlink()  # an incomplete copy; the original still holds the file
    with pytest.raises(CheckpointCorruptError, match=f"copy/store/{first}.*missing"):
        make_rb(tmp_path, chunk_records=8, scratch_dir=tmp_path / "s1").loads(copy / "ckpt")
    shutil.copy2(original / "store" / first, copy / "store" / first)
    shutil.rmtree(original)
    moved = loaded(copy / "ckpt", tmp_path / "s2", chunk_records=8)
    assert_same_buffer(moved, rb)
    # and its next dump into its own store is incremental
    assert moved.dumps(copy / "ckpt2", chunk_store=copy / "store")["files_written"] == 3


def test_old_manifests_with_an_absolute_store_still_load(tmp_path, caplog):
    rb = make_rb(tmp_path, chunk_records=8)
    fill(rb, 3)
    dump, store = tmp_path / "run" / "ckpt", tmp_path / "run" / "store"
    rb.dumps(dump, chunk_store=store)
    rb.dumps(tmp_path / "full")

    def reference(name):
        return loaded(tmp_path / "full", tmp_path / name, chunk_records=8)

    manifest_file = dump / snapshot_module.MANIFEST
    manifest = json.loads(manifest_file.read_text())
    # as written before: the relative path and the absolute one
    manifest["chunk_store_absolute"] = str(store)
    # the dump moved without its store: the relative location is gone, the absolute one exists
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(dump, moved)
    (moved / snapshot_module.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger=snapshot_module.__name__):
        a = loaded(moved, tmp_path / "a", chunk_records=8)
    assert_same_buffer(a, reference("ra"))
    assert f"reading its chunks from {store}" in caplog.text and "outside" in caplog.text
    # the absolute path gone (the run dir moved as a whole): the relative location is used
    manifest["chunk_store_absolute"] = str(tmp_path / "gone" / "store")
    manifest_file.write_text(json.dumps(manifest))
    caplog.clear()
    b = loaded(dump, tmp_path / "b", chunk_records=8)
    assert_same_buffer(b, reference("rb"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
