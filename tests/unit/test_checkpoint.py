import errno
import os

import pytest
import torch

from imgrec import checkpoint as checkpoint_module
from imgrec.checkpoint import CheckpointError, load_checkpoint, remove_stale_temp_files, save_checkpoint


def test_save_then_load_round_trips_and_leaves_no_temp_file(tmp_path):
    path = save_checkpoint({"model": {"w": torch.arange(4.0)}, "epoch": 3}, tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(4.0)) and state["epoch"] == 3
    assert state["format"] == "imgrec-checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failed_save_raises_clearly_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.os, "replace", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.pt \(No space left on device; [0-9.]+ MiB free there\)"):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the temp file was removed


def test_stale_temp_files_from_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc12_xy.tmp").write_bytes(b"half a checkpoint")  # as _write_atomically names them
    (tmp_path / ".notes.tmp").write_text("a user's file")  # never ours to delete
    (tmp_path / "last.pt").write_bytes(b"keep")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abc12_xy.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "last.pt"]


def test_missing_file_is_named_in_the_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"ckpt_path '.*nope.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_plain_torch_file_is_not_an_imgrec_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not an imgrec checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_random_bytes_are_not_a_readable_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"format": "imgrec-checkpoint", "payload": RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_no_source_file_loads_with_weights_only_off():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*(root / "src").rglob("*.py"), *(root / "scripts").rglob("*.py")]:
        text = path.read_text()
        if re.search(r"weights_only\s*=\s*False", text):
            offenders.append(f"{path}: weights_only=False")
        for call in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                offenders.append(f"{path}: {call.group(0)}")
    assert offenders == []


def test_sigkill_at_20_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    """A forked child saves a large checkpoint over and over; each kill lands at a random moment of a save."""
    import hashlib
    import random
    import signal
    import time

    from imgrec.checkpoint import remove_stale_temp_files

    path = tmp_path / "last.pt"
    versions = {}
    for version in range(2):
        state = {"version": version, "weights": torch.full((4_000_000,), float(version))}  # 16 MB
        save_checkpoint(state, path)
        versions[hashlib.sha256(path.read_bytes()).hexdigest()] = version
    save_checkpoint({"version": 0, "weights": torch.full((4_000_000,), 0.0)}, path)
    rng = random.Random(0)
    outcomes = []
    for _ in range(20):
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        pid = os.fork()
        if pid == 0:  # the child: save the other version forever
            try:
                other = 1 - versions[before]
                while True:
                    save_checkpoint({"version": other, "weights": torch.full((4_000_000,), float(other))}, path)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        after = hashlib.sha256(path.read_bytes()).hexdigest()
        assert after in versions, "the final file is a partial or mixed write"
        assert load_checkpoint(path)["version"] == versions[after]
        outcomes.append("kept" if after == before else "replaced")
        remove_stale_temp_files(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp files cleaned at the next start
    assert len(outcomes) == 20
