"""The SSH target (harness/targets/ssh.py).

Unit tests for what needs no network (addresses, the command line's boot-time pages, the
settings saved and restored, the run's kernel log), host-key checks against paramiko's own
SSH server on 127.0.0.1 (a real SSH handshake, no mock), and boot tests against OpenSSH's sshd
in a QEMU guest running Debian's x86_64 kernel (tests/sshd_guest.py): one real SSH-target run,
compared with `hvo-harness compare` against the QEMU target's run of the same kernel and HVO
setting; a wrong or unknown host key refused; a non-root user refused; a dropped connection
leaving the target restored once it is reached again; a run killed with SIGKILL leaving its
saved state, the next run refused over it, and `hvo-harness restore` putting it back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from harness import guest_memory, images, judge, qemu, results
from harness.errors import HarnessError
from harness.plan import make_plan
from harness.profiles import GIB, MIB, get_profile
from harness.results import Results, Run, Scenario
from harness.targets import ssh
from tests import sshd_guest as guest_vm
from tests.cli import HARNESS, REPO, one_error_line, run_cli

# -- addresses -----------------------------------------------------------------------------------


def test_address_forms() -> None:
    assert ssh.parse_address("ssh://root@host") == ssh.SshAddress("root", "host", 22)
    assert ssh.parse_address("ssh://me@192.0.2.7:2222") == ssh.SshAddress("me", "192.0.2.7", 2222)
    assert ssh.parse_address("ssh://host:2200").user == "root"
    assert ssh.parse_address("ssh://u@[::1]:22").known_hosts_name == "::1"
    assert ssh.parse_address("ssh://u@[::1]:2222").known_hosts_name == "[::1]:2222"
    for bad in ("root@host", "ssh://", "ssh://u@host:99999", "ssh://u@host:port", "http://host"):
        with pytest.raises(HarnessError, match="--target"):
            ssh.parse_address(bad)


# -- what the running kernel's command line asked for ---------------------------------------------


def test_boot_pages_from_cmdline() -> None:
    line = "ro hugepagesz=2M hugepages=0:2,1:2 hugepagesz=1G hugepages=3 hugepagesz=16G hugepages=1"
    assert ssh.boot_pages_from_cmdline(line, 2, 2 * MIB) == {2 * MIB: 2, GIB: 1, 16 * GIB: 0}
    # hugepages= before any hugepagesz= is the default size's; default_hugepagesz= moves it.
    assert ssh.boot_pages_from_cmdline("hugepages=8", 2, 2 * MIB) == {2 * MIB: 4}
    assert ssh.boot_pages_from_cmdline("default_hugepagesz=1G hugepages=2", 1, 2 * MIB) == {GIB: 2}
    # A node the per-node form leaves out has none: the smallest node's count is asked of all.
    assert ssh.boot_pages_from_cmdline("hugepagesz=2M hugepages=0:4", 2, 2 * MIB) == {2 * MIB: 0}
    assert ssh.boot_pages_from_cmdline("quiet", 2, 2 * MIB) == {}


def test_hvo_setting_of_the_running_kernel() -> None:
    assert ssh.hvo_from_cmdline("hugetlb_free_vmemmap=on", "0") == "on"
    assert ssh.hvo_from_cmdline("hugetlb_free_vmemmap=on hugetlb_free_vmemmap=off", "1") == "off"
    assert ssh.hvo_from_cmdline("quiet", "1") == "on"
    assert ssh.hvo_from_cmdline("quiet", None) == "off"


def test_plan_cmdline_replaces_hvo_words() -> None:
    profile = dataclasses.replace(get_profile("x86_64"), node_mem_mib=(4096, 4096))
    plan = make_plan(profile, 4096, "on")
    words = ssh.plan_cmdline("ro hvo.sizes=1 quiet", plan).split()
    assert words[:2] == ["ro", "quiet"]
    hvo_words = [w for w in plan.kernel_args() if w.startswith("hvo.")]
    assert [w for w in words if w.startswith("hvo.")] == hvo_words


# -- settings saved and restored ------------------------------------------------------------------

NODE0_2M = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"


def test_settings_round_trip() -> None:
    saved = ssh.parse_settings(f"{NODE0_2M} 3\n{ssh.SYSCTL} 1\n/etc/passwd 0\nnoise\n")
    assert saved == {NODE0_2M: "3", ssh.SYSCTL: "1"}
    command = ssh.restore_command(saved)
    # The sysctl goes back first: pages allocated again get the vmemmap treatment they had.
    assert command.index(ssh.SYSCTL) < command.index(NODE0_2M)
    assert ssh.compare_settings(saved, {NODE0_2M: "3", ssh.SYSCTL: "1"}) == []
    assert ssh.compare_settings(saved, {NODE0_2M: "2"}) == [
        f"{NODE0_2M}: was 3, reads 2", f"{ssh.SYSCTL}: was 1, reads nothing"]


def test_huge_pages_in_use_on_the_target_are_named() -> None:
    # HUGE_PAGE_USE's output: a node's pages per size, then each size's reservations.
    node = "/sys/devices/system/node/node{}/hugepages/hugepages-{}kB"
    text = "\n".join([
        f"{node.format(0, 2048)} 4 2 0", f"{node.format(1, 2048)} 2 2 0",
        f"{node.format(0, 1048576)} 1 1 1", f"{node.format(1, 1048576)} 0 0 0",
        "/sys/kernel/mm/hugepages/hugepages-2048kB resv 0",
        "/sys/kernel/mm/hugepages/hugepages-1048576kB resv 1",
    ])
    assert ssh.huge_pages_in_use(text) == [
        "node 0: 2 of 4 2M pages in use", "node 0: 1 surplus 1G page", "1G: 1 page reserved"]
    idle = f"{node.format(0, 2048)} 4 4 0\n/sys/kernel/mm/hugepages/hugepages-2048kB resv 0\n"
    assert ssh.huge_pages_in_use(idle) == []


def test_saved_state_on_the_target_round_trip() -> None:
    saved = {NODE0_2M: "3", ssh.SYSCTL: "1"}
    text = ssh.state_text(saved, "b0-07", "0123456789abcdef", 1700000000)
    # The settings read as before (parse_settings skips the state's own words).
    assert ssh.parse_settings(text) == saved
    listing = (f"== /tmp/hvo-harness.AAAA/saved.state\n{text}running 4242\n"
               "== /var/tmp/hvo-harness.BBBB/saved.state\n"  # an older harness's: settings only
               f"{NODE0_2M} 5\n")
    first, second = ssh.parse_saved_states(listing)
    assert first == ssh.SavedState("/tmp/hvo-harness.AAAA/saved.state", saved, "b0-07",
                                   1700000000.0, "4242")
    assert first.directory == "/tmp/hvo-harness.AAAA"
    assert second.saved == {NODE0_2M: "5"} and second.boot_id is None and second.running is None
    assert ssh.parse_saved_states("") == []
    # Every place a run can lay its directory out is looked at.
    for base in ("/tmp", "/var/tmp", "/run", "/dev/shm"):
        assert f"{base}/hvo-harness.*/saved.state" in ssh.LIST_SAVED


def test_the_oldest_saved_state_is_what_the_target_had() -> None:
    """Two runs cut off in turn: the second saved what the first left changed; the first's
    values are the ones from before either."""
    old = ssh.SavedState("/tmp/hvo-harness.A/saved.state", {NODE0_2M: "0", ssh.SYSCTL: "1"}, "b", 100.0, None)
    new = ssh.SavedState("/tmp/hvo-harness.B/saved.state", {NODE0_2M: "7", "/sys/devices/system/node/"
                         "node1/hugepages/hugepages-2048kB/nr_hugepages": "2"}, "b", 200.0, None)
    merged = ssh.merge_saved([new, old])
    assert merged[NODE0_2M] == "0" and merged[ssh.SYSCTL] == "1" and len(merged) == 3


def test_refusal_names_the_restore_command() -> None:
    address = ssh.parse_address("ssh://root@192.0.2.7:2222")
    state = ssh.SavedState("/tmp/hvo-harness.A/saved.state", {NODE0_2M: "0"}, "b", 100.0, "77")
    line = ssh.unrestored_line(address, [state], Path("/k/id key"), Path("/k/known"))
    assert line.startswith("ssh://root@192.0.2.7:2222 still has the settings of an earlier run saved (")
    assert "/tmp/hvo-harness.A/saved.state" in line and "still running" in line
    assert line.endswith(": run `hvo-harness restore --target ssh://root@192.0.2.7:2222 "
                         "--identity '/k/id key' --known-hosts /k/known` first")
    assert "\n" not in line
    assert ssh.restore_hint(address, None, None) == "hvo-harness restore --target ssh://root@192.0.2.7:2222"


def test_cli_restore_options(tmp_path: Path) -> None:
    proc = run_cli("restore")
    assert proc.returncode == 2 and "--target" in proc.stderr
    assert "ssh://user@host" in one_error_line(run_cli("restore", "--target", "root@host"))
    line = one_error_line(run_cli("restore", "--target", "ssh://root@127.0.0.1:9", "--identity",
                                  str(tmp_path / "missing")))
    assert "--identity" in line and "no such file" in line
    key = tmp_path / "key"
    _write_rsa(key)
    line = one_error_line(run_cli("restore", "--target", f"ssh://root@127.0.0.1:{_closed_port()}",
                                  "--identity", str(key), "--known-hosts", str(_empty(tmp_path / "kh"))))
    assert "cannot connect" in line


# -- the run's kernel log ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_a_run_group_is_ended_and_gone_before_the_restore(shell: str) -> None:
    """The restore writes the settings back only once the run's processes have left: one that
    ignores SIGTERM and one stopped (as a driver held with SIGSTOP is) both end, and the
    command returns only when none of the group is left. Run on this host's own shells."""
    group = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300 & kill -STOP $!; sleep 300 & wait"],
                             start_new_session=True)
    try:
        time.sleep(0.5)
        said = subprocess.run([shell, "-c", ssh.end_group_command(str(group.pid))], capture_output=True,
                              text=True, timeout=ssh.END_WAIT_SECONDS + 30)
        assert said.stdout.strip() == f"ended {group.pid}", said
        group.wait(timeout=5)
        # Zombies waiting for a reaper hold nothing: only the living count.
        left = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(group.pid)],
                              capture_output=True, text=True)
        living = [line for line in left.stdout.splitlines() if "Z" not in line.split()[-1]]
        assert living == [], f"still in group {group.pid}: {living}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal.SIGKILL)


def test_kernel_log_is_the_runs_only() -> None:
    token = "0123456789abcdef"
    text = "\n".join([
        "4,10,100,-;WARNING: CPU: 0 PID: 1 at old_boot_warning+0x0/0x10",
        "6,11,110,-;HugeTLB: 28 KiB vmemmap can be freed for a 2.00 MiB page",
        f"12,20,200,-;hvo-harness: ssh run {token} start",
        "12,21,210,-;hvo-harness: scenario runtime size_kb=2048 node=0 sysctl=1",
        "6,23,230,-;after a gap",
        f"12,24,240,-;hvo-harness: ssh run {token} end",
    ])
    log = ssh.run_kernel_log(text, token)
    assert "old_boot_warning" not in log.text  # before the run: not this run's
    assert "HugeTLB: 28 KiB vmemmap can be freed" in log.text  # the boot's claim, kept
    assert log.records == 4 and log.lost == [(22, 22)] and log.stream_ended
    # No start record (another run's log, or none): nothing is taken as this run's.
    assert ssh.run_kernel_log(text, "fedcba9876543210").text == ""


def _ring(token: str, first_seq: int, boot_lines: list[str]) -> str:
    """A /dev/kmsg dump: the boot's records from FIRST_SEQ, then the run's start record."""
    records = [f"4,{first_seq + n},{100 + n},-;{line}" for n, line in enumerate(boot_lines)]
    seq = first_seq + len(boot_lines)
    return "\n".join([*records, f"12,{seq},900,-;hvo-harness: ssh run {token} start",
                      f"12,{seq + 1},910,-;hvo-harness: ssh run {token} end"])


# docs/findings.md #3: the WARN HVO's boot-time optimization of 1G pages printed at boot.
BOOT_WARN = ["------------[ cut here ]------------",
             "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte+0x112/0x11e, CPU#1: pool_workqueue_/3",
             "---[ end trace 0000000000000000 ]---"]


def _asked_run() -> Run:
    return Run("x86_64", results.KernelInfo("", None, None, {"type": "running"}), results.Accel("none", ""),
               "", None, "pass", results.Hvo("on", "active", ""), [],
               [_boot_scenario("pass", 2), _boot_scenario("pass", 0)], "all passed")


def test_a_report_at_boot_fails_the_boot_time_pages_of_a_running_target() -> None:
    """The boot-time pages were allocated and optimized at boot, before the run's start record:
    a WARN there (as QEMU's guest boot would show) must not leave them passed."""
    token = "0123456789abcdef"
    before = ssh.before_run(_ring(token, 0, ["Linux version 7.2.13+deb14-amd64", *BOOT_WARN]), token)
    assert before.from_boot and [f.function for f in before.findings] == ["vmemmap_remap_pte"]
    run = ssh._run_record(_asked_run(), {2 << 20: 2}, before)
    assert run.verdict == "fail" and run.findings == before.findings
    assert run.scenarios[0].status == "fail" and "between its boot and the run" in run.scenarios[0].reason
    assert run.scenarios[1].status == "skip"  # not asked for on the command line: a reboot's
    # The run's own log still starts at the start record.
    assert "vmemmap_remap_pte" not in ssh.run_kernel_log(_ring(token, 0, BOOT_WARN), token).text


def test_a_ring_that_lost_the_boot_leaves_boot_time_pages_untested() -> None:
    token = "0123456789abcdef"
    before = ssh.before_run(_ring(token, 5000, ["random: crng reseeded"]), token)
    assert not before.from_boot and not before.findings
    run = ssh._run_record(_asked_run(), {2 << 20: 2}, before)
    assert run.scenarios[0].status == "skip"
    assert "no longer reaches back to its boot" in run.scenarios[0].reason
    assert run.verdict == "pass"  # nothing failed; what was not tested says so
    from_boot = ssh.before_run(_ring(token, 0, ["Linux version"]), token)
    clean = ssh._run_record(_asked_run(), {2 << 20: 2}, from_boot)
    assert clean.scenarios[0].status == "pass"


def test_boot_time_pages_an_earlier_run_of_this_boot_released_are_not_passed() -> None:
    # A run releases the boot-time pages and its restore allocates new ones at run time: a
    # second run in the same boot would pass run-time pages as the boot's.
    token, earlier = "0123456789abcdef", "aaaabbbbccccdddd"
    ring = _ring(token, 0, ["Linux version 7.2.13+deb14-amd64",
                            "HugeTLB: registered 2.00 MiB page size, pre-allocated 2 pages",
                            f"hvo-harness: ssh run {earlier} start", f"hvo-harness: ssh run {earlier} end"])
    run = ssh._run_record(_asked_run(), {2 << 20: 2}, ssh.before_run(ring, token))
    assert run.scenarios[0].status == "skip", run.scenarios[0].reason
    assert f"ssh run {earlier}" in run.scenarios[0].reason and "reboot" in run.scenarios[0].reason
    assert run.verdict == "pass"  # nothing failed; what was not tested says so


def test_boot_time_pages_whose_count_changed_since_boot_are_not_passed() -> None:
    token = "0123456789abcdef"
    asked = _asked_run()
    asked.scenarios[0] = dataclasses.replace(asked.scenarios[0], allocated=2)
    for preallocated, status in ((4, "skip"), (2, "pass")):
        registered = f"HugeTLB: registered 2.00 MiB page size, pre-allocated {preallocated} pages"
        ring = _ring(token, 0, ["Linux version 7.2.13+deb14-amd64", registered])
        fresh = dataclasses.replace(asked, scenarios=[dataclasses.replace(s) for s in asked.scenarios])
        run = ssh._run_record(fresh, {2 << 20: 2}, ssh.before_run(ring, token))
        assert run.scenarios[0].status == status, run.scenarios[0].reason
        if status == "skip":
            assert "pre-allocated 4" in run.scenarios[0].reason and "has 2" in run.scenarios[0].reason


def test_boot_time_pages_freed_since_boot_are_not_the_kernels_failure() -> None:
    # The command line asked for 2 and the boot pre-allocated 2; someone wrote nr_hugepages=1
    # since. "allocated 1 of 2" is then the machine's history, not the kernel's failure; a
    # boot that pre-allocated fewer than asked is.
    token = "0123456789abcdef"
    for preallocated, status in ((2, "skip"), (1, "fail")):
        short = dataclasses.replace(_boot_scenario("fail", 2), allocated=1,
                                    reason="allocated 1 of 2 2M pages on node 0")
        verdict, reason = judge.scenario_verdict([short])  # as the judge said it
        run = dataclasses.replace(_asked_run(), scenarios=[short], verdict=verdict, verdict_reason=reason)
        registered = f"HugeTLB: registered 2.00 MiB page size, pre-allocated {preallocated} pages"
        ring = _ring(token, 0, ["Linux version", registered])
        ssh._run_record(run, {2 << 20: 2}, ssh.before_run(ring, token))
        assert run.scenarios[0].status == status, run.scenarios[0].reason
        if status == "skip":
            assert "pre-allocated 2" in run.scenarios[0].reason and run.verdict == "pass", run.verdict_reason


def _boot_scenario(status: str, requested: int, sysfs: str | None = None) -> Scenario:
    guest = {"sysfs": sysfs} if sysfs else {}
    return Scenario("2M", "boot", 0, "on", requested, 0, status, "judged", checks={"guest": guest})


def test_boot_sizes_the_cmdline_did_not_ask_for_are_skips_never_passes() -> None:
    run = Run("x86_64", results.KernelInfo("", None, None, {"type": "running"}), results.Accel("none", ""),
              "", None, "pass", results.Hvo("on", "active", ""), [],
              [_boot_scenario("pass", 0), _boot_scenario("fail", 0), _boot_scenario("skip", 0, "absent"),
               _boot_scenario("pass", 2)], "")
    ssh._run_record(run, {GIB: 1})
    statuses = [(s.status, s.reason) for s in run.scenarios]
    assert statuses[0][0] == "skip" and "needs a reboot with hugepagesz=2M" in statuses[0][1]
    assert "1G: 1 per node" in statuses[0][1]
    assert statuses[1] == ("fail", "judged")  # a failure is never turned into a skip
    assert statuses[2] == ("skip", "judged")  # a size the kernel lacks keeps the judge's reason
    assert statuses[3] == ("pass", "judged")  # pages the command line asked for were tested


# -- the CLI's checks before any connection ----------------------------------------------------------


@pytest.mark.parametrize("extra", [["--kernel", "debian:trixie"], ["--arch", "riscv64"], ["--hvo", "off"],
                                   ["--append", "quiet"], ["--tree"], ["--backend", "vng"]])
def test_cli_refuses_boot_options_with_a_target(extra: list[str], tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--target", "ssh://root@127.0.0.1:9", *extra,
                                  "--out", str(tmp_path)))
    assert "runs the target's own kernel" in line and extra[0] in line


def test_cli_bad_target_and_lone_ssh_options(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--target", "root@host", "--out", str(tmp_path)))
    assert "ssh://user@host" in line
    line = one_error_line(run_cli("run", "--identity", str(tmp_path / "k"), "--out", str(tmp_path)))
    assert "--target" in line
    line = one_error_line(run_cli("run", "--target", "ssh://root@127.0.0.1:9", "--identity",
                                  str(tmp_path / "missing"), "--out", str(tmp_path)))
    assert "--identity" in line and "no such file" in line


def test_cli_connection_refused_is_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    key = tmp_path / "key"
    _write_rsa(key)
    line = one_error_line(run_cli("run", "--target", f"ssh://root@127.0.0.1:{port}", "--identity", str(key),
                                  "--known-hosts", str(_empty(tmp_path / "kh")),
                                  "--out", str(tmp_path / "o")))
    assert "cannot connect" in line


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _empty(path: Path) -> Path:
    path.write_text("")
    return path


def _write_rsa(path: Path) -> paramiko.RSAKey:
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path))
    return key


# -- host keys, against paramiko's SSH server on 127.0.0.1 ------------------------------------------


class _AcceptKey(paramiko.ServerInterface):
    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.allowed.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED


class _ExitStatusBeforeTheLastOutput(_AcceptKey):
    """Runs every command as OpenSSH's sshd may: the exit status goes out when the command
    exits, and output still in its pipe (or written by a child it left behind) follows it."""

    def check_channel_request(self, kind: str, chanid: int) -> int:
        refused = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return paramiko.OPEN_SUCCEEDED if kind == "session" else refused

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        def answer() -> None:
            channel.sendall(b"early\n")
            channel.sendall_stderr(b"early on stderr\n")
            channel.send_exit_status(0)
            time.sleep(0.5)
            channel.sendall(b"late\n")
            channel.sendall_stderr(b"late on stderr\n")
            channel.shutdown_write()
            channel.close()
        threading.Thread(target=answer, daemon=True).start()
        return True


@contextlib.contextmanager
def _paramiko_server(tmp_path: Path,
                     interface: type[_AcceptKey]) -> Iterator[tuple[int, paramiko.PKey, Path]]:
    """An SSH server (paramiko's server side) on 127.0.0.1 answering as INTERFACE: (port, its
    host key, a client key it accepts)."""
    host_key = paramiko.RSAKey.generate(2048)
    client_path = tmp_path / "client"
    client_key = _write_rsa(client_path)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    done = threading.Event()
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transports.append(transport)
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                transport.start_server(server=interface(client_key))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), host_key, client_path
    finally:
        done.set()
        thread.join(5)
        for transport in transports:
            transport.close()
        listener.close()


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[tuple[int, paramiko.PKey, Path]]:
    with _paramiko_server(tmp_path, _AcceptKey) as server:
        yield server


def _known_hosts(path: Path, port: int, key: paramiko.PKey) -> Path:
    path.write_text(f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n")
    return path


def test_known_host_key_is_accepted(ssh_server: tuple[int, paramiko.PKey, Path], tmp_path: Path) -> None:
    port, host_key, client = ssh_server
    address = ssh.SshAddress("root", "127.0.0.1", port)
    connection = ssh.connect(address, client, _known_hosts(tmp_path / "kh", port, host_key), timeout=10)
    try:
        assert connection.get_transport() is not None and connection.get_transport().is_authenticated()
    finally:
        connection.close()


def test_unknown_host_key_is_refused(ssh_server: tuple[int, paramiko.PKey, Path], tmp_path: Path) -> None:
    port, host_key, client = ssh_server
    known = _empty(tmp_path / "kh")
    with pytest.raises(HarnessError) as refused:
        ssh.connect(ssh.SshAddress("root", "127.0.0.1", port), client, known, timeout=10)
    text = str(refused.value)
    assert "is not in" in text and "refused" in text and host_key.fingerprint in text
    assert known.read_text() == ""  # never added


def test_changed_host_key_is_refused(ssh_server: tuple[int, paramiko.PKey, Path], tmp_path: Path) -> None:
    port, host_key, client = ssh_server
    other = paramiko.RSAKey.generate(2048)
    known = _known_hosts(tmp_path / "kh", port, other)
    with pytest.raises(HarnessError) as refused:
        ssh.connect(ssh.SshAddress("root", "127.0.0.1", port), client, known, timeout=10)
    text = str(refused.value)
    assert "host key changed" in text and other.fingerprint in text and host_key.fingerprint in text


def test_wrong_identity_is_refused(ssh_server: tuple[int, paramiko.PKey, Path], tmp_path: Path) -> None:
    port, host_key, _ = ssh_server
    stranger = tmp_path / "stranger"
    _write_rsa(stranger)
    with pytest.raises(HarnessError, match="authentication as root failed"):
        ssh.connect(ssh.SshAddress("root", "127.0.0.1", port), stranger,
                    _known_hosts(tmp_path / "kh", port, host_key), timeout=10)


def test_output_after_the_exit_status_is_read(tmp_path: Path) -> None:
    # RFC 4254 orders nothing between exit-status and the last data: a command's output is
    # whole only at the channel's EOF. A run that stopped at the exit status read half of
    # /boot/config now and then, found no CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP in it and
    # failed every HVO scenario on "HVO's rules give 0 KiB".
    with _paramiko_server(tmp_path, _ExitStatusBeforeTheLastOutput) as (port, host_key, client):
        connection = ssh.connect(ssh.SshAddress("root", "127.0.0.1", port), client,
                                 _known_hosts(tmp_path / "kh", port, host_key), timeout=10)
        try:
            status, out, err = ssh.Remote(connection).run("anything")
        finally:
            connection.close()
    assert (status, out, err) == (0, "early\nlate\n", "early on stderr\nlate on stderr\n")


# -- against OpenSSH's sshd in a QEMU guest (Debian's x86_64 kernel) ---------------------------------


class SshdGuest:
    def __init__(self, port: int, keys: guest_vm.Keys, known_hosts: Path, plan_args: list[str]) -> None:
        self.port, self.keys, self.known_hosts, self.plan_args = port, keys, known_hosts, plan_args

    @property
    def root(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def settings(self) -> dict[str, str]:
        """The guest's huge page settings and sysctl, read over a connection of the test's own."""
        return ssh.parse_settings(self.sh(ssh.SAVE)[1])

    def sh(self, command: str) -> tuple[int, str, str]:
        """COMMAND run as root on the guest, over a connection of the test's own."""
        client = ssh.connect(ssh.parse_address(self.root), self.keys.client, self.known_hosts)
        try:
            return ssh.Remote(client).run(command)
        finally:
            client.close()


@pytest.fixture(scope="module")
def sshd_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdGuest]:
    image = guest_vm.ensure_image()
    scratch = tmp_path_factory.mktemp("sshd-guest")
    keys = guest_vm.make_keys(scratch / "keys")
    profile = qemu.boot_profile(guest_vm.PROFILE, images.prepare(image.kernel, guest_vm.PROFILE))
    # The QEMU target's own command line for HVO on (make_plan), without the plan's hvo.* words:
    # the SSH target finds the same boot-time pages, so every scenario can be compared.
    plan_args = [a for a in make_plan(profile, 4096, "on").kernel_args() if not a.startswith("hvo.")]
    with guest_memory.reserve(profile.memory_mib), \
            guest_vm.running(image, keys, plan_args, scratch) as guest:
        known = scratch / "known_hosts"
        known.write_text(guest_vm.known_hosts_line(keys, guest.port))
        yield SshdGuest(guest.port, keys, known, plan_args)


@pytest.fixture
def sshd_guest(sshd_machine: SshdGuest) -> Iterator[SshdGuest]:
    """The module's sshd guest, put back after each test: a test that failed with a run's
    settings saved there must not make the next ones fail on the refusal to start over them."""
    yield sshd_machine
    with contextlib.suppress(Exception):
        ssh.restore_target(ssh.parse_address(sshd_machine.root), sshd_machine.keys.client,
                           sshd_machine.known_hosts)


def _ssh_run(guest: SshdGuest, out: Path, *extra: str, address: str | None = None,
             key: Path | None = None) -> tuple[int, str]:
    proc = run_cli("run", "--target", address or guest.root, "--identity", str(key or guest.keys.client),
                   "--known-hosts", str(guest.known_hosts), "--out", str(out), *extra, timeout=900)
    return proc.returncode, proc.stderr


@pytest.mark.boot
def test_ssh_target_agrees_with_the_qemu_target(sshd_guest: SshdGuest, hvo_boot: Callable[..., Run],
                                                tmp_path: Path) -> None:
    before = sshd_guest.settings()
    status, stderr = _ssh_run(sshd_guest, tmp_path / "ssh")
    assert status == 0, stderr
    document = json.loads((tmp_path / "ssh" / "results.json").read_text())
    results.validate(document)
    ssh_results = results.from_json(document)
    run = ssh_results.runs[0]
    assert run.target is not None and run.target["type"] == "ssh" and run.target["restored"] is True
    assert run.target["not_restored"] == [] and run.kernel.source["type"] == "running"
    assert run.hvo.requested == "on" and run.hvo.state == "active", run.hvo
    assert run.kernel.struct_page and run.kernel.struct_page["size"] == 64
    # What it saved is every setting there is, and nothing it changed is left changed.
    assert run.target["saved"] == before and ssh.SYSCTL in before
    assert sshd_guest.settings() == before
    runtime = [s for s in run.scenarios if s.mode == "runtime"]
    assert {s.hvo for s in runtime} == {"on", "off"}
    assert any(s.status == "pass" for s in runtime)

    # The QEMU target: the same kernel (Debian sid's), the same HVO setting.
    qemu_run = hvo_boot("x86_64", "on")
    assert qemu_run.kernel.release == run.kernel.release
    base = tmp_path / "qemu.json"
    Results(runs=[qemu_run], harness_version="test").write(base)
    compared = run_cli("compare", str(base), str(tmp_path / "ssh" / "results.json"))
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "result: no regressions" in compared.stdout
    by_name = {s.name: s for s in qemu_run.scenarios}
    for scenario in runtime:
        assert scenario.status == by_name[scenario.name].status, scenario.name
        assert scenario.vmemmap.measured_kib_per_page == by_name[scenario.name].vmemmap.measured_kib_per_page


@pytest.mark.boot
def test_a_second_run_in_one_boot_does_not_pass_boot_time_pages(sshd_guest: SshdGuest,
                                                                 tmp_path: Path) -> None:
    # The agreement test's run (or any before this one) released the boot-time pages and its
    # restore allocated run-time pages in their place: the kernel's log holds that run's start.
    _ssh_run(sshd_guest, tmp_path / "first")
    status, stderr = _ssh_run(sshd_guest, tmp_path / "second")
    assert status == 0, stderr
    run = results.from_json(json.loads((tmp_path / "second" / "results.json").read_text())).runs[0]
    asked = [s for s in run.scenarios if s.mode == "boot" and s.allocated]  # (16G: none here)
    assert asked and all(s.status == "skip" and "an earlier run in this boot" in s.reason for s in asked)
    assert any(s.status == "pass" for s in run.scenarios if s.mode == "runtime")


@pytest.mark.boot
def test_sshd_guest_host_key_checks(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    # Another ed25519 host key (the guest's type) under the guest's name: a changed key.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(guest_vm.known_hosts_line(guest_vm.make_keys(tmp_path / "stranger"), sshd_guest.port))
    for known, words in ((wrong, "host key changed"), (_empty(tmp_path / "empty"), "is not in")):
        proc = run_cli("run", "--target", sshd_guest.root, "--identity", str(sshd_guest.keys.client),
                       "--known-hosts", str(known), "--out", str(tmp_path / "out"))
        line = one_error_line(proc)
        assert words in line and "refused" in line, line
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.boot
def test_sshd_guest_output_after_the_exit_status_is_read(sshd_guest: SshdGuest) -> None:
    # OpenSSH sends the exit status when the shell exits; the child it left holds the output
    # open, and what it writes after is still the command's output.
    status, out, _ = sshd_guest.sh("echo early; (sleep 1; echo late) &")
    assert (status, out) == (0, "early\nlate\n")
    # What the SSH target reads this way, whole: the kernel's config, byte for byte.
    release = sshd_guest.sh("uname -r")[1].strip()
    size = int(sshd_guest.sh(f"wc -c < /boot/config-{release}")[1])
    for _ in range(5):
        assert len(sshd_guest.sh(f"cat /boot/config-{release}")[1].encode()) == size


@pytest.mark.boot
def test_a_target_whose_huge_pages_are_in_use_is_refused(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    # A 2M page held by a file on hugetlbfs, as a workload on a real server holds its pages:
    # the scenarios would take it and judge its user's page as the kernel's failure.
    hold = ("mkdir -p /tmp/hvo-held && mount -t hugetlbfs -o pagesize=2M none /tmp/hvo-held && "
            "fallocate -l 2M /tmp/hvo-held/page")
    release = "rm -f /tmp/hvo-held/page; umount /tmp/hvo-held; rmdir /tmp/hvo-held"
    status, _, err = sshd_guest.sh(hold)
    try:
        assert status == 0, err
        before = sshd_guest.settings()
        proc = run_cli("run", "--target", sshd_guest.root, "--identity", str(sshd_guest.keys.client),
                       "--known-hosts", str(sshd_guest.known_hosts), "--out", str(tmp_path))
        line = one_error_line(proc)
        assert "in use" in line and "1 of 2 2M pages" in line and "stop what holds them" in line, line
        assert sshd_guest.settings() == before
        assert sshd_guest.sh("ls -d /tmp/hvo-harness.* 2>/dev/null")[1] == ""  # nothing laid out
    finally:
        sshd_guest.sh(release)


@pytest.mark.boot
def test_sshd_guest_non_root_is_refused(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    proc = run_cli("run", "--target", f"ssh://user@127.0.0.1:{sshd_guest.port}", "--identity",
                   str(sshd_guest.keys.user_key), "--known-hosts", str(sshd_guest.known_hosts),
                   "--out", str(tmp_path))
    line = one_error_line(proc)
    assert "is not root" in line and "ssh://root@HOST" in line


@pytest.mark.boot
def test_dropped_connection_is_restored_on_reconnect(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    before = sshd_guest.settings()
    target = ssh.SshTarget(ssh.parse_address(sshd_guest.root), sshd_guest.keys.client,
                           sshd_guest.known_hosts, reconnect_seconds=30)
    dropped = threading.Event()

    def drop(running: ssh.SshTarget) -> None:
        # Mid-run: the scenarios have started allocating; the connection goes away under them.
        def later() -> None:
            time.sleep(4)
            assert running.remote is not None
            running.remote.client.get_transport().close()  # type: ignore[union-attr]
            dropped.set()

        threading.Thread(target=later, daemon=True).start()

    target.on_started = drop
    out = tmp_path / "out"
    got = ssh.run_ssh(target.address, target.identity, target.known_hosts, out, target=target)
    assert dropped.is_set()
    run = got.runs[0]
    assert run.ended == "connection-lost", run.verdict_reason
    assert run.target is not None and run.target["reconnected"] is True
    assert run.target["restored"] is True and run.target["not_restored"] == [], run.target
    # The kernel lived on: the network failed, not the kernel; never a pass.
    assert run.verdict == "error" and "same boot_id" in run.verdict_reason
    assert sshd_guest.settings() == before


@pytest.mark.boot
def test_sigterm_mid_run_restores_the_target(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    before = sshd_guest.settings()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*HARNESS, "run", "--target", sshd_guest.root, "--identity", str(sshd_guest.keys.client),
         "--known-hosts", str(sshd_guest.known_hosts), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "running the scenarios" in line:
            break
    # The scenarios are allocating pages on the target when SIGTERM comes.
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    document = json.loads((out / "results.json").read_text())
    results.validate(document)
    assert document["complete"] is False and "SIGTERM" in document["partial_reason"]
    run = document["runs"][0]
    assert run["ended"] == "interrupted" and run["verdict"] == "error"
    assert run["target"]["restored"] is True and run["target"]["not_restored"] == [], run["target"]
    assert sshd_guest.settings() == before


@pytest.mark.boot
def test_a_run_killed_with_sigkill_is_refused_until_restored(sshd_guest: SshdGuest, tmp_path: Path) -> None:
    """SIGKILL gives the harness no chance to restore: the target keeps the run's saved state,
    the next run refuses to start over it, and `restore` puts the settings back."""
    before = sshd_guest.settings()
    options = ["--identity", str(sshd_guest.keys.client), "--known-hosts", str(sshd_guest.known_hosts)]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*HARNESS, "run", "--target", sshd_guest.root, *options, "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running the scenarios" in line:
            break
    directory = ""
    try:
        deadline = time.monotonic() + 60
        # The driver on the target writes its process group first: then the scenarios run.
        while time.monotonic() < deadline:
            states = list(out.glob("*.ssh-state.json"))
            if states:
                directory = json.loads(states[0].read_text())["directory"]
                if sshd_guest.sh(f"test -s {directory}/pgid")[0] == 0:
                    break
            time.sleep(0.5)
        assert directory, "the run saved no state"
        time.sleep(2)
        proc.kill()
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    try:
        # The driver may live on without the harness (nothing ends it there): hold it where it
        # is, and leave changed what a cut-off scenario leaves changed (one more 2M page on
        # node 0, the sysctl the other way).
        group = sshd_guest.sh(f"cat {directory}/pgid")[1].strip()
        running = sshd_guest.sh(f"kill -STOP -{group}")[0] == 0
        changed = {NODE0_2M: str(int(before[NODE0_2M]) + 1),
                   ssh.SYSCTL: "0" if before[ssh.SYSCTL] == "1" else "1"}
        sshd_guest.sh("; ".join(f"echo {v} > {p}" for p, v in changed.items()))
        assert {p: sshd_guest.settings()[p] for p in changed} == changed
        assert sshd_guest.sh(f"test -f {directory}/saved.state")[0] == 0

        refused = run_cli("run", "--target", sshd_guest.root, *options, "--out", str(tmp_path / "next"))
        line = one_error_line(refused)
        assert f"{sshd_guest.root} still has the settings of an earlier run saved" in line, line
        assert f"{directory}/saved.state" in line and ("still running" in line) == running, line
        assert line.endswith(f"run `hvo-harness restore --target {sshd_guest.root} "
                             f"--identity {sshd_guest.keys.client} --known-hosts {sshd_guest.known_hosts}` "
                             "first"), line
        assert not (tmp_path / "next" / "results.json").exists()

        restored = run_cli("restore", "--target", sshd_guest.root, *options)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"{NODE0_2M}: {changed[NODE0_2M]} -> {before[NODE0_2M]}" in restored.stdout, restored.stdout
        assert f"{ssh.SYSCTL}: {changed[ssh.SYSCTL]} -> {before[ssh.SYSCTL]}" in restored.stdout
        # Read back over a connection of the test's own: every setting as it was before the run.
        assert sshd_guest.settings() == before
        assert sshd_guest.sh(f"test -e {directory}")[0] != 0  # the saved state is gone
        if running:  # and the run that lived on was ended, not left to change things again
            assert f"ended the earlier run still running there (process group {group})" in restored.stdout
            assert sshd_guest.sh(f"kill -0 -{group}")[0] != 0
        assert sshd_guest.sh("ls -d /tmp/hvo-harness.* 2>/dev/null")[1].strip() == ""
        again = run_cli("restore", "--target", sshd_guest.root, *options)
        assert again.returncode == 0 and "nothing saved" in again.stdout, again.stdout + again.stderr
    finally:
        # Whatever failed above, the guest is left clean for the module's other tests.
        with contextlib.suppress(Exception):
            ssh.restore_target(ssh.parse_address(sshd_guest.root), sshd_guest.keys.client,
                               sshd_guest.known_hosts)
