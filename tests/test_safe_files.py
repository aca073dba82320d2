"""What the output layer promises when the world is hostile: a lock that two writers cannot both hold, journal
lines that stay whole on short writes and full disks, reports that are fsynced and never published over a
file that appeared meanwhile, a model folder that always exists, temp copies of killed runs cleaned (and no
one else's), and --force that replaces only files a command recorded writing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.errors import AuditError
from auditor.io import files
from auditor.io.cache import Journal
from auditor.io.files import atomic_write, clean_stale, exclusive, replace_dir, temp_dir, temp_prefix


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_lock_file_opened_before_its_removal_does_not_grant_the_lock(tmp_path, monkeypatch):
    """A opens the lock file, B (the holder) finishes and removes it, C locks a new one; A's flock on the old
    inode succeeds, so without the inode check A and C would both write."""
    out = tmp_path / "out.json"
    lock = tmp_path / ".out.json.lock"
    with exclusive(out, "writer"):
        stale_fd = os.open(lock, os.O_RDWR)  # A opens the file B holds
    with exclusive(out, "writer"):  # C holds the new lock file
        real_open, calls = os.open, []

        def open_old_first(path, *a, **kw):
            calls.append(path)
            return stale_fd if len(calls) == 1 else real_open(path, *a, **kw)

        monkeypatch.setattr(files.os, "open", open_old_first)
        with pytest.raises(AuditError, match="another writer is writing this output now"):
            with exclusive(out, "writer"):
                pass
        monkeypatch.undo()
    assert not lock.exists()


def test_journal_lines_stay_whole_on_short_writes(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:5])))  # at most 5 bytes per call
    j = Journal(tmp_path / "j.jsonl")
    rows = [{"prompt": f"p{i}", "text": "x" * (i * 7)} for i in range(5)]
    for r in rows:
        j.append(r)
    assert list(Journal(tmp_path / "j.jsonl").rows()) == rows


def test_a_journal_line_cut_by_a_full_disk_is_closed_off_before_the_next(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append({"n": 1})
    real, state = os.write, {"full": True}

    def disk_fills(fd, data):
        if state["full"]:
            state["full"] = False
            real(fd, bytes(data[:4]))  # a partial line reaches the disk, then no space
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", disk_fills)
    with pytest.raises(OSError):
        j.append({"n": 2})
    j.append({"n": 3})  # the same journal object, after space came back
    assert list(Journal(path).rows()) == [{"n": 1}, {"n": 3}]


def test_reports_are_fsynced_file_and_folder_before_they_count(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    atomic_write(tmp_path / "r.json", lambda t: t.write_text("{}"))
    assert any(s.endswith(".tmp") and Path(s).name.startswith(".r.json.") for s in synced), synced  # the data
    assert str(tmp_path) in synced  # the folder entry


def test_a_file_that_appears_while_we_write_is_not_overwritten(tmp_path):
    dst = tmp_path / "r.json"

    def write(tmp):
        tmp.write_text("ours")
        dst.write_text("someone else's")  # created after the up-front check, before the rename

    with pytest.raises(AuditError, match="appeared while this ran"):
        atomic_write(dst, write)
    assert dst.read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_a_replaced_model_folder_exists_at_every_moment(tmp_path, monkeypatch):
    """Killed between the two renames of a swap (here: the second os.replace raises), the old code left no
    folder at all; the swap is one atomic exchange."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "safety_audit.json").write_text(json.dumps({"files": ["w.bin", "safety_audit.json"]}))
    (out / "w.bin").write_text("old")
    new = temp_dir(tmp_path, "model")
    (new / "w.bin").write_text("new")

    def killed(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(os, "rename", killed)
    recorded = lambda d: json.loads((d / "safety_audit.json").read_text())["files"]  # noqa: E731
    replace_dir(new, out, force=True, ours=recorded)
    assert (out / "w.bin").read_text() == "new"
    assert (new / "w.bin").read_text() == "old"  # the old folder, for the caller's cleanup


def test_replace_refuses_a_folder_with_files_the_command_did_not_write(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "safety_audit.json").write_text(json.dumps({"files": ["w.bin", "safety_audit.json"]}))
    (out / "w.bin").write_text("old")
    (out / "README.md").write_text("the user's model card")
    new = temp_dir(tmp_path, "model")
    recorded = lambda d: json.loads((d / "safety_audit.json").read_text())["files"]  # noqa: E731
    with pytest.raises(AuditError, match=r"did not write \(README.md\).*choose an empty folder"):
        replace_dir(new, out, force=True, ours=recorded)
    assert (out / "README.md").read_text() == "the user's model card" and (out / "w.bin").read_text() == "old"


def test_stale_temp_files_of_dead_runs_are_cleaned_and_no_one_elses(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".scan.json.p{dead}.abc.tmp"
    stale_dir = tmp_path / f".safety-audit-scaled.p{dead}.x.tmp"
    live = tmp_path / f".scan.json.p{alive}.def.tmp"
    user = tmp_path / ".scan.json.p12.notes"  # not a temp name of ours
    other = tmp_path / f".report.json.p{dead}.ghi.tmp"  # another output's temp, its writer dead: ours to clean too
    for f in (stale, live, user, other):
        f.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "model.gguf").write_bytes(b"GGUF" + bytes(100))
    atomic_write(tmp_path / "scan.json", lambda t: t.write_text("{}"))
    assert not stale.exists() and live.exists() and user.exists() and not other.exists()
    assert not stale_dir.exists()  # a dead locate's scaled model copy: any write into the folder removes it
    again = tmp_path / f".safety-audit-scaled.p{dead}.y.tmp"
    again.mkdir()
    assert clean_stale(tmp_path, ".safety-audit-scaled") == [again] and not again.exists()
    assert temp_prefix("x") == f".x.p{os.getpid()}."


def test_a_killed_scaled_copy_is_removed_by_the_next_run(tmp_path):
    """locate on llama.cpp writes its scaled copy under $TMPDIR; kill -9 the process holding one, and the next
    temp folder of the same kind removes it."""
    code = ("import os, sys, time; from pathlib import Path; from auditor.io.files import temp_dir; "
            "d = temp_dir(Path(sys.argv[1]), 'safety-audit-scaled'); (d / 'm.gguf').write_bytes(bytes(1000)); "
            "print(d, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    left = Path(p.stdout.readline().strip())
    p.kill()
    p.wait()
    assert left.is_dir()
    mine = temp_dir(tmp_path, "safety-audit-scaled")
    assert not left.exists() and mine.is_dir()
