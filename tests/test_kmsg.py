"""The kernel log: the guest's /dev/kmsg stream merged with the console (harness/kmsg.py).

Inputs are the recorded riscv64 boot (tests/data/README.md) and crafted streams standing for a
real fault: a record lost, a streamer killed by a panic, a line cut by kernel output."""

from __future__ import annotations

import zlib
from pathlib import Path

from harness import dmesg, kmsg

DATA = Path(__file__).parent / "data"
STEM = DATA / "riscv64-7.2.13-kmsg-hvo-on"


def recorded() -> tuple[str, str]:
    return Path(f"{STEM}.console.log").read_text(), Path(f"{STEM}.dmesg.log").read_text()


def test_records_keep_level_sequence_time_and_escapes() -> None:
    stream = kmsg.parse_stream("4,7,1500000,-;a\\x0ab\\x5cc\n6,8,1600000,-,caller=T1;next\n"
                               " SUBSYSTEM=cpu\n", framed=False)
    first, second = stream.records
    assert (first.seq, first.usec, first.level, first.text) == (7, 1_500_000, 4, "a\nb\\c")
    assert first.lines() == ["<4>[    1.500000] a", "<4>[    1.500000] b\\c"]
    assert second.text == "next"
    # A dictionary line of the record before is no record.
    assert stream.garbled == 1


def test_the_recorded_stream_is_whole_and_the_merge_takes_it() -> None:
    console, dmesg_text = recorded()
    stream = kmsg.parse_stream(dmesg_text, framed=False)
    assert stream.ended and stream.records[0].seq == 0
    seqs = [r.seq for r in stream.records]
    assert seqs == list(range(len(seqs)))
    log = kmsg.merge(console, stream)
    assert log.source == "kmsg+console" and log.lost == []
    # Every marker of the run is in the merged log once.
    assert log.text.count("hvo-harness: scenario boot size_kb=2048 node=0") == 1


def test_a_gap_in_the_stream_is_filled_from_the_console() -> None:
    console, dmesg_text = recorded()
    lines = dmesg_text.splitlines()
    # Record 100 lost on the way (an overwritten record, a cut line): the console had it.
    dropped = lines.pop(100)
    text = dropped.split(";", 1)[1]
    log = kmsg.merge(console, kmsg.parse_stream("\n".join(lines), framed=False))
    assert log.text.count(text) == 1 and log.lost == []
    # Without the console's copy the record is reported lost, by number.
    bare = "\n".join(ln for ln in console.splitlines() if text not in ln)
    log = kmsg.merge(bare, kmsg.parse_stream("\n".join(lines), framed=False))
    assert log.lost == [(100, 100)]
    assert "records lost: 100" in log.summary()


def test_what_came_after_the_stream_stopped_comes_from_the_console() -> None:
    """A panic kills the streamer: its report is on the console only, after the last record."""
    stream = kmsg.parse_stream("6,0,1000,-;Linux version 7.2\n12,1,2000000,-;hvo-harness: scenario boot "
                               "size_kb=2048 node=0\n", framed=False)
    console = ("[    0.001000] Linux version 7.2\n"
               "[    2.000000] hvo-harness: scenario boot size_kb=2048 node=0\n"
               "[    2.500000] sysrq: Trigger a crash\n"
               "[    2.500100] Kernel panic - not syncing: sysrq triggered crash\n")
    log = kmsg.merge(console, stream)
    assert log.text.count("Linux version") == 1
    assert log.text.splitlines()[-1].endswith("Kernel panic - not syncing: sysrq triggered crash")
    assert not log.stream_ended and "stream cut before its end" in log.summary()
    assert [f.kind for f in dmesg.parse(log.text).findings] == ["panic"]


def test_framed_lines_keep_only_a_good_crc_and_find_the_frame_after_kernel_text() -> None:
    record = "4,5,3000000,-;WARNING: something"
    good = f"hvo-kmsg: {zlib.crc32(record.encode()):08x} {record}"
    cut = good[:30] + "[    3.1] other" + good[30:]
    console = f"{good}\n[    2.9] kernel text{good}\n{cut}\n"
    stream = kmsg.parse_stream(console, framed=True)
    assert [r.seq for r in stream.records] == [5]  # two good copies, one record
    assert stream.garbled == 1


def test_numbered_lines_take_the_first_good_copy_and_name_the_missing() -> None:
    def framed(seq: int, line: str) -> str:
        payload = f"{seq} {line}"
        return f"hvo-result: {zlib.crc32(payload.encode()):08x} {payload}"

    lines = [framed(0, "KTAP version 1"), framed(1, "1..1")[:-2] + "xx", framed(2, "ok 1 a"),
             framed(0, "KTAP version 1"), framed(1, "1..1")]
    good, missing = kmsg.numbered_lines("\n".join(lines), kmsg.RESULT_TAG)
    assert good == ["KTAP version 1", "1..1", "ok 1 a"] and missing == []
    good, missing = kmsg.numbered_lines("\n".join(lines[:3]), kmsg.RESULT_TAG)
    assert good == ["KTAP version 1", "ok 1 a"] and missing == [1]


def test_no_stream_means_the_console_alone() -> None:
    console, _ = recorded()
    log = kmsg.merge(console, kmsg.parse_stream("", framed=False))
    assert log.source == "console" and log.text == console
