"""Command-line parsing only: every command calls the pipeline or a stage.

Exit codes: 0 all passed or skipped with a reason, 1 something failed, 2 usage or set-up."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from rich.console import Console

from harness import annotate, artefacts, dmesg, guest_memory, pipeline, report, source_lines, vng
from harness import bisect as bisect_steps
from harness.errors import HarnessError
from harness.profiles import ARCH_NAMES, parse_arch_list, with_node_memory
from harness.results import Results, write_json

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2
_err = Console(stderr=True, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as the CLI's others: one line naming the fix, exit 2 (its default
    prints the usage block first). Subcommands get this class too (add_subparsers' default)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_SETUP, f"hvo-harness: error: {message}: see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hvo-harness",
        description="Boot real kernels under QEMU and judge HugeTLB Vmemmap Optimization.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="boot each arch with HVO on and off and judge it")
    run.add_argument("--arch", default="all", help="x86_64,riscv64,loongarch64 or all (default)")
    run.add_argument("--kernel", default=None, metavar="SPEC[,SPEC...]|PATH",
                     help="debian:sid (the default; 'debian' too), debian:trixie, debian:experimental, "
                          "debian:PACKAGE=VERSION, comma-separated for a release matrix; or an image path")
    run.add_argument("--config", type=Path, help="the kernel's .config, for a --kernel PATH")
    run.add_argument("--hvo", default="on,off", help="hugetlb_free_vmemmap settings to boot (on,off)")
    run.add_argument("--append", default="", help="extra kernel command-line arguments")
    run.add_argument("--json", type=Path, help="write the results JSON here too")
    run.add_argument("--out", type=Path, default=Path("hvo-results"),
                     help="directory for console logs and results.json (default ./hvo-results)")
    run.add_argument("--timeout", type=float, default=pipeline.DEFAULT_TIMEOUT,
                     help="seconds a boot may take before it is ended as hung")
    run.add_argument("--accel", choices=("auto", "tcg"), default="auto",
                     help="auto: KVM when the probe says it works, else TCG")
    run.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                     help="arches booted at once (default: 2, one TCG guest per core)")
    run.add_argument("--node-mem", metavar="MIB,MIB",
                     help="guest memory per NUMA node in MiB (default: the arch profile's)")
    run.add_argument("--backend", choices=vng.BACKENDS, default="qemu",
                     help="qemu (default): QEMU with the harness's initramfs; vng: virtme-ng on "
                          "this host's userspace (x86_64, --tree --variant ...+vng)")
    run.add_argument("--fresh-memory", action="store_true",
                     help="boot every guest on fresh RAM, not on the memory pool's files that "
                          "earlier boots of the same size left (/dev/shm/hvo-harness)")
    run.add_argument("--target", metavar="ssh://USER@HOST[:PORT]",
                     help="run the scenarios on a running machine over SSH (as root) instead of "
                          "booting QEMU: its own kernel, its arch, its boot-time pages")
    run.add_argument("--identity", type=Path, metavar="KEY",
                     help="--target: the private key to log in with (default: the agent, ~/.ssh)")
    run.add_argument("--known-hosts", type=Path, metavar="FILE",
                     help="--target: the known_hosts file to check the host key against "
                          "(default ~/.ssh/known_hosts); an unknown or changed key is refused")
    _tree_arguments(run, tree_required=False)

    build = commands.add_parser("build", help="build kernels from a tree (cached), without booting")
    build.add_argument("--arch", default="all", help="x86_64,riscv64,loongarch64 or all (default)")
    _tree_arguments(build, tree_required=True)

    parse = commands.add_parser("parse", help="findings and HugeTLB lines of a console log")
    parse.add_argument("log", type=Path)
    parse.add_argument("--json", type=Path, help="write the findings JSON here")
    parse.add_argument("--source", type=Path, metavar="TREE",
                       help="the source tree of the kernel that printed the log (default: a Debian "
                            "kernel's linux-source at its version, from its banner)")
    parse.add_argument("--vmlinux", type=Path, metavar="FILE",
                       help="its vmlinux with debug info, to decode call traces (default: a Debian "
                            "kernel's linux-image-<release>-dbg, fetched once)")
    parse.add_argument("--no-decode", action="store_true",
                       help="do not decode call traces (no vmlinux is looked for or fetched)")

    fetch = commands.add_parser("fetch", help="download Debian's kernels, busybox and source")
    fetch.add_argument("--arch", default="all")
    fetch.add_argument("--no-source", action="store_true", help="skip linux-source")
    fetch.add_argument("--kernel", default="debian:sid", metavar="SPEC[,SPEC...]",
                       help="the Debian kernels to fetch, as for run --kernel (default debian:sid)")

    restore = commands.add_parser(
        "restore", help="put back the settings an SSH run saved on its target and did not restore")
    restore.add_argument("--target", required=True, metavar="ssh://USER@HOST[:PORT]",
                         help="the machine the earlier `run --target` left its saved state on")
    restore.add_argument("--identity", type=Path, metavar="KEY",
                         help="the private key to log in with (default: the agent, ~/.ssh)")
    restore.add_argument("--known-hosts", type=Path, metavar="FILE",
                         help="the known_hosts file to check the host key against (default "
                              "~/.ssh/known_hosts); an unknown or changed key is refused")
    _results_commands(commands)
    _ci_command(commands)
    _bisect_commands(commands)
    _repro_commands(commands)
    return parser


DEFAULT_TREE = "debian"


def _tree_arguments(parser: argparse.ArgumentParser, tree_required: bool) -> None:
    """Options shared by `build` and `run --tree`."""
    parser.add_argument(
        "--tree", nargs="?", const=DEFAULT_TREE, default=DEFAULT_TREE if tree_required else None,
        metavar="PATH",
        help="build the kernel from this tree; alone (or 'debian'): Debian's newest linux-source",
    )
    parser.add_argument("--variant", default=None,
                        help="kconfig variant(s), comma-separated: base, debug, debug+4k, ... "
                             "(fragments of kconfigs/ and page sizes joined by '+')")
    parser.add_argument("--page-sizes", choices=("default", "all"), default="default",
                        help="all: build each variant at every page size the arch has")
    parser.add_argument("--toolchain", choices=("gcc", "llvm"),
                        help="default: the arch's first (gcc; llvm for loongarch64)")
    parser.add_argument("--patches", type=Path,
                        help="an mbox or a directory of .patch files, applied with git am in a worktree")
    parser.add_argument("--fragment", type=Path, action="append", default=[],
                        help="an extra kconfig fragment (repeatable), merged after the variant's")


def _tree_build(args: argparse.Namespace) -> pipeline.TreeBuild | None:
    if args.tree is None:
        for option in ("variant", "patches", "toolchain"):
            if getattr(args, option):
                raise HarnessError(f"--{option} needs --tree (a tree; --tree alone: linux-source)")
        if args.fragment or args.page_sizes != "default":
            raise HarnessError("--fragment and --page-sizes need --tree")
        return None
    variants = tuple(v.strip() for v in args.variant.split(",") if v.strip()) if args.variant else (None,)
    return pipeline.TreeBuild(
        tree=None if args.tree == DEFAULT_TREE else Path(args.tree),
        patches=args.patches,
        variants=variants or (None,),
        all_page_sizes=args.page_sizes == "all",
        toolchain=args.toolchain,
        fragments=tuple(args.fragment),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bisect-run"]:
        return _bisect_run_main(argv)  # its own exit codes, for git bisect run
    args = _parser().parse_args(argv)
    # Memory files a crashed or killed harness left are removed at the next start; this
    # process's own at its exit (guest_memory's atexit), which SIGTERM reaches too: any command
    # ends on it as on Ctrl-C (`run` answers it itself, with the results so far).
    guest_memory.sweep()
    try:
        with _sigterm_as_interrupt():
            return _command(args)
    except _Terminated:
        return 128 + signal.SIGTERM
    except HarnessError as error:
        _err.print(f"hvo-harness: error: {error}", markup=False, highlight=False)
        return EXIT_SETUP


def _command(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "build":
        return _build(args)
    if args.command == "parse":
        return _parse(args)
    if args.command == "fetch":
        return _fetch(args)
    if args.command == "restore":
        return _restore(args)
    if args.command in RESULTS_COMMANDS:
        return _results_command(args)
    if args.command == "ci":
        return _ci(args)
    if args.command == "bisect":
        return _bisect(args)
    if args.command in REPRO_COMMANDS:
        return _repro_command(args)
    return EXIT_SETUP


def _run(args: argparse.Namespace) -> int:
    if args.target is not None:
        return _run_target(args)
    if args.identity is not None or args.known_hosts is not None:
        raise HarnessError("--identity and --known-hosts are for --target ssh://USER@HOST: give "
                           "--target too, or omit them")
    # Every check that needs no download, build or boot comes first, the arguments' own, then
    # the paths: a typo costs well under a second, never a download, and nothing is written.
    profiles = parse_arch_list(args.arch)
    settings = pipeline.parse_hvo_settings(args.hvo, "--hvo")
    _check_timeout(args.timeout)
    if args.jobs < 1:
        raise HarnessError(f"--jobs {args.jobs}: give how many arches boot at once, 1 or more")
    tree_build = _tree_build(args)
    if tree_build and args.kernel is not None:
        raise HarnessError("--kernel and --tree both name the kernel to boot: give one")
    kernel = args.kernel if args.kernel is not None else "debian:sid"
    # The spec's own checks (an empty item, a suite twice, a path with several arches) are
    # MatrixRequest.check's, below; --config with no kernel path is said here in CLI terms.
    if args.config and not tree_build and not isinstance(pipeline.parse_kernels(kernel)[0], Path):
        raise HarnessError("--config is the .config of a --kernel PATH: give --kernel too, or omit "
                           "--config (Debian's and --tree kernels come with their own)")
    if args.node_mem:
        profiles = [with_node_memory(p, args.node_mem) for p in profiles]
    request = pipeline.MatrixRequest(
        profiles=profiles, kernel=kernel, config=args.config, hvo_settings=settings,
        append=args.append, timeout=args.timeout, want_kvm=args.accel == "auto", jobs=args.jobs,
        build=tree_build, backend=args.backend, fresh_memory=args.fresh_memory,
    )
    out_dir: Path = args.out
    if args.json:
        _check_output_file(args.json, "--json", probe=False)
    request.check()
    # Last, as they write: --out is made, then a probe file goes into --json's directory (which
    # may be --out: `--out r --json r/all.json`).
    _check_out_dir(out_dir)
    if args.json:
        _check_output_file(args.json, "--json")
    done = _saved_run(out_dir, args.json, request.boot_count(),
                      lambda on_run, progress, stop: pipeline.run_matrix(request, out_dir, on_run,
                                                                         progress, stop))
    if isinstance(done, int):
        return done
    results, saver = done
    report.print_results(results)
    _err.print(f"results: {', '.join(str(p) for p, _ in saver.paths)}; logs: {out_dir}/")
    return exit_code(results)


# What _saved_run runs: given where to save each finished boot, progress and the stop event.
_Work = Callable[[Callable[[Results, int], None], Callable[[str], None], threading.Event], Results]


def _saved_run(out_dir: Path, json_path: Path | None, boots: int,
               work: _Work) -> tuple[Results, _Saver] | int:
    """WORK (a matrix, a target's run) with its results saved as each boot ends, the previous
    run's files kept apart, and SIGINT/SIGTERM answered with the results so far and 128+N."""
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    _keep_previous_run(out_dir, progress)
    stop = threading.Event()
    saver = _Saver([(out_dir / "results.json", "--out"), *([(json_path, "--json")] if json_path else [])],
                   stop, boots)
    with _sigterm_as_interrupt():
        try:
            results = work(saver.on_run, progress, stop)
        except KeyboardInterrupt as interrupt:
            stop.set()
            name = "SIGTERM" if isinstance(interrupt, _Terminated) else "SIGINT"
            saver.interrupted(name)
            _err.print(f"hvo-harness: interrupted by {name}; results so far in {saver.paths[0][0]}, "
                       f"logs in {out_dir}", markup=False, highlight=False)
            return 128 + (signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)
        except HarnessError as error:
            stop.set()
            saver.stopped(error)
            raise
    saver.finished(results)
    return results, saver


# `run` options that choose what QEMU boots: an SSH target runs its own kernel, as it is.
_BOOT_ONLY_OPTIONS = (("kernel", None), ("config", None), ("append", ""), ("node_mem", None),
                      ("tree", None), ("backend", "qemu"), ("arch", "all"), ("hvo", "on,off"),
                      ("accel", "auto"), ("fresh_memory", False))


def _run_target(args: argparse.Namespace) -> int:
    """`run --target ssh://USER@HOST[:PORT]`: the scenarios on a running machine, judged and
    saved as a boot's (harness/targets/ssh.py)."""
    from harness.targets import ssh

    address = ssh.parse_address(args.target)
    for option, default in _BOOT_ONLY_OPTIONS:
        if getattr(args, option) != default:
            flag = "--" + option.replace("_", "-")
            raise HarnessError(f"{flag} chooses what QEMU boots; --target {args.target} runs the "
                               f"target's own kernel as it is (its arch, command line and HVO "
                               f"setting): omit {flag}")
    _check_timeout(args.timeout)
    for path, option in ((args.identity, "--identity"), (args.known_hosts, "--known-hosts")):
        if path is not None and not path.is_file():
            raise HarnessError(f"{option} {path}: no such file")
    out_dir: Path = args.out
    if args.json:
        _check_output_file(args.json, "--json", probe=False)
    _check_out_dir(out_dir)
    if args.json:
        _check_output_file(args.json, "--json")
    def work(on_run: Callable[[Results, int], None], progress: Callable[[str], None],
             stop: threading.Event) -> Results:
        return ssh.run_ssh(address, args.identity, args.known_hosts, out_dir, on_run, progress, stop,
                           args.timeout, pipeline.new_results())

    done = _saved_run(out_dir, args.json, 1, work)
    if isinstance(done, int):
        return done
    results, saver = done
    report.print_results(results)
    for run in results.runs:
        target = run.target or {}
        if target.get("not_restored"):
            _err.print(f"hvo-harness: NOT RESTORED on {target.get('address')}: "
                       + "; ".join(target["not_restored"][:5]), markup=False, highlight=False)
    _err.print(f"results: {', '.join(str(p) for p, _ in saver.paths)}; logs: {out_dir}/")
    return exit_code(results)


def _restore(args: argparse.Namespace) -> int:
    """`restore --target ssh://USER@HOST[:PORT]`: the settings an earlier SSH run saved on the
    target and did not put back (a connection that never came back, a harness killed with
    SIGKILL), written back and read back (harness/targets/ssh.py restore_target)."""
    from harness.targets import ssh

    report = ssh.restore_target(ssh.parse_address(args.target), args.identity, args.known_hosts)
    for line in report.lines():
        print(line, flush=True)
    return EXIT_FAIL if report.not_restored else EXIT_PASS


def _check_timeout(timeout: float) -> None:
    # float() takes 'nan' and 'inf': a NaN deadline never passes and an infinite one never
    # comes, so a hung guest would hold the run for ever; zero or less ends every boot at once.
    if not math.isfinite(timeout) or timeout <= 0:
        raise HarnessError(f"--timeout {timeout:g}: give the seconds a boot may take, a number "
                           f"above 0 (default {pipeline.DEFAULT_TIMEOUT:g})")


def _probe(directory: Path) -> None:
    """Create and remove a file in DIRECTORY: the one sure test that it is writable (root
    writes past permission bits, not past a read-only or full file system); OSError if not."""
    probe = directory / f".hvo-harness-probe-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"probe\n")
    finally:
        os.close(fd)
        probe.unlink()


def _check_output_file(path: Path, option: str, probe: bool = True) -> None:
    """A file a command is to write: not a directory, in a directory that exists and takes
    files (probe=False: leave that out); checked before any work, so a typo never costs a
    run's results."""
    if path.is_dir():
        raise HarnessError(f"{option} {path} is a directory: give a file name, e.g. {path / 'results.json'}")
    if path.exists() and not path.is_file():
        # Results are written to a temporary file renamed over the path, which would replace
        # a device or a pipe rather than write into it.
        raise HarnessError(f"{option} {path} is not a regular file: give a file name")
    parent = path.parent
    if not probe:
        return
    if not parent.is_dir():
        raise HarnessError(f"{option} {path}: directory {parent} does not exist: create it or give "
                           "a path in one that does")
    try:
        _probe(parent)
    except OSError as error:
        raise HarnessError(f"{option} {path}: cannot write in {parent} ({error.strerror or error}): "
                           "give a writable path") from None


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"--out {out_dir} is a file, not a directory: give a directory for the "
                           "logs and results.json")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _probe(out_dir)
    except OSError as error:
        raise HarnessError(f"--out {out_dir}: cannot create or write it ({error.strerror or error}): "
                           "give a writable directory") from None


# What a run writes into --out (pipeline.boot: '<arch>[-<variant>]-hvo-<on|off>.<kind>'; an SSH
# run, '<arch>-ssh-<host>-hvo-<on|off>.<kind>'), and only that: anything else a user keeps there
# is not the harness's to move. An SSH run's .ssh-state.json (the target's settings as they were,
# kept while not restored) goes with its run: the next run would otherwise write its own over it.
_RUN_FILE = re.compile(
    rf"(?:{'|'.join(map(re.escape, ARCH_NAMES))})(?:-[A-Za-z0-9_.+-]+)?-hvo-(?:on|off)"
    r"\.(?:console\.log|results\.ktap|dmesg\.log|kernel\.log|qemu\.sh|vng\.sh|ssh-state\.json)"
)
# Directories a run writes whole: reproducer bundles (bundle.py) and triage boots (triage.py).
# A bundle left from an earlier run would stand for a boot that this run may have passed.
_RUN_DIRS = ("repro", "triage")
PREVIOUS_DIR = "previous"


def _keep_previous_run(out_dir: Path, progress: pipeline.Progress) -> Path | None:
    """Move an earlier run's results.json and logs into OUT/previous/<UTC time>/, so that this
    run overwrites nothing; the time is when the earlier run last wrote (its results.json)."""
    files = [p for p in out_dir.iterdir()
             if (p.is_file() and (p.name == "results.json" or _RUN_FILE.fullmatch(p.name)))
             or (p.is_dir() and p.name in _RUN_DIRS)]
    if not files:
        return None
    results = out_dir / "results.json"
    written = results.stat().st_mtime if results in files else max(p.stat().st_mtime for p in files)
    stamp = datetime.fromtimestamp(written, UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        for n in range(1, 1000):
            target = out_dir / PREVIOUS_DIR / (stamp if n == 1 else f"{stamp}-{n}")
            with contextlib.suppress(FileExistsError):
                target.mkdir(parents=True)
                break
        else:
            raise HarnessError(f"{out_dir / PREVIOUS_DIR} has 999 runs of {stamp}: clear it out")
        for path in files:
            os.replace(path, target / path.name)
    except OSError as error:
        raise HarnessError(f"--out {out_dir}: cannot move the previous run into {PREVIOUS_DIR}/ "
                           f"({error.strerror or error}): move it yourself or give another --out") from None
    progress(f"kept the previous run in {target}/ ({len(files)} files: "
             f"{'results.json and its logs' if results in files else 'its logs'})")
    return target


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so that both end
    every QEMU (run_matrix sets the stop event) and keep the results by the same path."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread (cli.main from a thread)
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        # Once: a second SIGTERM (a service manager repeating itself) must not cut short the
        # saving of the results the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Saver:
    """Writes the results after every boot, and at the end whatever the end was.

    The files say what they hold: complete=false while the matrix runs, with run_matrix's
    "run in progress: N of M boots done", then the end: complete, or interrupted or stopped and
    how far it got. A write that fails (a full disk) sets the stop event, so the other arches'
    guests end too, and is the one error line of the run."""

    def __init__(self, paths: list[tuple[Path, str]], stop: threading.Event, total: int) -> None:
        self.paths = paths
        self.stop = stop
        self.total = total
        self.lock = threading.Lock()
        self.results = pipeline.new_results()
        self.results.complete = False
        self.results.partial_reason = f"run in progress: 0 of {total} boots done"
        # Set once the run has ended: a boot that finishes after that (a worker still ending
        # its guest) is saved with this reason, not as a run in progress.
        self.ended: str | None = None
        self.written = False

    def on_run(self, results: Results, total: int) -> None:
        with self.lock:
            self.results, self.total = results, total
            self._write()

    def interrupted(self, signal_name: str) -> None:
        self._end(lambda done: f"interrupted by {signal_name} after {done} of {self.total} boots")

    def stopped(self, error: HarnessError) -> None:
        if not self.written:
            return  # a set-up error before the first boot: no results to amend, the line says it
        # The error being reported may be this very write failing: it is said once, not twice.
        with contextlib.suppress(HarnessError):
            self._end(lambda done: f"stopped by an error after {done} of {self.total} boots: {error}")

    def finished(self, results: Results) -> None:
        with self.lock:
            self.results, self.ended = results, None
            self._write()

    def _end(self, reason: Callable[[int], str]) -> None:
        with self.lock:
            self.ended = reason(self.results.finished_boots())
            self._write()

    def _write(self) -> None:
        results = self.results
        if self.ended is not None:
            # A copy: run_matrix's own record keeps saying what run_matrix saw.
            results = dataclasses.replace(results, complete=False, partial_reason=self.ended)
        self.written = True
        errors: list[HarnessError] = []
        for path, option in self.paths:  # each file on its own: one full disk spares the others
            try:
                results.write(path, option)
            except HarnessError as error:
                errors.append(error)
        if errors:
            self.stop.set()
            raise errors[0]


def exit_code(results: Results) -> int:
    verdicts = {run.verdict for run in results.runs}
    if "error" in verdicts:
        return EXIT_SETUP if verdicts == {"error"} else EXIT_FAIL
    return EXIT_FAIL if "fail" in verdicts or not results.runs else EXIT_PASS


def _build(args: argparse.Namespace) -> int:
    profiles = parse_arch_list(args.arch)
    spec = _tree_build(args)
    assert spec is not None
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    request = pipeline.MatrixRequest(profiles=profiles, build=spec)
    built = pipeline.prepare_kernels(request, progress)
    for profile, kernel in built:
        source = kernel.info.source
        print(f"{profile.name} {kernel.variant}: {kernel.info.path} "
              f"(sha256 {kernel.info.sha256[:16]}, metadata {source['build_metadata']})")
    return EXIT_PASS


def _parse(args: argparse.Namespace) -> int:
    if not args.log.is_file():
        raise HarnessError(f"{args.log} is not a readable file: give a console or dmesg log")
    if args.json:
        _check_output_file(args.json, "--json")
    text = args.log.read_bytes().decode(errors="replace")
    parsed = dmesg.parse(text)
    banner = source_lines.kernel_banner(text)
    if args.source is not None:
        source: source_lines.Source = source_lines.tree_source(args.source, banner)
    elif banner is not None and banner.debian_version:
        source = source_lines.debian_source(banner)
    else:
        what = f"the kernel {banner.release}" if banner else "the log's kernel (no banner)"
        source = source_lines.NotAtHand(f"{what} is not a Debian kernel: give its source tree "
                                        "with --source TREE")
    progress = lambda line: _err.print(f"[dim]>[/] {line}", highlight=False)  # noqa: E731
    debug = None if args.no_decode else annotate.debug_for_log(text, source, args.vmlinux, progress)
    parsed.findings = annotate.findings_of_log(parsed.findings, text, source, debug)
    report.print_console_report(parsed)
    if args.json:
        write_json(args.json, asdict(parsed), "--json")
    return EXIT_FAIL if parsed.findings else EXIT_PASS


def _fetch(args: argparse.Namespace) -> int:
    profiles = parse_arch_list(args.arch)
    specs = [spec for spec in pipeline.parse_kernels(args.kernel)
             if isinstance(spec, artefacts.DebianKernelSpec)]
    if not specs:
        raise HarnessError(f"--kernel {args.kernel}: fetch fills the cache with Debian kernels: "
                           "give debian:sid, debian:trixie, ... (an image path needs no fetch)")
    pipeline.MatrixRequest(profiles=profiles, kernel=args.kernel).check_kernels()
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    summary = artefacts.fetch(profiles, refresh=True, with_source=not args.no_source,
                              progress=progress, kernels=specs)
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_PASS


# --- Commands that read a results file: report, export, compare ------------------------------

RESULTS_COMMANDS = ("report", "export", "compare")


def _results_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="write report.md and report.html from a results file, "
                                                "or (--upstream) a plain-text bug report of a failing boot")
    report.add_argument("results", type=Path, help="a results JSON (hvo-harness/1)")
    report.add_argument("--out", type=Path,
                        help="directory for report.md and report.html (default: the results file's); "
                             "with --upstream, the file for the report (default: standard output)")
    report.add_argument("--upstream", action="store_true",
                        help="a bug report for a kernel mailing list: plain text, lines under 80 columns")
    report.add_argument("--boot", metavar="NAME",
                        help="with --upstream: the failing boot, e.g. x86_64-hvo-on or its arch "
                             "(default: the first failing boot)")
    report.add_argument("--bisect", type=Path, metavar="DIR",
                        help="with --upstream: the --out of `hvo-harness bisect` (default: a bisect/ "
                             "beside the results, when there is one of this boot's arch)")

    export = commands.add_parser("export", help="convert a results file for another system")
    formats = export.add_subparsers(dest="format", required=True)
    kcidb = formats.add_parser("kcidb", help="KernelCI KCIDB I/O JSON (schema v5), for kcidb-submit")
    kcidb.add_argument("results", type=Path, help="a results JSON (hvo-harness/1)")
    kcidb.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    kcidb.add_argument("--origin",
                       help="KCIDB origin: the submitting CI system's name, prefix of every ID "
                            "(default hvo_harness)")
    lava = formats.add_parser("lava", help="LAVA job definitions (qemu device type, and a board template), "
                                           "validated with LAVA's own schema")
    lava.add_argument("results", type=Path, nargs="?",
                      help="a results JSON (hvo-harness/1): a job per booted run; or give --arch")
    lava.add_argument("--arch", help="x86_64,riscv64,... or all: a job per arch and --hvo setting, as "
                                     "`run` would boot them")
    lava.add_argument("--kernel", default="debian:sid", metavar="SPEC|PATH",
                      help="with --arch: one kernel, as for run --kernel (default debian:sid)")
    lava.add_argument("--config", type=Path, help="with --arch and a --kernel PATH: its .config")
    lava.add_argument("--hvo", default="on,off", help="with --arch: hugetlb_free_vmemmap settings (on,off)")
    lava.add_argument("--append", default="", help="with --arch: extra kernel command-line arguments")
    lava.add_argument("--out", type=Path, default=Path("lava-jobs"),
                      help="directory for the jobs, boards/ and devices/ (default ./lava-jobs)")
    lava.add_argument("--artefacts-url", metavar="URL",
                      help="copy kernels, ramdisks and firmware into OUT/artefacts and point the jobs at "
                           "URL/<file> (default: file:// paths on this machine)")
    lava.add_argument("--run", action="store_true",
                      help="run the first QEMU job through lava-run here and judge it "
                           "(OUT/lava-run/<boot>/results.json); exit 1 when it fails")

    compare = commands.add_parser("compare", help="list regressions from a base results file to a new one; "
                                                  "exit 1 when there is any")
    compare.add_argument("base", type=Path, help="the results JSON to compare against")
    compare.add_argument("new", type=Path, help="the results JSON to judge")


def _results_command(args: argparse.Namespace) -> int:
    # Imported here so that `run` and `build` do not load kcidb_io and the report code.
    from harness import compare, kcidb_export, report_page
    from harness.results import load

    if args.command == "report" and args.upstream:
        return _upstream_report(args)
    if args.command == "report":
        if args.boot or args.bisect:
            raise HarnessError(f"--{'boot' if args.boot else 'bisect'} is for the upstream report: "
                               "give --upstream too, or leave it out")
        results = load(args.results)
        out_dir = args.out or args.results.parent
        try:
            markdown_path, html_path = report_page.write_reports(results, args.results.name, out_dir)
        except OSError as error:
            raise _unwritable(out_dir, error) from None
        print(f"{markdown_path}\n{html_path}")
        return EXIT_PASS
    if args.command == "export" and args.format == "lava":
        return _export_lava(args)
    if args.command == "export":
        origin = kcidb_export.check_origin(args.origin or kcidb_export.DEFAULT_ORIGIN)
        text = json.dumps(kcidb_export.export(load(args.results), origin), indent=2) + "\n"
        if args.output:
            try:
                args.output.write_text(text)
            except OSError as error:
                raise _unwritable(args.output, error) from None
        else:
            sys.stdout.write(text)
        return EXIT_PASS
    base_label, new_label = str(args.base), str(args.new)
    comparison = compare.compare(load(args.base), load(args.new), base_label, new_label)
    print(compare.format_comparison(comparison, base_label, new_label))
    return EXIT_FAIL if comparison.regressions else EXIT_PASS


def _export_lava(args: argparse.Namespace) -> int:
    from harness.targets import lava

    if args.results is not None and args.arch is not None:
        raise HarnessError("export lava takes a results file or --arch, not both: give one")
    if args.results is not None:
        for flag, value, default in (("--kernel", args.kernel, "debian:sid"), ("--config", args.config, None),
                                     ("--hvo", args.hvo, "on,off"), ("--append", args.append, "")):
            if value != default:
                raise HarnessError(f"{flag} is for export lava --arch: a results file's jobs boot what its "
                                   f"runs booted: omit {flag}")
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    request = lava.ExportRequest(
        results=args.results, arches=args.arch, kernel=args.kernel, config=args.config,
        hvo_settings=pipeline.parse_hvo_settings(args.hvo, "--hvo"), append=args.append, out=args.out,
        artefacts_url=args.artefacts_url, run=args.run,
    )
    outcome = lava.export(request, progress)
    for line in outcome.skipped:
        print(line)
    for path in outcome.written:
        print(path)
    if outcome.run is None:
        return EXIT_PASS
    run = outcome.run
    print(f"{outcome.results_path}\n{run.arch} hvo={run.hvo.requested} through lava-run: "
          f"{run.verdict} ({run.verdict_reason})")
    return EXIT_FAIL if run.verdict in ("fail", "error") else EXIT_PASS


def _upstream_report(args: argparse.Namespace) -> int:
    from harness import upstream
    from harness.results import load

    results = load(args.results)
    run = upstream.select_run(results, args.boot)
    bisect = upstream.find_bisect(args.results, run, args.bisect) if args.bisect else None
    text = upstream.render(results, run, args.results, bisect)
    if args.out is not None and args.out.is_dir():
        raise HarnessError(f"--out {args.out} is a directory: with --upstream give the file to write")
    return _write_text(text, args.out)


def _unwritable(target: Path, error: OSError) -> HarnessError:
    return HarnessError(f"cannot write {target}: {error.strerror or error}: give a writable path")


def _write_text(text: str, out: Path | None) -> int:
    """TEXT to OUT (its directory made), its path printed; to standard output without OUT."""
    if out is None:
        sys.stdout.write(text)
        return EXIT_PASS
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as error:
        raise _unwritable(out, error) from None
    print(out)
    return EXIT_PASS


# --- ci: a nightly CI workflow (harness/ci.py) -------------------------------------------------

def _ci_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ci = commands.add_parser("ci", help="write a nightly CI workflow: GitHub Actions or GitLab CI")
    ci.add_argument("provider", help="github (.github/workflows/hvo-nightly.yml) or gitlab (.gitlab-ci.yml)")
    ci.add_argument("--out", type=Path, help="write here (default: standard output)")
    ci.add_argument("--arch", default="all", help="x86_64,riscv64,loongarch64 or all (default)")
    ci.add_argument("--variant", help="also a job per arch and variant built from Debian's linux-source "
                                      "(comma-separated: debug, debug+4k, ...)")
    ci.add_argument("--page-sizes", choices=("default", "all"), default="default",
                    help="all: a job per variant at every page size the arch has")


def _ci(args: argparse.Namespace) -> int:
    from harness import ci

    variants = [v.strip() for v in (args.variant or "").split(",") if v.strip()]
    text = ci.generate(args.provider, args.arch, variants, args.page_sizes == "all")
    return _write_text(text, args.out)



# --- bisect-run and bisect: find the commit that broke it (harness/bisect.py) -----------------

# `git bisect run` takes 0 as good, 125 as skip, 1..127 as bad and anything above 127 as "stop
# the bisect". So an error that does not depend on the commit (bad usage, no QEMU, no cross
# compiler, an unwritable --out) exits 128: exit 2, the CLI's usual set-up code, would mark the
# commit bad and send the bisect the wrong way.
BISECT_GOOD, BISECT_BAD, BISECT_SKIP, BISECT_ABORT = 0, 1, 125, 128
_BISECT_RUN_EPILOG = """\
exit codes (for `git bisect run`): 0 good, 1 bad, 125 skip (the commit does not build, or
the boot stopped before it could show the check), 128 abort (an error that does not depend on
the commit: bad usage, QEMU or the cross compiler missing, an unwritable --out; git bisect run
stops on any code above 127 instead of marking the commit bad).

CHECK (what bad means): any (default: any finding or failed scenario), function:NAME (a finding
in that function), check:NAME (a named check, e.g. sparse_init-memmap-alignment),
scenario:GLOB (a matching scenario fails, e.g. '1G/boot/node0/*'), savings (expected != measured
vmemmap savings). A boot without the finding is good only if it ran to its end (every scenario
ran, the kernel log is whole); otherwise the step is a skip."""


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="x86_64, riscv64 or loongarch64")
    parser.add_argument("--variant", help="kconfig variant: base, debug, debug+4k, ... (default base)")
    parser.add_argument("--toolchain", choices=("gcc", "llvm"),
                        help="default: the arch's first (gcc; llvm for loongarch64)")
    parser.add_argument("--check", default="any", help="what bad means (see below; default any)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="boots per step (default 1)")
    parser.add_argument("--need", type=int, metavar="K",
                        help="bad only when K of the N boots are bad (default: 1)")
    parser.add_argument("--hvo", default="on", choices=("on", "off"),
                        help="hugetlb_free_vmemmap setting of each boot (default on)")
    parser.add_argument("--timeout", type=float, default=pipeline.DEFAULT_TIMEOUT,
                        help="seconds a boot may take before it is ended as hung")


def _bisect_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "bisect-run", help="one step for `git bisect run`: build the checked-out tree, boot, judge",
        epilog=_BISECT_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _step_arguments(run)
    run.add_argument("--tree", type=Path, default=Path("."),
                     help="the kernel tree git bisect checks out (default: the current directory)")
    run.add_argument("--out", type=Path,
                     help="directory for the steps' logs (default: <cache>/bisect-run/<tree>-<hash>/)")
    bisect = commands.add_parser(
        "bisect", help="find the first bad commit between --good and --bad (git bisect in a worktree)",
        epilog="exit codes: 0 a first bad commit was found, 1 none could be (an end did not verify, "
               "or only skipped commits are left), 2 usage or set-up.\n\n"
               + _BISECT_RUN_EPILOG.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _step_arguments(bisect)
    bisect.add_argument("--tree", type=Path, required=True, help="the kernel git repository (never moved)")
    bisect.add_argument("--good", required=True, help="a commit where CHECK does not fail")
    bisect.add_argument("--bad", required=True, help="a later commit where it fails")
    bisect.add_argument("--out", type=Path, default=Path("hvo-bisect"),
                        help="directory for bisect/ (steps, bisect.json, the worktree; default ./hvo-bisect)")


def _step_config(args: argparse.Namespace) -> bisect_steps.StepConfig:
    from harness.profiles import get_profile

    _check_timeout(args.timeout)
    config = bisect_steps.StepConfig(
        profile=get_profile(args.arch), variant=args.variant, toolchain=args.toolchain,
        check=bisect_steps.parse_check(args.check), repeat=args.repeat,
        need=args.need if args.need is not None else 1, hvo=args.hvo, timeout=args.timeout)
    config.check_setup()
    return config


def _bisect_run_main(argv: list[str]) -> int:
    """bisect-run's whole life, with git bisect run's exit codes (BISECT_*)."""
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return BISECT_ABORT if exit_.code not in (0, None) else EXIT_PASS  # --help is 0
    try:
        config = _step_config(args)
        tree = args.tree.expanduser().resolve()
        from harness import trees

        trees.check_tree(tree)
        out = args.out.expanduser().resolve() if args.out else bisect_steps.default_run_dir(tree)
        bisect_steps.check_out_dir(out, tree)
        _check_out_dir(out)
        with _sigterm_as_interrupt():
            step = bisect_steps.bisect_run(tree, config, out, progress)
    except HarnessError as error:
        _err.print(f"hvo-harness: error: {error} (bisect aborted: exit {BISECT_ABORT})",
                   markup=False, highlight=False)
        return BISECT_ABORT
    except KeyboardInterrupt:
        _err.print("hvo-harness: interrupted (bisect aborted)", markup=False, highlight=False)
        return BISECT_ABORT
    print(bisect_steps.step_line(step))
    print(f"step log: {step.dir}/ (bisect-run.log in {out})")
    return {"good": BISECT_GOOD, "bad": BISECT_BAD, "skip": BISECT_SKIP}[step.outcome]


def _bisect(args: argparse.Namespace) -> int:
    config = _step_config(args)
    _check_out_dir(args.out)
    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    request = bisect_steps.BisectRequest(args.tree.expanduser().resolve(), args.good, args.bad, config,
                                         args.out.expanduser().resolve())
    with _sigterm_as_interrupt():
        try:
            outcome = bisect_steps.bisect(request, progress)
        except KeyboardInterrupt:
            _err.print(f"hvo-harness: interrupted; rerun the same command to resume ({request.dir})",
                       markup=False, highlight=False)
            return 130
    if outcome.status != "found":
        # One line, and nothing blamed.
        _err.print(f"hvo-harness: bisect: {outcome.message}", markup=False, highlight=False)
        print(f"bisect: no first bad commit; steps: {outcome.state}")
        return EXIT_FAIL
    print(f"first bad commit: {outcome.first_bad} {outcome.subject}")
    if outcome.excerpt:
        print("finding:")
        print("\n".join(f"    {line}" for line in outcome.excerpt.splitlines()))
    print(f"reproducer: {outcome.repro or '(none written)'}")
    print(f"steps: {outcome.state}")
    return EXIT_PASS


# --- repro and triage: a failing boot's bundle booted again (harness/repro.py, triage.py) ------

REPRO_COMMANDS = ("repro", "triage")


def _repro_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    repro = commands.add_parser("repro", help="rerun a failing boot's reproducer bundle through the "
                                              "harness; exit 0 when the verdict and findings are the same")
    repro.add_argument("bundle", type=Path, help="a bundle directory, <out>/repro/<boot>/ of a run")
    repro.add_argument("--out", type=Path, help="directory for the rerun (default BUNDLE/rerun-<UTC time>/)")
    repro.add_argument("--timeout", type=float, help="seconds the boot may take (default: the bundle's)")

    triage = commands.add_parser("triage", help="rerun failing boots under variations (vCPUs, TCG, CPU "
                                                "model, nodes, machine, HVO, kernel release), one boot each")
    triage.add_argument("results", type=Path, help="a results JSON (hvo-harness/1); the triage goes into it")
    triage.add_argument("--boot", metavar="NAME",
                        help="the failing boot: its name, e.g. x86_64-hvo-on (default: every failing boot)")
    triage.add_argument("--only", metavar="V1,V2", help="only these variations, e.g. hvo-off,cpu-qemu64")
    triage.add_argument("--out", type=Path,
                        help="logs go to OUT/triage/<boot>/<variation>/ (default: the results "
                             "file's directory)")


def _repro_command(args: argparse.Namespace) -> int:
    from harness import bundle, repro, triage

    progress = lambda text: _err.print(f"[dim]>[/] {text}", highlight=False)  # noqa: E731
    stop = threading.Event()
    with _sigterm_as_interrupt():
        try:
            if args.command == "repro":
                if args.timeout is not None:
                    _check_timeout(args.timeout)
                loaded = bundle.load(args.bundle)
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                out_dir: Path = args.out or loaded.path / f"rerun-{stamp}"
                _check_out_dir(out_dir)
                run = repro.rerun(loaded, out_dir, repro.Overrides(timeout=args.timeout), progress, stop)
                results = pipeline.new_results()
                results.runs = [run]
                results.write(out_dir / "results.json")
                comparison = repro.compare_with_bundle(loaded, run)
                original = loaded.spec["original"]
                print(f"rerun of {loaded.stem} in {out_dir}/")
                print(f"original: {original['verdict'].upper()}: {original['verdict_reason']}")
                print(f"rerun:    {repro.summary_line(run)}")
                for line in comparison.lines():
                    print(line)
                print("reproduced: yes, the same verdict and findings" if comparison.reproduced
                      else "reproduced: NO")
                return EXIT_PASS if comparison.reproduced else EXIT_FAIL
            only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
            if args.out is not None:
                _check_out_dir(args.out)
            reports = triage.triage(args.results, args.boot, only, args.out, progress, stop)
        except KeyboardInterrupt as interrupt:
            stop.set()
            name = "SIGTERM" if isinstance(interrupt, _Terminated) else "SIGINT"
            _err.print(f"hvo-harness: interrupted by {name}; what ran so far is kept", markup=False,
                       highlight=False)
            return 128 + (signal.SIGTERM if name == "SIGTERM" else signal.SIGINT)
    _print_triage(reports, args.results)
    return EXIT_PASS


def _print_triage(reports: list[Any], results: Path) -> None:
    from rich.table import Table

    from harness import triage

    out = Console(width=None if sys.stdout.isatty() else 220)
    for done in reports:
        table = Table(title=f"triage of {done.boot}")
        for column in ("variation", "verdict", "outcome", "findings", "failing scenarios"):
            table.add_column(column, overflow="fold")
        table.add_column("detail", overflow="fold", ratio=1)
        for row in triage.table_lines(done):
            table.add_row(*row)
        out.print(table)
        out.print(f"{done.boot}: {triage.conclude(done.rows)}", highlight=False, markup=False)
        out.print(f"logs: {done.out_dir}/<variation>/; table in {results} (runs[].triage)",
                  highlight=False, markup=False)


if __name__ == "__main__":
    sys.exit(main())
