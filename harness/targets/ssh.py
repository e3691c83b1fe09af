"""The SSH target: run the plan's scenarios on a machine that is already running, over SSH.

`hvo-harness run --target ssh://root@host[:port] [--identity KEY] [--known-hosts FILE]`.

- Connects with paramiko, with strict host-key checking against the user's known_hosts (or
  --known-hosts FILE): an unknown or changed key is one error line, never accepted. Key
  authentication only (--identity KEY, else the agent and ~/.ssh's default keys).
- Needs root on the target (it writes /sys and /proc/sys): one line says so when it is not.
  And idle huge pages: one in use, surplus or reserved is someone's, and is refused first.
- Detects the arch (`uname -m`) and copies the guest helper built for it (harness/guest_helper.py),
  a static busybox for it, scenarios.sh and a small driver into a fresh directory there.
- The running kernel is not rebooted: its boot-time pages are the ones its own /proc/cmdline
  asked for (hugepagesz=/hugepages=); a size it asked for none of is a skip naming the reboot it
  would take. Its hugetlb_free_vmemmap= is the run's HVO setting. The run-time scenarios are
  the same as in QEMU: scenarios.sh runs unchanged, in a mount namespace where /proc/cmdline is
  the target's own command line plus the plan's hvo.* words.
- The kernel log is the run's only: the driver writes a start record to /dev/kmsg and keeps
  only the records from its sequence number on (and the host drops any before it again).
- Every huge page setting (nr_hugepages per size per node) and hugetlb_optimize_vmemmap are
  saved before the run (on the target and in <out>/<stem>.ssh-state.json) and written back
  after it, also after Ctrl-C, SIGTERM or an error, and after a dropped connection once it is
  made again; each is read back, and what does not read as it did is listed in the results
  (Run.target.not_restored), as is a target that could not be reached again.
- A target that still holds the saved state of an earlier run that was not restored (the
  connection never came back, the harness was killed with SIGKILL) is refused: one line names
  `hvo-harness restore --target ...` (restore_target()), which writes the saved settings back,
  reads them back and removes the state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import secrets
import shlex
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko

from harness import artefacts, dmesg, guest_helper, judge, kconfig, kmsg, pipeline, structpage
from harness.errors import HarnessError
from harness.guest import GuestOutcome
from harness.initramfs import GUEST_SCRIPTS
from harness.plan import Plan
from harness.profiles import ARCH_NAMES, ArchProfile, get_profile, size_label
from harness.results import Accel, Finding, KernelInfo, Results, Run, summarize
from harness.targets import TargetFacts, TargetOutput

Progress = Callable[[str], None]
DEFAULT_PORT = 22
CONNECT_TIMEOUT = 20.0
# After a dropped connection: how long to keep trying to reach the target again, to restore.
RECONNECT_SECONDS = 60.0
# How often the run loop looks at the stop event and the clock.
POLL_SECONDS = 0.5
_ADDRESS = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+)"
                      r"(?::(?P<port>\d{1,5}))?/?$")
_SIZE = re.compile(r"^(?P<number>\d+)(?P<unit>[KkMmGg]?)$")
_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# `uname -m` -> the harness's arch profile.
_MACHINES = {"x86_64": "x86_64", "riscv64": "riscv64", "loongarch64": "loongarch64"}
SETTINGS_GLOB = "/sys/devices/system/node/node*/hugepages/hugepages-*/nr_hugepages"
SYSCTL = "/proc/sys/vm/hugetlb_optimize_vmemmap"
# Where a run lays its directory out (the first that takes executables) and keeps its state.
RUN_BASES = ("/tmp", "/var/tmp", "/run", "/dev/shm")
STATE_NAME = "saved.state"


@dataclass(frozen=True)
class SshAddress:
    user: str
    host: str
    port: int

    @property
    def text(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names the host: 'host', or '[host]:port' off port 22."""
        host = self.host.strip("[]")
        return host if self.port == DEFAULT_PORT else f"[{host}]:{self.port}"


def parse_address(text: str, default_user: str = "root") -> SshAddress:
    """'ssh://user@host[:port]' (the user defaults to root, the port to 22)."""
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise HarnessError(f"--target {text!r}: give ssh://user@host or ssh://user@host:port "
                           "(e.g. ssh://root@192.0.2.7:2222)")
    port = int(match["port"]) if match["port"] else DEFAULT_PORT
    if not 0 < port < 65536:
        raise HarnessError(f"--target {text!r}: port {port} is not a TCP port (1-65535)")
    return SshAddress(match["user"] or default_user, match["host"], port)


def _parse_size(text: str) -> int | None:
    match = _SIZE.match(text)
    return int(match["number"]) * _UNIT[match["unit"].lower()] if match else None


def boot_pages_from_cmdline(cmdline: str, nodes: int, default_size: int) -> dict[int, int]:
    """Huge pages per node that the command line asked for at boot, per size (bytes), as the
    kernel reads hugepagesz=, hugepages= and default_hugepagesz= (mm/hugetlb.c): hugepages=
    counts for the hugepagesz= before it, else for the default size. 'N' is spread over the
    nodes (the kernel allocates round-robin: the smaller share is what every node must have),
    'node:N,node:N' is per node (a node not named gets none); the smallest node's count is the
    one asked of every node."""
    default = default_size
    current: int | None = None
    asked: dict[int, dict[int, int]] = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "default_hugepagesz":
            default = _parse_size(value) or default
        elif key == "hugepagesz":
            current = _parse_size(value)
        elif key == "hugepages":
            size = current if current is not None else default
            per_node: dict[int, int] = {}
            if ":" in value:
                for item in value.split(","):
                    node, _, count = item.partition(":")
                    if node.isdigit() and count.isdigit():
                        per_node[int(node)] = int(count)
            elif value.isdigit():
                total = int(value)
                per_node = {node: total // max(nodes, 1) for node in range(nodes)}
            asked[size] = per_node
    return {size: min(per_node.get(node, 0) for node in range(nodes)) for size, per_node in asked.items()}


def hvo_from_cmdline(cmdline: str, sysctl: str | None) -> str:
    """The running kernel's hugetlb_free_vmemmap setting: its command line's (the last word
    wins, as in the kernel), else what the sysctl read before the run (the kernel's default
    then, unless someone wrote it since), else off (no HVO built in)."""
    value = None
    for word in cmdline.split():
        if word.startswith("hugetlb_free_vmemmap="):
            value = word.split("=", 1)[1]
    if value is not None:
        return "on" if value in ("on", "1", "y", "yes", "true") else "off"
    return "on" if sysctl == "1" else "off"


def plan_cmdline(target_cmdline: str, plan: Plan) -> str:
    """What scenarios.sh reads as /proc/cmdline on the target: its own words (without hvo.*,
    the plan's) and the plan's hvo.* words."""
    own = [w for w in target_cmdline.split() if not w.startswith("hvo.")]
    return " ".join([*own, *[w for w in plan.kernel_args() if w.startswith("hvo.")]])


def reboot_skip_reason(label: str, cmdline_has: dict[int, int]) -> str:
    asked = ", ".join(f"{size_label(s)}: {n} per node" for s, n in sorted(cmdline_has.items()) if n) or "none"
    return (f"no boot-time {label} pages on the target's kernel command line (boot-time pages it "
            f"asked for: {asked}): testing them needs a reboot with hugepagesz={label} hugepages=N, "
            "and the SSH target does not reboot")


class _Refused(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname, self.key = hostname, key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """An unknown host key is never accepted (paramiko's AutoAddPolicy would)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _Refused(hostname, key)


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def connect(address: SshAddress, identity: Path | None, known_hosts: Path | None,
            timeout: float = CONNECT_TIMEOUT) -> paramiko.SSHClient:
    """An authenticated connection; every refusal is one HarnessError line naming the fix."""
    known = known_hosts or default_known_hosts()
    if known_hosts is not None and not known_hosts.is_file():
        raise HarnessError(f"--known-hosts {known_hosts}: no such file: give a known_hosts file that "
                           f"has {address.known_hosts_name}'s key")
    if identity is not None and not identity.is_file():
        raise HarnessError(f"--identity {identity}: no such file: give the private key to log in with")
    key = _load_identity(identity) if identity is not None else None
    client = paramiko.SSHClient()
    if known.is_file():
        try:
            client.load_host_keys(str(known))
        except (OSError, paramiko.SSHException) as error:
            raise HarnessError(f"cannot read known_hosts {known}: {error}: fix the file or give "
                               "--known-hosts FILE") from None
    client.set_missing_host_key_policy(_RefuseUnknown())
    scan = (f"ssh-keyscan -p {address.port} {address.host.strip('[]')}" if address.port != DEFAULT_PORT
            else f"ssh-keyscan {address.host.strip('[]')}")
    try:
        client.connect(
            address.host.strip("[]"), port=address.port, username=address.user,
            pkey=key,
            look_for_keys=identity is None, allow_agent=identity is None,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
        )
    except _Refused as refused:
        client.close()
        raise HarnessError(
            f"{address.text}: host key {_fingerprint(refused.key)} is not in {known}: refused; check "
            f"it with the machine's owner, then add it (`{scan} >> {known}`) or give --known-hosts FILE"
        ) from None
    except paramiko.BadHostKeyException as bad:
        client.close()
        raise HarnessError(
            f"{address.text}: host key changed: {known} has {_fingerprint(bad.expected_key)}, the "
            f"server offers {_fingerprint(bad.key)}: refused (a man in the middle, or a reinstalled "
            f"machine: if so, `ssh-keygen -f {known} -R '{address.known_hosts_name}'` and add the new one)"
        ) from None
    except paramiko.AuthenticationException as error:
        client.close()
        which = f"with {identity}" if identity else "with the agent's and ~/.ssh's keys"
        raise HarnessError(f"{address.text}: authentication as {address.user} failed {which} ({error}): "
                           "give --identity KEY whose public key is in the target's "
                           "authorized_keys") from None
    except (OSError, EOFError, paramiko.SSHException) as error:
        client.close()
        reason = str(error) or error.__class__.__name__
        raise HarnessError(f"{address.text}: cannot connect: {reason}: check the address, the port and "
                           "that sshd runs there") from None
    return client


def _load_identity(identity: Path) -> paramiko.PKey:
    """The private key, read here: paramiko's key_filename tries every key type on the file and
    then reports the last type's parse error instead of the failed authentication."""
    try:
        return paramiko.PKey.from_path(str(identity))
    except paramiko.PasswordRequiredException:
        raise HarnessError(f"--identity {identity} is encrypted: load it into ssh-agent and omit "
                           "--identity, or give a key without a passphrase") from None
    except (OSError, ValueError, paramiko.SSHException) as error:
        raise HarnessError(f"--identity {identity}: not a private key paramiko can read ({error}): "
                           "give an OpenSSH or PEM private key") from None


class ConnectionLost(Exception):
    """The SSH connection dropped (the transport died or a channel could not be opened)."""


def read_available(channel: paramiko.Channel, out: bytearray, err: bytearray | None = None) -> bool:
    """Move what CHANNEL holds into OUT and ERR (OUT when None); True once all of the command's
    output is read.

    That is at the channel's EOF, not at its exit status: OpenSSH's sshd sends the exit status
    when the command exits, and what is still in its pipe, or written by a child the command
    left behind, comes after it (RFC 4254 orders nothing between them). Stopping at the exit
    status cut /boot/config short now and then, and the config then seemed to lack HVO."""
    # EOF first: paramiko queues a channel's messages in order, so all data sent before the
    # EOF is in the buffers by the time it is seen.
    ended = bool(channel.eof_received or channel.closed)
    while channel.recv_ready():
        out += channel.recv(65536)
    while channel.recv_stderr_ready():
        (out if err is None else err).extend(channel.recv_stderr(65536))
    return ended


class Remote:
    """Commands and files over one SSH connection (exec channels only: no SFTP needed)."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def open(self, command: str) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost("the SSH connection is down")
        try:
            channel = transport.open_session(timeout=CONNECT_TIMEOUT)
            channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise ConnectionLost(str(error) or error.__class__.__name__) from None
        return channel

    def run(self, command: str, data: bytes | None = None, timeout: float = 120.0) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of COMMAND run by the target's shell."""
        channel = self.open(command)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            if data is not None:
                channel.sendall(data)
            channel.shutdown_write()
            # The output is whole at the channel's EOF, the exit status is there once it came.
            while not (read_available(channel, out, err) and channel.exit_status_ready()):
                if not self.alive():
                    raise ConnectionLost(f"the connection dropped during `{command[:60]}`")
                if time.monotonic() > deadline:
                    raise ConnectionLost(f"`{command[:60]}` did not end within {timeout:.0f} s")
                time.sleep(0.02)
            status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise ConnectionLost(str(error) or error.__class__.__name__) from None
        finally:
            channel.close()
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def check(self, command: str, what: str, data: bytes | None = None) -> str:
        status, out, err = self.run(command, data)
        if status != 0:
            raise HarnessError(f"on the target, {what} failed (exit {status}): "
                               f"{(err.strip() or out.strip() or 'no output').splitlines()[-1][:200]}")
        return out

    def put(self, path: str, data: bytes, mode: int = 0o755) -> None:
        quoted = shlex.quote(path)
        self.check(f"cat > {quoted} && chmod {mode:o} {quoted}", f"writing {path}", data)


# The driver on the target: scenarios.sh as it runs in the harness's guest, with the target's
# kernel log from the start record on. Its process group is the run's: killing it ends all.
DRIVER = r"""
D=$1
TOKEN=$2
PATH="$D/bin:$PATH"
export PATH
read -r stat < /proc/$$/stat
set -- $stat
echo "$5" > "$D/pgid"
rm -f "$D/status" "$D/results.ktap" "$D/kmsg.log"
hvoh kmsg > "$D/kmsg.raw" 2>&1 &
kmsg_pid=$!
# The start record: the run's kernel log is the records from its sequence number on.
echo "hvo-harness: ssh run $TOKEN start" > /dev/kmsg
echo "hvo-ssh: scenarios start"
# scenarios.sh reads its plan from /proc/cmdline: in a mount namespace of its own that is the
# target's command line plus the plan's hvo.* words; the target's own /proc is untouched.
unshare -m sh -c 'mount --bind "$1/plan.cmdline" /proc/cmdline && exec sh "$1/scenarios.sh"' sh "$D" \
	> "$D/results.ktap" 2>&1
echo "hvo-ssh: scenarios rc=$?"
echo "hvo-harness: ssh run $TOKEN end" > /dev/kmsg
i=0
while [ $i -lt 15 ] && ! grep -q "ssh run $TOKEN end" "$D/kmsg.raw"; do
	sleep 1
	i=$((i + 1))
done
kill $kmsg_pid 2>/dev/null
# The whole ring: the host takes the run's records from the start record on, and judges the
# boot-time pages by what the kernel said before it (harness/targets/ssh.py before_run()).
mv "$D/kmsg.raw" "$D/kmsg.log"
echo done > "$D/status"
echo "hvo-ssh: done"
"""

# Every setting the scenarios change, one 'path value' line each.
SAVE = (f"for f in {SETTINGS_GLOB} {SYSCTL}; do [ -f \"$f\" ] || continue; "
        "read -r v < \"$f\"; echo \"$f $v\"; done")


def parse_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        path, _, value = line.strip().partition(" ")
        if path.startswith(("/sys/devices/system/node/", SYSCTL)) and value.strip():
            settings[path] = value.strip()
    return settings


def restore_command(saved: dict[str, str]) -> str:
    """Write every saved setting back (the sysctl first, so that pages allocated again get the
    vmemmap treatment they had), then print each as it reads now."""
    order = sorted(saved, key=lambda path: (path != SYSCTL, path))
    writes = [f"echo {shlex.quote(saved[p])} > {shlex.quote(p)} 2>/dev/null" for p in order]
    # (A sysctl file gives its value without a newline: read's status is no test.)
    reads = [f"v=; read -r v < {shlex.quote(p)}; echo {shlex.quote(p)} \"$v\"" for p in order]
    return "; ".join([*writes, *reads, "true"])


def compare_settings(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    return [f"{path}: was {value}, reads {now.get(path, 'nothing')}"
            for path, value in saved.items() if now.get(path) != value]


# How long a run's processes get to leave once killed. A process killed while it writes
# nr_hugepages leaves only when that write returns (a 1G page under TCG takes seconds), and a
# page it adds on its way out would be read back as a setting the restore left changed.
END_WAIT_SECONDS = 120
# A readback that differs is written again this often, a second apart: pages a dying process
# held are freed as it leaves, not when the restore writes.
RESTORE_TRIES = 5


# Shell: is any process of group $1 alive? A zombie is not (`kill -0` counts it): it holds no
# memory, and one whose parent does not reap it soon must not hold up the restore. (/proc/PID/stat
# after the last ') ' of the command name: state, parent, process group.)
GROUP_LIVES = ('hvo_group_lives() { for s in /proc/[0-9]*/stat; do read -r l < "$s" 2>/dev/null '
               '|| continue; set -- "$1" ${l##*\\) }; [ "$4" = "$1" ] && [ "$2" != Z ] && return 0; '
               'done; return 1; }')


def end_group_command(group: str) -> str:
    """Shell that ends process group GROUP (a shell word: "$pg" or a number) and waits until
    none of it is left: TERM (and CONT, for a stopped one: TERM waits for it), KILL what is left
    after 5 s. Prints 'ended GROUP' or 'alive GROUP'."""
    wait = ('i=0; while hvo_group_lives {g} && [ $i -lt {n} ]; do sleep 1; i=$((i + 1)); done')
    return "; ".join([
        GROUP_LIVES, f"kill -TERM -{group} 2>/dev/null", f"kill -CONT -{group} 2>/dev/null",
        wait.format(g=group, n=5), f"kill -KILL -{group} 2>/dev/null",
        wait.format(g=group, n=END_WAIT_SECONDS),
        f"if hvo_group_lives {group}; then echo alive {group}; else echo ended {group}; fi"])


def end_group(remote: Remote, group: str) -> str | None:
    """End process group GROUP (a shell word) on the target and wait until it has left
    (end_group_command): None when it has, else why the restore cannot count on it."""
    said = remote.run(end_group_command(group), timeout=END_WAIT_SECONDS + 60.0)[1].strip()
    if said.startswith("alive"):
        return (f"the run's process group {said.split()[-1]} was still there {END_WAIT_SECONDS} s "
                "after SIGKILL")
    return None


def write_back(remote: Remote, saved: dict[str, str]) -> list[str]:
    """Write SAVED back and read it: the settings that differ. Written again while any
    differ, RESTORE_TRIES times in all."""
    wrong: list[str] = []
    for attempt in range(RESTORE_TRIES):
        if attempt:
            time.sleep(1)
        wrong = compare_settings(saved, parse_settings(remote.run(restore_command(saved), timeout=600.0)[1]))
        if not wrong:
            break
    return wrong


def state_text(saved: dict[str, str], boot_id: str, token: str, saved_at: float) -> str:
    """<run directory>/saved.state: the settings as 'path value' lines (parse_settings reads
    them), with the boot they belong to (a reboot has put them back itself), the run's token
    and when they were saved."""
    head = f"boot_id {boot_id}\ntoken {token}\nsaved_at {saved_at:.0f}\n"
    return head + "".join(f"{path} {value}\n" for path, value in saved.items())


# (`kill -SIG -PGID`, never `kill -SIG -- -PGID`: busybox sh's and dash's kill builtins take
# no `--`, and fail on it without signalling anything.)
# Every run's saved state on the target, one '== <path>' block each (its saved.state, then
# 'running PGID' while the run's process group lives: its driver outlived the harness).
LIST_SAVED = ("for f in " + " ".join(f"{base}/hvo-harness.*/{STATE_NAME}" for base in RUN_BASES)
              + "; do [ -f \"$f\" ] || continue; echo \"== $f\"; cat \"$f\"; echo; "
              f"pg=$(cat \"${{f%/{STATE_NAME}}}/pgid\" 2>/dev/null); "
              "[ -n \"$pg\" ] && kill -0 \"-$pg\" 2>/dev/null && echo \"running $pg\"; done; true")


@dataclass(frozen=True)
class SavedState:
    """One run's saved state on the target (<directory>/saved.state)."""

    path: str
    saved: dict[str, str]
    boot_id: str | None  # None: saved by a harness that did not record it
    saved_at: float | None
    running: str | None  # the run's process group, while it lives

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0]

    def describe(self) -> str:
        when = (f", saved {datetime.fromtimestamp(self.saved_at, UTC):%Y-%m-%d %H:%M} UTC"
                if self.saved_at is not None else "")
        running = f", its run still running (process group {self.running})" if self.running else ""
        return f"{self.path}: {len(self.saved)} settings{when}{running}"


def parse_saved_states(text: str) -> list[SavedState]:
    """LIST_SAVED's output -> the saved states it lists."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("== "):
            blocks.append((line[3:].strip(), []))
        elif blocks:
            blocks[-1][1].append(line)
    states = []
    for path, lines in blocks:
        words = dict(line.strip().partition(" ")[::2] for line in lines if line.strip())
        saved_at = words.get("saved_at", "")
        states.append(SavedState(path, parse_settings("\n".join(lines)), words.get("boot_id") or None,
                                 float(saved_at) if saved_at.isdigit() else None,
                                 words.get("running") or None))
    return states


def merge_saved(states: list[SavedState]) -> dict[str, str]:
    """The settings to write back: each as the oldest state has it. A run that started over
    an earlier one's leftovers saved those; the earliest saved what the target had first."""
    merged: dict[str, str] = {}
    order = sorted(states, key=lambda s: s.saved_at if s.saved_at is not None else float("inf"),
                   reverse=True)
    for state in order:  # newest first: older ones write over it
        merged.update(state.saved)
    return merged


def saved_states(remote: Remote) -> tuple[list[SavedState], list[SavedState]]:
    """The saved states on the target: (this boot's, whose settings may be left changed; an
    earlier boot's, which the reboot put back: their directories are removed here)."""
    boot_id = remote.run("cat /proc/sys/kernel/random/boot_id")[1].strip()
    states = parse_saved_states(remote.check(LIST_SAVED, "looking for an earlier run's saved state"))
    stale = [state for state in states if state.boot_id is not None and state.boot_id != boot_id]
    for state in stale:
        remote.run(f"rm -rf {shlex.quote(state.directory)}")
    return [state for state in states if state not in stale], stale


def restore_hint(address: SshAddress, identity: Path | None, known_hosts: Path | None) -> str:
    """The command that puts an earlier run's saved settings back on ADDRESS."""
    words = ["hvo-harness", "restore", "--target", address.text]
    if identity is not None:
        words += ["--identity", shlex.quote(str(identity))]
    if known_hosts is not None:
        words += ["--known-hosts", shlex.quote(str(known_hosts))]
    return " ".join(words)


def unrestored_line(address: SshAddress, states: list[SavedState], identity: Path | None,
                    known_hosts: Path | None) -> str:
    where = "; ".join(state.describe() for state in states)
    return (f"{address.text} still has the settings of an earlier run saved ({where}): run "
            f"`{restore_hint(address, identity, known_hosts)}` first")


@dataclass
class _Session:
    """What one run keeps on the target and on the host."""

    directory: str
    token: str
    saved: dict[str, str]
    state_file: Path
    boot_id: str


class SshTarget:
    """A running machine reached over SSH (harness.targets.Target)."""

    name = "ssh"

    def __init__(self, address: SshAddress, identity: Path | None = None, known_hosts: Path | None = None,
                 progress: Progress | None = None, timeout: float = 600.0,
                 reconnect_seconds: float = RECONNECT_SECONDS) -> None:
        self.address = address
        self.identity = identity
        self.known_hosts = known_hosts
        self.progress = progress or (lambda text: None)
        self.timeout = timeout
        self.reconnect_seconds = reconnect_seconds
        self.remote: Remote | None = None
        self.directory: str | None = None
        self.host_key: str | None = None
        # Set when Ctrl-C or SIGTERM cut the run: the caller saves the results, then raises it.
        self.interrupt: BaseException | None = None
        # What the kernel said before the run started (its boot): set by run().
        self.before_run: BeforeRun | None = None
        # Tests: called with the remote driver's start, to do things to the connection.
        self.on_started: Callable[[SshTarget], None] | None = None
        # The boot-time pages per size the target's command line asked for: set by prepare().
        self.boot_pages: dict[int, int] = {}

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> Remote:
        client = connect(self.address, self.identity, self.known_hosts)
        transport = client.get_transport()
        if transport is not None:
            # Keepalives: a dead peer is noticed within seconds, not at the TCP timeout.
            transport.set_keepalive(5)
            key = transport.get_remote_server_key()
            self.host_key = _fingerprint(key)
        self.remote = Remote(client)
        return self.remote

    def close(self) -> None:
        if self.remote is not None:
            self.remote.client.close()
            self.remote = None

    def _remote(self) -> Remote:
        if self.remote is None or not self.remote.alive():
            return self.connect()
        return self.remote

    # -- prepare --------------------------------------------------------------------------------

    def prepare(self) -> TargetFacts:
        remote = self._remote()
        check_root(remote, self.address)
        self._refuse_unrestored(remote)
        check_idle(remote, self.address)
        machine = remote.check("uname -m", "`uname -m`").strip()
        arch = _MACHINES.get(machine)
        if arch is None:
            raise HarnessError(f"{self.address.text} is {machine}: the harness has profiles for "
                               f"{', '.join(ARCH_NAMES)} only")
        profile = get_profile(arch)
        self.progress(f"{self.address.text}: {machine}, copying the guest helper and scenarios.sh")
        self.directory = self._lay_out(remote, profile)
        facts = self._facts(remote, profile, self.directory)
        return facts

    def _refuse_unrestored(self, remote: Remote) -> None:
        """An earlier run's saved state still on the target: its settings may be left changed,
        and this run would save those as the target's own. Refused until `restore`; a state of
        an earlier boot is only a leftover (the reboot put the settings back): removed."""
        left, stale = saved_states(remote)
        for state in stale:
            self.progress(f"{self.address.text}: removed {state.directory}, saved by a run in an earlier "
                          "boot (the reboot put its settings back)")
        if left:
            raise HarnessError(unrestored_line(self.address, left, self.identity, self.known_hosts))

    def finish(self, run: Run) -> Run:
        """Target.finish: the judged run as a running machine has it (_run_record): boot-time
        pages are the command line's and the kernel's log since boot; a dropped connection
        to a kernel that lived on is the network's error, not the kernel's failure."""
        run = _run_record(run, self.boot_pages, self.before_run)
        rebooted = bool((run.target or {}).get("rebooted"))
        if run.ended == "connection-lost" and not rebooted and run.verdict == "fail" and not run.findings:
            run.verdict = "error"
        return run

    def _lay_out(self, remote: Remote, profile: ArchProfile) -> str:
        """A fresh directory on the target with busybox, hvoh, scenarios.sh and the driver;
        in the first of /tmp, /var/tmp, /run, /dev/shm where they can be executed (noexec)."""
        busybox = artefacts.ensure_busybox(profile, progress=self.progress).path.read_bytes()
        source = artefacts.ensure_linux_source(progress=self.progress)
        helper = guest_helper.build(source, profile).read_bytes()
        scenarios = (GUEST_SCRIPTS / "scenarios.sh").read_bytes()
        tried = []
        for base in RUN_BASES:
            status, out, err = remote.run(f"mktemp -d {base}/hvo-harness.XXXXXXXX")
            if status != 0:
                tried.append(f"{base}: {err.strip() or 'mktemp failed'}")
                continue
            directory = out.strip()
            remote.check(f"mkdir -p {directory}/bin", f"mkdir {directory}/bin")
            remote.put(f"{directory}/bin/busybox", busybox)
            status, _, err = remote.run(f"{directory}/bin/busybox true")
            if status != 0:
                tried.append(f"{base}: cannot execute there ({err.strip()[:80]})")
                remote.run(f"rm -rf {shlex.quote(directory)}")
                continue
            remote.check(f"{directory}/bin/busybox --install -s {directory}/bin", "busybox --install")
            remote.put(f"{directory}/bin/hvoh", helper)
            remote.put(f"{directory}/scenarios.sh", scenarios)
            remote.put(f"{directory}/driver.sh", DRIVER.encode())
            return directory
        raise HarnessError(f"{self.address.text}: no directory to run the scenarios from "
                           f"({'; '.join(tried)}): make /tmp writable and executable for root")

    def _facts(self, remote: Remote, profile: ArchProfile, directory: str) -> TargetFacts:
        bb = f"{directory}/bin/busybox"
        release = remote.check("uname -r", "`uname -r`").strip()
        version = remote.check("uname -v", "`uname -v`").strip()
        cmdline = remote.check("cat /proc/cmdline", "reading /proc/cmdline").strip()
        page_size = int(remote.check(f"{directory}/bin/hvoh pagesize", "hvoh pagesize").strip())
        online = remote.check("cat /sys/devices/system/node/online 2>/dev/null || echo 0",
                              "reading the NUMA nodes").strip()
        nodes = _node_list(online)
        mib = []
        for node in nodes:
            _, text, _ = remote.run(f"cat /sys/devices/system/node/node{node}/meminfo 2>/dev/null")
            total = re.search(r"MemTotal:\s+(\d+) kB", text)
            mib.append(int(total.group(1)) // 1024 if total else 0)
        profile = dataclasses.replace(profile, node_mem_mib=tuple(mib) or (0,))
        # The kernel's config, where the distribution keeps it, for CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP.
        config_text, config_from = "", None
        for path, command in ((f"/boot/config-{release}", f"cat /boot/config-{release}"),
                              ("/proc/config.gz", f"{bb} zcat /proc/config.gz")):
            status, text, _ = remote.run(f"{command} 2>/dev/null")
            if status == 0 and "CONFIG_" in text:
                config_text, config_from = text, path
                break
        config = _read_config(config_text) if config_text else None
        hvo_built = None if config is None else config.get("CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP") == "y"
        struct_page = self._struct_page(remote)
        status, image_sum, _ = remote.run(f"{bb} sha256sum /boot/vmlinuz-{release} 2>/dev/null")
        sha = image_sum.split()[0] if status == 0 and image_sum.strip() else None
        _, sysctl, _ = remote.run(f"cat {SYSCTL} 2>/dev/null")
        hvo = hvo_from_cmdline(cmdline, sysctl.strip() or None)
        info = KernelInfo(
            path=f"{self.address.text} (running kernel)", release=release, sha256=sha,
            source={"type": "running", "target": self.address.text, "version": version,
                    "config": config_from, "image": f"/boot/vmlinuz-{release}" if sha else None},
            struct_page=struct_page.to_json(),
        )
        facts = judge.KernelFacts(kconfig.page_size(config or {}) or page_size, struct_page, hvo_built)
        accel = Accel("none", f"not booted by the harness: the running kernel of {self.address.text}")
        self.boot_pages = boot_pages_from_cmdline(cmdline, len(profile.node_mem_mib),
                                                  _default_huge_size(profile, facts.page_size))
        return TargetFacts(profile, facts, info, cmdline, hvo, accel, boot_pages=self.boot_pages)

    def _struct_page(self, remote: Remote) -> structpage.StructPage:
        """sizeof(struct page) from the running kernel's own BTF (/sys/kernel/btf/vmlinux)."""
        status, _, _ = remote.run("test -r /sys/kernel/btf/vmlinux")
        if status != 0:
            return structpage.StructPage(None, why="the target has no /sys/kernel/btf/vmlinux "
                                         f"(CONFIG_DEBUG_INFO_BTF); {structpage.WHAT_WOULD_GIVE_IT}")
        channel = remote.open("cat /sys/kernel/btf/vmlinux")
        data = bytearray()
        try:
            channel.shutdown_write()
            while True:
                chunk = channel.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        finally:
            channel.close()
        with tempfile.NamedTemporaryFile(prefix="hvo-ssh-btf-") as raw:
            raw.write(bytes(data))
            raw.flush()
            try:
                size, members = structpage.parse_pahole(structpage.run_pahole(Path(raw.name), "btf"))
            except (HarnessError, ValueError) as error:
                return structpage.StructPage(None, why=f"the target's /sys/kernel/btf/vmlinux: {error}")
        return structpage.StructPage(size, "BTF of the target's running kernel (/sys/kernel/btf/vmlinux)",
                                     members)

    # -- run --------------------------------------------------------------------------------------

    def stem(self, facts: TargetFacts) -> str:
        host = re.sub(r"[^A-Za-z0-9_.+-]", "_", self.address.host.strip("[]"))
        return f"{facts.profile.name}-ssh-{host}-hvo-{facts.hvo}"

    def run(self, plan: Plan, facts: TargetFacts, out_dir: Path,
            stop: threading.Event | None = None) -> TargetOutput:
        assert self.directory is not None, "prepare() first"
        self.progress(f"{self.address.text}: running the scenarios (hugetlb_free_vmemmap={facts.hvo}, "
                      f"{len(facts.profile.node_mem_mib)} nodes, {facts.facts.page_size // 1024}K pages)")
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.stem(facts)
        console_log, results_log = out_dir / f"{stem}.console.log", out_dir / f"{stem}.results.ktap"
        kernel_log_path = out_dir / f"{stem}.kernel.log"
        for stale in (console_log, results_log, kernel_log_path):
            stale.unlink(missing_ok=True)
        remote = self._remote()
        directory = self.directory
        token = secrets.token_hex(8)
        saved = parse_settings(remote.check(SAVE, "reading the huge page settings"))
        _, boot_id, _ = remote.run("cat /proc/sys/kernel/random/boot_id")
        session = _Session(directory, token, saved, out_dir / f"{stem}.ssh-state.json", boot_id.strip())
        # Saved before anything changes, on both sides: a run cut off by the network can be
        # put right later from either copy.
        state = {"target": self.address.text, "directory": directory, "token": token,
                 "boot_id": session.boot_id, "saved": saved}
        session.state_file.write_text(json.dumps(state, indent=2) + "\n")
        state_on_target = state_text(saved, session.boot_id, token, time.time())
        remote.put(f"{directory}/{STATE_NAME}", state_on_target.encode(), 0o644)
        remote.put(f"{directory}/plan.cmdline", (plan_cmdline(facts.cmdline, plan) + "\n").encode(), 0o644)
        start = time.monotonic()
        record: dict[str, Any] = {"address": self.address.text, "host_key": self.host_key,
                                  "directory": directory, "state_file": str(session.state_file),
                                  # Every setting the scenarios may change, as it was before.
                                  "saved": dict(sorted(saved.items()))}
        ended, reason, status = "done", "the scenarios ran to their end on the target", None
        transcript = bytearray()
        try:
            try:
                status, transcript = self._drive(remote, session, stop, start, transcript)
                if status == -1:
                    ended, reason = "exited", "the driver on the target was killed by a signal"
                elif status != 0:
                    ended, reason = "exited", f"the driver on the target exited with status {status}"
            except ConnectionLost as lost:
                ended, reason = "connection-lost", f"the SSH connection dropped mid-run ({lost})"
            except _Stopped:
                ended, reason = "interrupted", "interrupted by the user"
            except _TimedOut:
                ended, reason = "timeout", f"no end after {self.timeout:.0f} s: ended by the harness"
            except KeyboardInterrupt as interrupt:
                self.interrupt = interrupt
                ended, reason = "interrupted", "interrupted by the user"
        finally:
            # Also on an error: what the run changed goes back before anything else happens.
            self._finish(session, record, ended, stop)
        console_log.write_bytes(bytes(transcript))
        report_text, kmsg_text = "", ""
        if ended != "connection-lost" or record.get("reconnected"):
            with contextlib.suppress(ConnectionLost):
                remote = self._remote()
                report_text = remote.run(f"cat {directory}/results.ktap 2>/dev/null")[1]
                kmsg_text = remote.run(f"cat {directory}/kmsg.log 2>/dev/null")[1]
        if record.get("rebooted"):
            report_text, kmsg_text = "", ""
        if ended == "connection-lost" and record.get("reconnected") and not record.get("rebooted"):
            reason += "; the target kept running (same boot_id) and was reached again"
        elif record.get("rebooted"):
            reason += "; the target rebooted meanwhile (its boot_id changed): the kernel died or was reset"
        results_log.write_text(report_text)
        log = run_kernel_log(kmsg_text, token)
        self.before_run = before_run(kmsg_text, token) if kmsg_text else None
        kernel_log_path.write_text(log.text)
        with contextlib.suppress(ConnectionLost):
            if self.remote is not None and self.remote.alive() and record.get("restored"):
                self.remote.run(f"rm -rf {shlex.quote(directory)}")
                self.directory = None
        if self.directory is not None:
            # Kept on the target only while something there is not restored: say where.
            record["left_on_target"] = self.directory
        outcome = GuestOutcome(ended, reason, None, time.monotonic() - start, status)
        return TargetOutput(report_text, log, outcome, f"ssh: {directory}/results.ktap",
                            files={"console_log": str(console_log), "results_log": str(results_log),
                                   "kernel_log": str(kernel_log_path)},
                            record=record)

    def reproducer(self, run: Run, out_dir: Path) -> Path | None:
        """None: a running machine is not booted again from a bundle; what reaches it and what
        the run changed there are in Run.target (and <stem>.ssh-state.json while not restored)."""
        return None

    def _drive(self, remote: Remote, session: _Session, stop: threading.Event | None, start: float,
               transcript: bytearray) -> tuple[int, bytearray]:
        channel = remote.open(f"{session.directory}/bin/busybox sh {session.directory}/driver.sh "
                              f"{session.directory} {session.token} 2>&1")
        if self.on_started is not None:
            self.on_started(self)
        try:
            channel.shutdown_write()
            while True:
                if stop is not None and stop.is_set():
                    raise _Stopped()
                if time.monotonic() - start > self.timeout:
                    raise _TimedOut()
                if read_available(channel, transcript) and channel.exit_status_ready():
                    status = channel.recv_exit_status()
                    # paramiko gives -1 for a channel that ended without an exit status: a
                    # transport that closed under it, or a driver killed by a signal there.
                    if status == -1 and not remote.alive():
                        raise ConnectionLost("the transport closed")
                    return status, transcript
                # (A channel closed under the driver is ended and has its status, -1: above.)
                if not remote.alive():
                    raise ConnectionLost("the transport closed")
                time.sleep(POLL_SECONDS if not channel.recv_ready() else 0)
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise ConnectionLost(str(error) or error.__class__.__name__) from None
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def _finish(self, session: _Session, record: dict[str, Any], ended: str,
                stop: threading.Event | None) -> None:
        """End the driver if it still runs, restore every saved setting and read each back.

        A second Ctrl-C while this runs is held until it is done (as guest._end does for QEMU):
        the target must not be left changed because the user pressed twice."""
        interrupted: BaseException | None = None
        while True:
            try:
                self._restore(session, record, ended)
                break
            except KeyboardInterrupt as again:
                interrupted = again
        if interrupted is not None and self.interrupt is None:
            self.interrupt = interrupted

    def _restore(self, session: _Session, record: dict[str, Any], ended: str) -> None:
        remote = self.remote if self.remote is not None and self.remote.alive() else None
        if remote is None:
            remote = self._reconnect()
            record["reconnected"] = remote is not None
        if remote is None:
            record["restored"] = False
            record["not_restored"] = [
                f"{path}: was {value}; the target could not be reached again within "
                f"{self.reconnect_seconds:.0f} s (saved in {session.state_file})"
                for path, value in session.saved.items()]
            return
        try:
            _, boot_id, _ = remote.run("cat /proc/sys/kernel/random/boot_id")
            if boot_id.strip() != session.boot_id:
                # A new boot has the command line's settings again; nothing of ours is left.
                record["rebooted"] = True
            alive = None
            if ended != "done":
                # The driver and its children are one process group: all of it ends, and has
                # left, before anything is written back (it would change it again).
                group = remote.run(f"cat {session.directory}/pgid 2>/dev/null")[1].strip()
                alive = end_group(remote, shlex.quote(group)) if group else None
            wrong = write_back(remote, session.saved)
        except ConnectionLost as lost:
            record["restored"] = False
            record["not_restored"] = [f"{path}: was {value}; the connection dropped while restoring "
                                      f"({lost}); saved in {session.state_file}"
                                      for path, value in session.saved.items()]
            return
        if alive:
            wrong = [*wrong, alive]
        record["restored"] = not wrong
        record["not_restored"] = wrong
        if wrong:
            self.progress(f"{self.address.text}: not restored: {'; '.join(wrong[:3])}")
        else:
            session.state_file.unlink(missing_ok=True)

    def _reconnect(self) -> Remote | None:
        deadline = time.monotonic() + self.reconnect_seconds
        self.close()
        while True:
            try:
                return self.connect()
            except HarnessError as error:
                if time.monotonic() >= deadline:
                    self.progress(f"{self.address.text}: could not reconnect: {error}")
                    return None
            time.sleep(2)


class _Stopped(Exception):
    pass


class _TimedOut(Exception):
    pass


def _node_list(online: str) -> list[int]:
    """'0-1,3' -> [0, 1, 3]."""
    nodes: list[int] = []
    for part in online.split(","):
        low, _, high = part.strip().partition("-")
        if low.isdigit():
            nodes += list(range(int(low), int(high) + 1)) if high.isdigit() else [int(low)]
    return nodes or [0]


def _read_config(text: str) -> dict[str, str]:
    with tempfile.NamedTemporaryFile("w", prefix="hvo-ssh-config-", suffix=".config") as stream:
        stream.write(text)
        stream.flush()
        return kconfig.read(Path(stream.name))


def run_kernel_log(text: str, token: str) -> kmsg.KernelLog:
    """The run's kernel log: the driver's records from its start record on, by sequence number."""
    stream = kmsg.parse_stream(text, framed=False)
    start_text = f"hvo-harness: ssh run {token} start"
    end_text = f"hvo-harness: ssh run {token} end"
    first = next((r.seq for r in stream.records if r.text == start_text), None)
    if first is None:
        return kmsg.KernelLog("", "kmsg", 0, [], stream.garbled, 0, False)
    # The boot's HugeTLB lines (what the kernel registered and claims), nothing else of before.
    boot = [r for r in stream.records if r.seq < first and r.text.startswith("HugeTLB: ")]
    records = [r for r in stream.records if r.seq >= first]
    lost = [(a.seq + 1, b.seq - 1) for a, b in itertools.pairwise(records) if b.seq != a.seq + 1]
    lines = [line for record in [*boot, *records] for line in record.lines()]
    return kmsg.KernelLog("\n".join(lines) + "\n", "kmsg", len(records), lost,
                          stream.garbled, 0, any(r.text == end_text for r in records))


@dataclass(frozen=True)
class BeforeRun:
    """What the kernel said between its boot and the run's start record: where its boot-time
    pages were allocated (and HVO optimized them), which the run's own log does not hold."""

    findings: list[Finding]
    # The ring still holds the boot's first record (sequence 0): nothing of the boot is lost.
    from_boot: bool
    first_seq: int | None
    # Tokens of the harness's earlier runs in this boot: each released the boot-time pages,
    # and its restore allocated new ones at run time.
    earlier_runs: tuple[str, ...] = ()
    # size label -> pages the kernel pre-allocated at boot (its "HugeTLB: registered" line).
    preallocated: dict[str, int] = field(default_factory=dict)


def before_run(text: str, token: str) -> BeforeRun:
    """The records before the run's start record, parsed for the kernel's reports."""
    stream = kmsg.parse_stream(text, framed=False)
    start_text = f"hvo-harness: ssh run {token} start"
    first = next((r.seq for r in stream.records if r.text == start_text), None)
    if first is None:
        return BeforeRun([], False, None)
    before = [r for r in stream.records if r.seq < first]
    first_seq = before[0].seq if before else None
    lines = [line for record in before for line in record.lines()]
    parsed = dmesg.parse("\n".join(lines) + "\n")
    earlier = tuple(m["token"] for r in before if (m := _RUN_START.fullmatch(r.text)))
    return BeforeRun(parsed.findings, first_seq == 0, first_seq, earlier, dict(parsed.hugetlb.registered))


_RUN_START = re.compile(r"hvo-harness: ssh run (?P<token>[0-9a-f]+) start")


def _run_record(run: Run, target_cmdline_pages: dict[int, int], before: BeforeRun | None = None) -> Run:
    """Boot-time scenarios of sizes the target's command line asked no pages of: a skip with
    the reboot they would need (never a pass: nothing was tested), unless they failed.

    The pages it did ask for were allocated (and optimized) at boot, long before the run: they
    pass only if the kernel said nothing between its boot and the run. A report there fails
    them and the run, as a report during a QEMU guest's boot does; a ring buffer that no longer
    reaches back to the boot leaves them untested (skip), never passed."""
    for scenario in run.scenarios:
        if scenario.mode != "boot" or scenario.requested != 0 or scenario.status == "fail":
            continue
        guest = scenario.checks.get("guest", {}) if isinstance(scenario.checks, dict) else {}
        if guest.get("sysfs") == "absent":
            continue  # a size the kernel lacks: the judge's reason stands
        scenario.status = "skip"
        scenario.reason = reboot_skip_reason(scenario.size, target_cmdline_pages)
    if before is None:
        return run
    passed = [s for s in run.scenarios if s.mode == "boot" and s.status == "pass"]
    if before.findings:
        summary = summarize(before.findings)
        for scenario in passed:
            scenario.status = "fail"
            scenario.reason = (f"the kernel complained between its boot and the run, where these pages "
                               f"were allocated: {summary}")
        run.findings = [*before.findings, *run.findings]
        if run.verdict != "error":
            run.verdict = "fail"
            run.verdict_reason = f"kernel findings since boot: {summary}; {run.verdict_reason}"
    elif not before.from_boot:
        where = (f"its oldest record is {before.first_seq}" if before.first_seq is not None
                 else "it holds no record before the run")
        for scenario in passed:
            scenario.status = "skip"
            scenario.reason = (f"the kernel's log ring no longer reaches back to its boot ({where}): "
                               "whether it complained while allocating these boot-time pages cannot "
                               "be read; reboot the target to test them")
    # Pages tested as the boot's must be the boot's: run-time pages in their place would pass
    # for them. An earlier run in this boot released them (its restore allocated new ones), and
    # a count other than the boot's pre-allocation means nr_hugepages was written since.
    for size in {s.size for s in run.scenarios if s.mode == "boot"}:
        boot = [s for s in run.scenarios if s.mode == "boot" and s.size == size]
        booted = before.preallocated.get(size)
        now = sum(s.allocated for s in boot)
        changed = booted is not None and now != booted
        for scenario in boot:
            if scenario.status == "pass" and before.earlier_runs:
                scenario.status = "skip"
                scenario.reason = (f"an earlier run in this boot (ssh run {before.earlier_runs[-1]}) "
                                   "released the boot-time pages and its restore allocated new ones at "
                                   "run time: reboot the target to test boot-time pages")
            elif scenario.status == "pass" and changed:
                scenario.status, scenario.reason = "skip", _not_the_boots(size, now, booted)
            elif (scenario.status == "fail" and changed and scenario.allocated < scenario.requested
                  and booted == sum(s.requested for s in boot)):
                # Fewer than asked where the boot pre-allocated all it was asked: freed since,
                # the machine's history. Only that failure; a boot that allocated fewer fails.
                scenario.status, scenario.reason = "skip", _not_the_boots(size, now, booted)
    run.verdict, run.verdict_reason = judge.rejudged(run.verdict, run.verdict_reason, run.scenarios,
                                                     run.findings)
    return run


def _not_the_boots(size: str, now: int, booted: int | None) -> str:
    return (f"the target has {now} {size} pages, its boot pre-allocated {booted}: nr_hugepages was "
            "written since boot, so these are not the boot's pages; reboot the target to test them")


# Shell: each node's pages per size ('DIR nr free surplus'), then each size's reservations
# ('DIR resv N'), in the target's own shell before anything is copied there.
HUGE_PAGE_USE = ('for d in /sys/devices/system/node/node*/hugepages/hugepages-*; do [ -d "$d" ] || continue; '
                 'read -r n < "$d/nr_hugepages"; read -r f < "$d/free_hugepages"; '
                 'read -r s < "$d/surplus_hugepages"; echo "$d $n $f $s"; done; '
                 'for d in /sys/kernel/mm/hugepages/hugepages-*; do [ -d "$d" ] || continue; '
                 'read -r r < "$d/resv_hugepages"; echo "$d resv $r"; done')
_NODE_PAGES = re.compile(r"/node(\d+)/hugepages/hugepages-(\d+)kB (\d+) (\d+) (\d+)$")
_RESERVED = re.compile(r"/hugepages-(\d+)kB resv (\d+)$")


def huge_pages_in_use(text: str) -> list[str]:
    """What of HUGE_PAGE_USE's output says huge pages are someone's: mapped or held (not free),
    surplus (overcommitted to a user), or reserved for a mapping not yet faulted in."""
    used: list[str] = []
    for line in text.splitlines():
        if match := _NODE_PAGES.search(line.strip()):
            node, kb, nr, free, surplus = (int(g) for g in match.groups())
            label = size_label(kb * 1024)
            if nr > free:
                used.append(f"node {node}: {nr - free} of {nr} {label} pages in use")
            if surplus:
                used.append(f"node {node}: {surplus} surplus {label} page{'s' if surplus > 1 else ''}")
        elif match := _RESERVED.search(line.strip()):
            kb, reserved = (int(g) for g in match.groups())
            if reserved:
                used.append(f"{size_label(kb * 1024)}: {reserved} page{'s' if reserved > 1 else ''} reserved")
    return used


def check_idle(remote: Remote, address: SshAddress) -> None:
    """Refuse a target whose huge pages someone holds: the scenarios take every page of a size
    to test it and release them all, so a workload's pages would be judged as the kernel's
    (a boot-time page that is not free fails its scenario) and taken from it."""
    used = huge_pages_in_use(remote.check(HUGE_PAGE_USE, "reading the huge page counts"))
    if used:
        raise HarnessError(f"{address.text}: huge pages are in use there ({'; '.join(used)}): a run "
                           "takes and releases every huge page: stop what holds them (their users "
                           "map them: grep -l huge /proc/*/smaps), or use an idle machine")


def check_root(remote: Remote, address: SshAddress) -> None:
    uid = remote.check("id -u", "`id -u`").strip()
    if uid != "0":
        raise HarnessError(f"{address.text}: {address.user} is not root (uid {uid}): the "
                           "SSH target writes /sys and /proc/sys: connect as root (ssh://root@HOST)")


@dataclass
class RestoreReport:
    """What `hvo-harness restore` did on a target."""

    address: SshAddress
    states: list[SavedState] = field(default_factory=list)  # of this boot: written back
    stale: list[SavedState] = field(default_factory=list)  # of an earlier boot: removed only
    ended: list[str] = field(default_factory=list)  # process groups of runs still running, ended
    changed: list[str] = field(default_factory=list)  # 'path: was -> now'
    unchanged: int = 0  # settings that already read as saved
    not_restored: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        where = self.address.text
        out = [f"{where}: removed {s.directory}: saved in an earlier boot (boot_id {s.boot_id}), which "
               "the reboot put back" for s in self.stale]
        if not self.states:
            return [*out, f"{where}: nothing saved: no earlier run's settings to restore"]
        out += [f"{where}: ended the earlier run still running there (process group {pg})"
                for pg in self.ended]
        paths = ", ".join(s.path for s in self.states)
        if self.not_restored:
            return [*out, f"{where}: NOT RESTORED (saved in {paths}, kept there): "
                    + "; ".join(self.not_restored)]
        out.append(f"{where}: restored the settings saved in {paths}:")
        out += [f"  {line}" for line in self.changed]
        out.append(f"  ({self.unchanged} other settings read back as saved)" if self.changed
                   else f"  (all {self.unchanged} settings already read as saved)")
        out.append(f"{where}: removed the saved state ({', '.join(s.directory for s in self.states)})")
        return out


def restore_target(address: SshAddress, identity: Path | None, known_hosts: Path | None) -> RestoreReport:
    """`hvo-harness restore`: write back the settings earlier runs saved on the target and did
    not restore, read them back, and remove their state when every one reads as saved (kept
    otherwise, for another try). A run whose driver still runs there is ended first: its
    scenarios would change the settings again under the restore."""
    report = RestoreReport(address)
    remote = Remote(connect(address, identity, known_hosts))
    try:
        check_root(remote, address)
        report.states, report.stale = saved_states(remote)
        if not report.states:
            return report
        alive = []
        for state in report.states:
            if state.running:
                still = end_group(remote, shlex.quote(state.running))
                if still is None:
                    report.ended.append(state.running)
                else:
                    alive.append(still)
        merged = merge_saved(report.states)
        before = parse_settings(remote.run(SAVE)[1])
        report.not_restored = [*write_back(remote, merged), *alive]
        if report.not_restored:
            return report
        report.changed = [f"{path}: {before.get(path, 'nothing')} -> {value}"
                          for path, value in sorted(merged.items()) if before.get(path) != value]
        report.unchanged = len(merged) - len(report.changed)
        remote.check("rm -rf " + " ".join(shlex.quote(s.directory) for s in report.states),
                     "removing the saved state")
    except ConnectionLost as lost:
        raise HarnessError(f"{address.text}: the connection dropped while restoring ({lost}): run "
                           f"`{restore_hint(address, identity, known_hosts)}` again") from None
    finally:
        remote.client.close()
    return report


def run_ssh(address: SshAddress, identity: Path | None, known_hosts: Path | None, out_dir: Path,
            on_run: Callable[[Results, int], None] | None = None, progress: Progress | None = None,
            stop: threading.Event | None = None, timeout: float = 600.0,
            results: Results | None = None, target: SshTarget | None = None) -> Results:
    """One run of the plan on the target, judged into RESULTS (a new one when None), by the
    pipeline's one path (pipeline.run_target: prepare, plan, run, judge, finish, reproducer).

    A Ctrl-C or SIGTERM during it restores the target, saves the run so far (on_run), then is
    raised again for the caller."""
    target = target or SshTarget(address, identity, known_hosts, progress, timeout)
    results = results if results is not None else Results()
    try:
        run = pipeline.run_target(target, out_dir, progress, stop)
        results.runs.append(run)
        results.complete = run.ended != "interrupted"
        if on_run:
            on_run(results, 1)
    finally:
        # A run that stopped before its scenarios (an error in prepare, Ctrl-C) changed
        # nothing: its directory on the target goes; one with settings not restored stays.
        if target.directory is not None and not results.runs and target.remote is not None:
            with contextlib.suppress(ConnectionLost, KeyboardInterrupt):
                target.remote.run(f"rm -rf {shlex.quote(target.directory)}", timeout=30)
        target.close()
    if target.interrupt is not None:
        raise target.interrupt
    return results


def _default_huge_size(profile: ArchProfile, page_size: int) -> int:
    native = profile.huge_sizes_by_page_size.get(page_size, ())
    return min(native) if native else 2 << 20
