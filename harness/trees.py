"""Kernel source trees: recognise one, say what state it is in, and apply a patch series.

A tree's state keys the build cache: for a git tree the HEAD commit plus a hash of any
uncommitted change; for a plain tree (Debian's unpacked linux-source) a hash over every file's
path, size and mtime. Patches go on with `git am` in a throwaway worktree, so the user's tree
and its checkout are never touched."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_dir, sha256_file
from harness.errors import HarnessError

# What the tree needs for `make O=` and merge_config.sh.
_KERNEL_TREE_MARKERS = ("Makefile", "Kconfig", "scripts/kconfig/merge_config.sh", "mm/hugetlb.c")
# Our commits (the unpacked source's one, git am's) need an identity; and no automatic gc: on
# an 80,000-file tree a background repack after git am takes minutes of both cores.
_GIT_IDENTITY = ("-c", "user.name=hvo-harness", "-c", "user.email=hvo-harness@localhost",
                 "-c", "gc.auto=0", "-c", "maintenance.auto=false")


@dataclass(frozen=True)
class TreeState:
    """Where a build's source came from, as results and the build cache name it."""

    path: str
    # 'git' or 'plain' (not a git checkout).
    kind: str
    # Kernel version from the top Makefile, e.g. '7.2.13'.
    version: str
    commit: str | None
    describe: str | None
    # True when the checkout has uncommitted changes (they are part of the build).
    dirty: bool
    # Hash of everything the state depends on: the build cache keys on it.
    digest: str
    # The series applied on top (name and sha256), when --patches was given.
    patches: tuple[dict[str, str], ...] = ()
    # The repository that holds COMMIT (git's common dir): a worktree's (bisect's, a series')
    # commits stay readable there after the worktree is removed. Not part of the digest.
    repository: str | None = None

    def as_source(self) -> dict[str, object]:
        return {
            "tree": self.path, "tree_kind": self.kind, "version": self.version, "commit": self.commit,
            "describe": self.describe, "dirty": self.dirty, "tree_state": self.digest,
            "patches": list(self.patches), "repository": self.repository,
        }


def check_tree(tree: Path) -> Path:
    tree = tree.expanduser().resolve()
    missing = [m for m in _KERNEL_TREE_MARKERS if not (tree / m).exists()]
    if not tree.is_dir() or missing:
        raise HarnessError(
            f"{tree} is not a Linux kernel tree (no {missing[0] if missing else 'directory'}): "
            "give the top directory of a kernel source checkout, or omit --tree for Debian's linux-source"
        )
    if (tree / ".config").exists() or (tree / "include/config").exists():
        raise HarnessError(
            f"{tree} has been configured in place, which out-of-tree (O=) builds refuse: "
            f"run `make -C {tree} mrproper` (this removes its .config) and retry"
        )
    return tree


def kernel_version(tree: Path) -> str:
    fields: dict[str, str] = {}
    for line in (tree / "Makefile").read_text(errors="replace").splitlines()[:12]:
        if match := re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line):
            fields[match[1]] = match[2]
    version = ".".join(fields[k] for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL") if fields.get(k))
    return version + fields.get("EXTRAVERSION", "")


def _git(tree: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(tree), *_GIT_IDENTITY, *args], capture_output=True,
                          text=True, env=env)
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise HarnessError(f"git {args[0]} in {tree} failed: {last}")
    return done.stdout


def is_git(tree: Path) -> bool:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True)
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == tree.resolve()


def _plain_digest(tree: Path) -> str:
    """Path, size and mtime of every file: cheap (a stat per file) and changes with any edit."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            path = Path(root, name)
            stat = path.lstat()
            digest.update(f"{path.relative_to(tree)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def state(tree: Path) -> TreeState:
    tree = check_tree(tree)
    version = kernel_version(tree)
    if not is_git(tree):
        return TreeState(str(tree), "plain", version, None, None, False, _plain_digest(tree))
    commit = _git(tree, "rev-parse", "HEAD").strip()
    describe = _git(tree, "describe", "--always", "--dirty", "--tags", check=False).strip() or None
    status = _git(tree, "status", "--porcelain=v1", "--untracked-files=normal")
    dirty = bool(status.strip())
    digest = hashlib.sha256(commit.encode())
    if dirty:
        # Uncommitted edits are built too, so they are part of the state.
        digest.update(_git(tree, "diff", "HEAD", "--binary").encode())
        digest.update(status.encode())
    repository = _git(tree, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False).strip()
    return TreeState(str(tree), "git", version, commit, describe, dirty, digest.hexdigest(),
                     repository=repository or None)


def ensure_git(tree: Path) -> None:
    """Make a plain tree a git repository with one commit (once), so series can go on with git am.

    Debian's linux-source is a tarball; its first commit is named after the tree's version."""
    if is_git(tree):
        return
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    message = f"{tree.name}: unpacked source ({kernel_version(tree)})"
    _git(tree, "commit", "-q", "--no-verify", "-m", message)


def patch_files(patches: Path) -> list[Path]:
    """An mbox file, or a directory of *.patch files (applied in name order)."""
    patches = patches.expanduser().resolve()
    if patches.is_dir():
        files = sorted(patches.glob("*.patch"))
        if not files:
            raise HarnessError(
                f"{patches} has no *.patch files: give an mbox or a directory of git format-patch output"
            )
        return files
    if not patches.is_file():
        raise HarnessError(f"--patches {patches}: no such file or directory")
    return [patches]


def series_digest(files: list[Path]) -> tuple[dict[str, str], ...]:
    return tuple({"name": f.name, "sha256": sha256_file(f)} for f in files)


@dataclass(frozen=True)
class Source:
    """A tree, the series to apply on it (maybe none), and the state a build of them keys on."""

    tree: Path
    patches: tuple[Path, ...]
    state: TreeState


def resolve(tree: Path, patches: Path | None = None) -> Source:
    """The source's state, without checking anything out: a cached build needs no worktree.

    With a series the state is the base commit plus the series' content (git am's commits
    carry today's date, so their hashes are not stable across runs)."""
    tree = check_tree(tree)
    if patches is None:
        return Source(tree, (), state(tree))
    files = patch_files(patches)
    ensure_git(tree)
    base = state(tree)
    series = series_digest(files)
    digest = hashlib.sha256(base.commit.encode() if base.commit else b"")
    for entry in series:
        digest.update(f"{entry['name']}\0{entry['sha256']}\n".encode())
    # Patches go on HEAD in a worktree: uncommitted edits of the tree are not part of the build.
    patched = TreeState(str(tree), "git", base.version, base.commit, base.describe, False,
                        digest.hexdigest(), series, base.repository)
    return Source(tree, tuple(files), patched)


@contextmanager
def checkout(source: Source) -> Iterator[Path]:
    """The directory to build in: the tree itself, or a throwaway worktree of its HEAD with the
    series applied by git am (at a path fixed by the state, so ccache hits on a rebuild)."""
    if not source.patches:
        yield source.tree
        return
    tree = source.tree
    worktree = cache_dir("worktrees") / source.state.digest[:16]
    _remove_worktree(tree, worktree)
    _git(tree, "worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    try:
        done = subprocess.run(
            ["git", "-C", str(worktree), *_GIT_IDENTITY, "am", "-q", "--3way", *map(str, source.patches)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            failed = re.search(r"Patch failed at (\S+ .*)", done.stdout + done.stderr)
            which = failed[1].strip() if failed else (done.stderr.strip().splitlines() or ["?"])[-1]
            origin = source.patches[0].name if len(source.patches) == 1 else source.patches[0].parent.name
            raise HarnessError(
                f"patch does not apply: {which} (from {origin}) on "
                f"{source.state.describe or source.state.commit}: rebase the series onto this tree "
                "or give the tree it was written for"
            )
        yield worktree
    finally:
        _remove_worktree(tree, worktree)


def _remove_worktree(tree: Path, worktree: Path) -> None:
    subprocess.run(["git", "-C", str(worktree), "am", "--abort"], capture_output=True)
    subprocess.run(["git", "-C", str(tree), "worktree", "remove", "--force", str(worktree)],
                   capture_output=True)
    shutil.rmtree(worktree, ignore_errors=True)
    subprocess.run(["git", "-C", str(tree), "worktree", "prune"], capture_output=True)


def head(tree: Path) -> dict[str, str]:
    """Commit and describe of a git checkout's HEAD (a patched worktree's tip), else {}."""
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode != 0:
        return {}
    describe = _git(tree, "describe", "--always", "--tags", check=False).strip()
    return {"commit": commit.stdout.strip(), "describe": describe or commit.stdout.strip()[:12]}
