"""The output folder of a training run (``kernelgpt train --out OUT``), made safe to use.

Before the first step, :func:`open_run_dir`:

* creates OUT and checks that a file can be written there, and that the disk has room for a
  checkpoint, so a read-only or full disk is a one-line error at once, not after the first
  ``eval_interval`` steps;
* takes ``OUT/train.lock`` (an ``flock`` on it, with the owner's PID, host and start time
  written inside): a second trainer on the same folder is refused with a message naming the
  first; the kernel drops the lock when its owner dies, so a lock left by a killed run is
  simply taken over;
* removes what a killed run can leave behind: ``.ckpt-*.tmp`` folders and ``.*.tmp`` files of
  unfinished atomic writes.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to checking the owner's PID
    fcntl = None

__all__ = ["RunDirError", "RunDir", "open_run_dir"]

LOCK_NAME = "train.lock"


class RunDirError(OSError):
    """The output folder cannot be used: not writable, full, or in use by another trainer."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


class RunDir:
    """An output folder held by this process (until release())."""

    def __init__(self, path: Path, fd: Optional[int]):
        self.path, self._fd = path, fd

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.lock_path)  # before unlocking: a waiter then sees a new file
        except OSError:
            pass
        if self._fd >= 0:
            os.close(self._fd)  # drops the flock
        self._fd = None

    def check_space(self, checkpoint_bytes: int) -> None:
        """RunDirError if the disk has less room than one checkpoint of that size."""
        free = shutil.disk_usage(self.path).free
        if free < checkpoint_bytes:
            raise RunDirError(f"not enough space in {self.path} for a checkpoint: it needs "
                              f"{checkpoint_bytes / 1e6:,.1f} MB, {free / 1e6:,.1f} MB are free")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _owner_text(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) \
        if isinstance(started, (int, float)) else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{when}"


def _take_lock(out: Path) -> RunDir:
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    if fcntl is None:  # no flock: O_EXCL, and a lock of a dead local PID is stale
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _read_owner(path)
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) \
                        and not _pid_alive(owner["pid"]):
                    path.unlink(missing_ok=True)
                    continue
                raise RunDirError(f"{out} is in use by another trainer ({_owner_text(owner)}); if "
                                  f"it is not running, delete {path}") from None
            os.write(fd, json.dumps(me).encode())
            os.close(fd)
            return RunDir(out, -1)
        raise RunDirError(f"could not take {path}")
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"{out} is in use by another trainer ({_owner_text(_read_owner(path))}): "
                              "wait for it to finish, or train into another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its owner released it (unlinked) between our open and flock: retry
            os.close(fd)
            continue
        previous = _read_owner(path)
        if previous.get("pid") not in (None, me["pid"]):
            print(f"note: taking over {path} from {_owner_text(previous)}, which is no longer "
                  "running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return RunDir(out, fd)
    raise RunDirError(f"could not take {path}")


def _clean_stale(out: Path) -> None:
    """Removes the leftovers of a run killed while writing (only ours can be writing now)."""
    for p in out.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        elif p.name.endswith(".tmp.png"):
            p.unlink(missing_ok=True)


def open_run_dir(out) -> RunDir:
    """Creates and checks OUT, takes its lock and cleans a crashed run's leftovers (see the
    module's docstring; RunDir.check_space checks the room for a checkpoint). Raises
    RunDirError."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    if not out.is_dir():
        raise RunDirError(f"{out} is not a folder")
    probe = out / f".write-test-{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(b"kernelgpt")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise RunDirError(f"cannot write to the output folder {out}: "
                          f"{err.strerror or err}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    run = _take_lock(out)
    try:
        _clean_stale(out)
    except BaseException:
        run.release()
        raise
    return run
