"""A host-wide budget for guest memory, shared by every process that boots guests.

pytest-xdist workers each boot guests of 8 to 16 GiB; started blindly, two or three of them
can starve the host. Each boot takes its guest's memory from a ledger (a JSON file under a
lock in the cache) and waits while the budget is spent. A guest touches only what its
scenarios touch (QEMU maps RAM lazily), so the budget is the host's memory times OVERCOMMIT;
HVO_HARNESS_GUEST_MEMORY_MIB sets it outright."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.cache import cache_dir

# Guests touch a few GiB of their RAM (the huge pages they allocate and the kernel), not all.
OVERCOMMIT = 1.5
LEDGER = "guest-memory.json"


def host_memory_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


def budget_mib() -> int:
    override = os.environ.get("HVO_HARNESS_GUEST_MEMORY_MIB")
    if override and override.isdigit():
        return int(override)
    return int(host_memory_mib() * OVERCOMMIT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _ledger() -> Iterator[dict[str, int]]:
    path = cache_dir("locks") / LEDGER
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            entries = {}
        # Entries of processes that died (a killed worker) free their memory.
        entries = {key: mib for key, mib in entries.items() if _alive(int(key.split(":")[0]))}
        yield entries
        path.write_text(json.dumps(entries))
        fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def reserve(mib: int, poll_seconds: float = 0.5) -> Iterator[None]:
    """Hold `mib` of the budget while the guest runs; wait while it is spent. A guest larger
    than the whole budget still runs, alone."""
    key = f"{os.getpid()}:{time.monotonic_ns()}"
    budget = budget_mib()
    while True:
        with _ledger() as entries:
            if not entries or sum(entries.values()) + mib <= budget:
                entries[key] = mib
                break
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        with _ledger() as entries:
            entries.pop(key, None)
