"""Tree state (the build cache's key) and patch series, on small trees made here with git.

The real kernel tree is built in test_build_tree.py; these check what keys a build: an edit,
a commit or another series must change the key, and nothing else may."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import trees
from harness.errors import HarnessError

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]


def make_tree(root: Path) -> Path:
    for name in trees._KERNEL_TREE_MARKERS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")
    (root / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n")
    return root


def git(tree: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout


def test_plain_tree_state_follows_edits(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    first = trees.state(tree)
    assert (first.kind, first.version, first.commit) == ("plain", "7.3.0-rc1", None)
    assert trees.state(tree).digest == first.digest
    (tree / "mm/hugetlb.c").write_text("changed, same size\n"[:len("mm/hugetlb.c\n")])
    assert trees.state(tree).digest != first.digest


def test_git_tree_state_is_commit_plus_uncommitted_diff(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    trees.ensure_git(tree)
    clean = trees.state(tree)
    assert clean.kind == "git" and not clean.dirty and len(clean.commit or "") == 40
    (tree / "mm/hugetlb.c").write_text("an uncommitted edit\n")
    dirty = trees.state(tree)
    assert dirty.dirty and dirty.commit == clean.commit and dirty.digest != clean.digest
    git(tree, "commit", "-qam", "edit")
    committed = trees.state(tree)
    assert not committed.dirty and committed.commit != clean.commit


def test_series_keys_on_base_commit_and_patch_content(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    trees.ensure_git(tree)
    (tree / "mm/hugetlb.c").write_text("patched\n")
    git(tree, "commit", "-qam", "mm: a change")
    series = tmp_path / "series"
    series.mkdir()
    git(tree, "format-patch", "-q", "-1", "-o", str(series))
    git(tree, "reset", "-q", "--hard", "HEAD~1")
    source = trees.resolve(tree, series)
    assert [p["name"] for p in source.state.patches] == ["0001-mm-a-change.patch"]
    assert trees.resolve(tree, series).state.digest == source.state.digest
    with trees.checkout(source) as worktree:
        assert (worktree / "mm/hugetlb.c").read_text() == "patched\n"
        assert trees.head(worktree)["commit"] != source.state.commit
    # The user's checkout is untouched and the worktree is gone.
    assert (tree / "mm/hugetlb.c").read_text() == "mm/hugetlb.c\n"
    assert "worktree" not in git(tree, "worktree", "list").split("\n", 1)[-1]
    (series / "0001-mm-a-change.patch").write_text(
        (series / "0001-mm-a-change.patch").read_text().replace("+patched", "+patched again")
    )
    assert trees.resolve(tree, series).state.digest != source.state.digest


def test_not_a_tree_and_configured_tree(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="not a Linux kernel tree"):
        trees.state(tmp_path)
    tree = make_tree(tmp_path)
    (tree / ".config").write_text("CONFIG_X=y\n")
    with pytest.raises(HarnessError, match="mrproper"):
        trees.state(tree)


def test_empty_patch_directory(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"no \*\.patch files"):
        trees.patch_files(tmp_path)
