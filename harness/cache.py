"""The one place that knows where cached artefacts live, keyed by content."""

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$HVO_HARNESS_CACHE, else $XDG_CACHE_HOME/hvo-harness, else ~/.cache/hvo-harness."""
    explicit = os.environ.get("HVO_HARNESS_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hvo-harness"


def cache_dir(*parts: str) -> Path:
    """A subdirectory of the cache root, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
