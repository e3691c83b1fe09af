"""Guest memory: a host-wide budget, and a pool of memory files that guests boot on.

The budget. pytest-xdist workers each boot guests of 8 to 16 GiB; started blindly, two or
three of them can starve the host. Each boot takes its guest's memory from a ledger (a JSON
file under a lock, one per host) and waits while the budget is spent. A guest touches only
what its scenarios touch (QEMU maps RAM lazily), so the budget is the host's memory times
OVERCOMMIT; HVO_HARNESS_GUEST_MEMORY_MIB sets it outright.

The pool. Most of a boot's time used to be the host zeroing and faulting in memory the guest
touches for the first time (docs/bench.md: 40% of cycles in the host's clear_page_erms). A
guest node backed by a file in a memory filesystem (QEMU's memory-backend-file, share=on)
keeps what it touched in the file, so the next boot of a node of the same size takes that
file and finds its memory already there. Real machines do not hand a kernel zeroed RAM
either. The files are the ledger's too:
- a file is in use by one boot at a time (its `user`), then idle; two guests never share one;
- an idle file's memory counts against the budget at what it really holds (its blocks), and
  idle files are removed, the least useful first, before a boot would have to wait;
- each process removes the files it used last when it ends (atexit; the CLI turns SIGTERM into
  an exit, the pytest plugin too), and any process removes those of a process that died
  (a crash, SIGKILL) and files no ledger knows, whenever it opens the ledger;
- a boot that cannot have a file (no memory filesystem, too little room in it for what its
  guest may touch, `--fresh-memory`, a profile's fresh_memory) boots on fresh RAM
  (memory-backend-ram), and its Run says which it had and why (Backing.record()).
HVO_HARNESS_MEMORY_DIR moves the pool (and the ledger with it) from /dev/shm/hvo-harness."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import cache_dir

# Guests touch a few GiB of their RAM (the huge pages they allocate and the kernel), not all.
OVERCOMMIT = 1.5
LEDGER = "guest-memory.json"
DEFAULT_DIR = Path("/dev/shm/hvo-harness")
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
SUFFIX = ".mem"
MIB = 1 << 20


def _meminfo_mib(field_name: str, default: int) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) // 1024
    return default


def host_memory_mib() -> int:
    return _meminfo_mib("MemTotal", 4096)


def available_mib() -> int:
    """What the host can still give without swapping (a memory file's pages are not in it)."""
    return _meminfo_mib("MemAvailable", host_memory_mib())


def budget_mib() -> int:
    override = os.environ.get("HVO_HARNESS_GUEST_MEMORY_MIB")
    if override and override.isdigit():
        return int(override)
    return int(host_memory_mib() * OVERCOMMIT)


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem PATH is on (the longest mount point above it)."""
    best, kind = "", None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return None
    return kind


def memory_dir() -> Path:
    explicit = os.environ.get("HVO_HARNESS_MEMORY_DIR")
    return Path(explicit) if explicit else DEFAULT_DIR


def pool_unavailable() -> str | None:
    """Why guests cannot have pool files here, or None when they can."""
    directory = memory_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot make the memory pool {directory}: {error.strerror or error}"
    kind = _filesystem_type(directory.resolve())
    if kind not in MEMORY_FILESYSTEMS:
        return (f"{directory} is on {kind or 'an unknown filesystem'}, not a memory filesystem "
                f"(tmpfs): set HVO_HARNESS_MEMORY_DIR to a directory on tmpfs")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resident_mib(path: Path) -> int:
    """What a memory file really holds (tmpfs counts the blocks it allocated)."""
    try:
        return (os.stat(path).st_blocks * 512) // MIB
    except OSError:
        return 0


@dataclass
class _Ledger:
    # "pid:token" -> MiB of the guest that holds it
    reservations: dict[str, int] = field(default_factory=dict)
    # file name -> {"mib": node size, "user": pid of the boot using it or None,
    #               "owner": pid that used it last (it removes the file when it ends)}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def idle(self) -> list[str]:
        return [name for name, entry in self.files.items() if entry["user"] is None]

    def spent_mib(self, directory: Path, taking: Sequence[str] = ()) -> int:
        # A reservation is what a guest may touch, of which it touches part (OVERCOMMIT); an
        # idle file holds what it holds, all of it real memory: in the budget's units, times
        # OVERCOMMIT. The files a boot is TAKING are inside its own reservation.
        idle = sum(_resident_mib(directory / name) for name in self.idle() if name not in taking)
        return sum(self.reservations.values()) + int(idle * OVERCOMMIT)


def _load(text: str) -> _Ledger:
    try:
        document = json.loads(text)
    except ValueError:
        return _Ledger()
    if not isinstance(document, dict):
        return _Ledger()
    if "reservations" not in document:  # the first format: reservations only
        return _Ledger({key: mib for key, mib in document.items() if isinstance(mib, int)})
    return _Ledger(dict(document.get("reservations", {})), dict(document.get("files", {})))


def _remove(directory: Path, name: str) -> None:
    # A file QEMU still maps (a guest ended by a signal) lives on until QEMU exits.
    with contextlib.suppress(OSError):
        (directory / name).unlink()


def _sweep(ledger: _Ledger, directory: Path | None) -> None:
    """Forget what dead processes held; remove their files and files no ledger knows."""
    ledger.reservations = {key: mib for key, mib in ledger.reservations.items()
                           if _alive(int(key.split(":")[0]))}
    if directory is None:
        ledger.files = {}
        return
    for name, entry in list(ledger.files.items()):
        if entry["user"] is not None and not _alive(entry["user"]):
            entry["user"] = None
        if (entry["user"] is None and not _alive(entry["owner"])) or not (directory / name).exists():
            _remove(directory, name)
            del ledger.files[name]
    for path in directory.glob(f"*{SUFFIX}"):
        if path.name not in ledger.files:
            _remove(directory, path.name)


@contextlib.contextmanager
def _ledger() -> Iterator[_Ledger]:
    # Beside the pool, so that every harness on the host (whatever its cache directory) shares
    # one budget and one view of the files; in the cache where there is no pool.
    directory = memory_dir() if pool_unavailable() is None else None
    path = (directory or cache_dir("locks")) / LEDGER
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ledger = _load(path.read_text()) if path.exists() else _Ledger()
        _sweep(ledger, directory)
        yield ledger
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reservations": ledger.reservations, "files": ledger.files}))
        os.replace(tmp, path)
        fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Backing:
    """What a boot's guest memory is: a memory file per NUMA node, or fresh RAM and why."""

    files: list[Path] | None  # one per node, in node order; None: fresh RAM
    reused: list[bool] = field(default_factory=list)  # per node: the file held an earlier boot's
    why_fresh: str | None = None

    def record(self) -> dict[str, Any]:
        """Run.memory."""
        if self.files is None:
            return {"backing": "fresh", "why": self.why_fresh or ""}
        return {"backing": "pool", "files": [str(path) for path in self.files], "reused": list(self.reused)}


def _fresh(why: str) -> Backing:
    return Backing(None, [], why)


def _free_mib(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize // MIB


def _evict_one(ledger: _Ledger, directory: Path, keep: Sequence[str], sizes: Sequence[int]) -> bool:
    """Remove the least useful idle file: one of a size this boot does not want, else the one
    holding the least; False when there is none."""
    idle = [name for name in ledger.idle() if name not in keep]
    if not idle:
        return False
    victim = min(idle, key=lambda name: (ledger.files[name]["mib"] in sizes,
                                         _resident_mib(directory / name)))
    _remove(directory, victim)
    del ledger.files[victim]
    return True


def _take_files(ledger: _Ledger, directory: Path, node_mib: Sequence[int]) -> tuple[list[str], list[bool]]:
    """An idle file for each node: of its size, else larger (QEMU maps a node's size of a
    larger file, so a riscv64 node's file serves an x86_64 node), the warmest first; a new
    name where none is."""
    names: list[str] = []
    reused: list[bool] = []
    for mib in node_mib:
        idle = [name for name in ledger.idle() if ledger.files[name]["mib"] >= mib and name not in names]
        if idle:
            name = max(idle, key=lambda name: (ledger.files[name]["mib"] == mib,
                                               _resident_mib(directory / name)))
            reused.append(_resident_mib(directory / name) > 0)
        else:
            name = f"{mib}M-{secrets.token_hex(4)}{SUFFIX}"
            reused.append(False)
        names.append(name)
    return names, reused


@contextlib.contextmanager
def take(node_mib: Sequence[int], fresh: str | None = None, poll_seconds: float = 0.5) -> Iterator[Backing]:
    """Memory for one guest of NODE_MIB (MiB per NUMA node), held while the guest runs.

    Waits while the budget is spent (a guest larger than the whole budget still runs, alone);
    yields a file per node from the pool, or fresh RAM when FRESH says why (--fresh-memory) or
    the pool cannot have them. The files stay in the pool for the next boot of their size."""
    mib = sum(node_mib)
    key = f"{os.getpid()}:{time.monotonic_ns()}:{secrets.token_hex(2)}"
    budget = budget_mib()
    unavailable = fresh or pool_unavailable()
    directory = memory_dir()
    backing = _fresh(unavailable or "")
    names: list[str] = []
    _cleanup_at_exit()
    while True:
        with _ledger() as ledger:
            use_pool = unavailable is None
            if use_pool:
                names, reused = _take_files(ledger, directory, node_mib)
            # Idle files hold real memory: they give way before a boot would wait for it, and
            # while the host has less left than the guest is expected to touch.
            while (ledger.reservations and ledger.spent_mib(directory, names) + mib > budget) or \
                    available_mib() < mib / OVERCOMMIT:
                if not _evict_one(ledger, directory, names, node_mib):
                    break
            if not ledger.reservations or ledger.spent_mib(directory, names) + mib <= budget:
                ledger.reservations[key] = mib
                if use_pool:
                    backing = _pool_backing(ledger, directory, names, reused, node_mib)
                break
        time.sleep(poll_seconds)
    try:
        yield backing
    finally:
        with _ledger() as ledger:
            ledger.reservations.pop(key, None)
            for name in names:
                if name in ledger.files:
                    ledger.files[name]["user"] = None


def _pool_backing(ledger: _Ledger, directory: Path, names: list[str], reused: list[bool],
                  node_mib: Sequence[int]) -> Backing:
    """The files NAMES for this boot, if the memory filesystem has room for all the guest may
    write to them: a guest writing to a full tmpfs dies of SIGBUS, which is QEMU's failure, not
    the kernel's, so such a boot gets fresh RAM instead."""
    need = sum(mib - min(mib, _resident_mib(directory / name))
               for name, mib in zip(names, node_mib, strict=True))
    while _free_mib(directory) < need and _evict_one(ledger, directory, names, node_mib):
        pass
    free = _free_mib(directory)
    if free < need:
        return _fresh(f"{directory} has {free} MiB free, and the guest may write {need} MiB more "
                      "to its memory files")
    pid = os.getpid()
    for name, mib in zip(names, node_mib, strict=True):
        path = directory / name
        if not path.exists():
            # Made here, under the ledger's lock, so that no sweep finds a name without its
            # file; sparse: QEMU maps it as it is, and the guest's writes fill it.
            try:
                with open(path, "wb") as memory_file:
                    memory_file.truncate(mib * MIB)
            except OSError as error:
                _remove(directory, name)
                return _fresh(f"cannot make a memory file in {directory}: {error.strerror or error}")
        size = ledger.files[name]["mib"] if name in ledger.files else mib
        ledger.files[name] = {"mib": size, "user": pid, "owner": pid}
    return Backing([directory / name for name in names], reused)


@contextlib.contextmanager
def reserve(mib: int, poll_seconds: float = 0.5) -> Iterator[None]:
    """Hold `mib` of the budget while a guest the caller runs itself (fresh RAM) runs."""
    with take((mib,), fresh="reserved by its caller", poll_seconds=poll_seconds):
        yield


def sweep() -> None:
    """Remove what a crashed or killed harness left: files of processes that are gone and files
    no ledger knows (every take() does this too)."""
    if pool_unavailable() is None:
        with _ledger():
            pass


def release_pool(busy_too: bool = False) -> list[str]:
    """Remove the pool files this process used last (and those of dead processes): when the
    harness is done. BUSY_TOO: also those its guests still run on (at exit, where QEMU is
    ending too: a removed file lives on until QEMU lets it go). The names removed."""
    if pool_unavailable() is not None:
        return []
    directory = memory_dir()
    pid = os.getpid()
    removed: list[str] = []
    with _ledger() as ledger:
        for name, entry in list(ledger.files.items()):
            if entry["owner"] == pid and (busy_too or entry["user"] is None):
                _remove(directory, name)
                del ledger.files[name]
                removed.append(name)
    return removed


def pool_files() -> list[Path]:
    """The files in the pool directory now (for tests and `make bench`)."""
    if pool_unavailable() is not None:
        return []
    return sorted(memory_dir().glob(f"*{SUFFIX}"))


_registered: set[int] = set()


def _cleanup_at_exit() -> None:
    # Once per process (a forked worker registers its own).
    if os.getpid() not in _registered:
        _registered.add(os.getpid())
        atexit.register(_release_quietly)


def _release_quietly() -> None:
    with contextlib.suppress(OSError):
        release_pool(busy_too=True)
