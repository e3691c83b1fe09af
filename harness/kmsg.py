"""The guest's kernel log: its /dev/kmsg stream merged with the console.

Pure: text in, text out. The guest (guest_scripts/init, `hvoh kmsg`) streams every record of
the kernel log as /dev/kmsg gives it, "<prefix>,<seq>,<usec>,<flags>[,...];<text>", with
its level, whatever the console log level lets through: to the dmesg port, or, where the
guest has no virtio-serial port, to the console, each line framed "hvo-kmsg: <crc32> <record>"
(kernel output can cut into a line there, and a line whose CRC does not match is dropped).

The console still covers what the stream cannot: records gone from the ring buffer before the
stream started, records the stream lost (an overwritten record, a garbled line) and whatever
came after the stream stopped (a panic kills the streamer). The merged log takes every record
of the stream, in sequence order, and the console's lines only where the stream has none:
before its first record, inside its gaps (by time stamp), after its last record."""

from __future__ import annotations

import bisect
import re
import zlib
from dataclasses import dataclass, field

KMSG_TAG = "hvo-kmsg:"
RESULT_TAG = "hvo-result:"
# The guest's last record: the stream stops at it (guest_scripts/init).
END_TEXT = "hvo-harness: kmsg end"
_LOST = "hvo-kmsg: lost"

# "6,123,4567890,-;text" or with the caller: "6,123,4567890,-,caller=T1;text".
_RECORD = re.compile(r"^(?P<prefix>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<text>.*)$")
# A framed line anywhere on a console line: kernel text may precede it.
_FRAMED = re.compile(r"(?P<tag>hvo-kmsg:|hvo-result:) (?P<crc>[0-9a-f]{8}) (?P<payload>.*)")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
# A console line's printk time stamp (printk.time=1 is on every harness command line).
_STAMP = re.compile(r"(?:<\d{1,3}>)?\[\s*(?P<sec>\d+)\.(?P<usec>\d{6})\]")


@dataclass(frozen=True)
class Record:
    seq: int
    usec: int
    level: int  # 0 (emerg) .. 7 (debug)
    text: str  # unescaped; a record may hold several lines

    def lines(self) -> list[str]:
        stamp = f"<{self.level}>[{self.usec // 1_000_000:5d}.{self.usec % 1_000_000:06d}] "
        return [stamp + line for line in self.text.split("\n")]


@dataclass
class Stream:
    records: list[Record] = field(default_factory=list)
    # Lines of the stream that could not be read: a CRC that does not match, a cut record.
    garbled: int = 0
    # Times the guest found a record overwritten before it read it.
    lost_reports: int = 0
    # The guest's end record arrived: the stream is whole up to it.
    ended: bool = False


@dataclass
class KernelLog:
    """The judged kernel log and how it was put together."""

    text: str
    source: str  # "kmsg+console" | "console" | "kmsg" (a running target) | "framed+console" (LAVA)
    records: int = 0
    # Sequence ranges (first, last) of records that neither the stream nor a gap had.
    lost: list[tuple[int, int]] = field(default_factory=list)
    garbled: int = 0
    console_lines: int = 0  # lines taken from the console
    stream_ended: bool = False

    def summary(self) -> str:
        if self.source == "console":
            return "console only (no kernel log stream from the guest)"
        parts = [f"{self.records} records from /dev/kmsg", f"{self.console_lines} console lines"]
        if self.lost:
            parts.append("records lost: " + ", ".join(
                f"{a}" if a == b else f"{a}-{b}" for a, b in self.lost[:5]))
        if self.garbled:
            parts.append(f"{self.garbled} garbled stream lines dropped")
        if not self.stream_ended:
            parts.append("stream cut before its end")
        return "; ".join(parts)

    def holes(self) -> str | None:
        """Why this log may not hold every record the kernel wrote while it was read (a report
        may be in what it lacks), or None. A stream cut before its end is a hole only where no
        console stands behind it (a running target's /dev/kmsg alone)."""
        if self.lost:
            ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.lost[:5])
            return (f"the kernel log lost records {ranges} (neither the /dev/kmsg stream nor the "
                    "console had them)")
        if self.source == "kmsg" and not self.stream_ended:
            return ("the kernel log (/dev/kmsg, no console behind it) was cut before the run's end "
                    "record")
        return None

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "records": self.records, "lost": self.lost,
                "garbled": self.garbled, "console_lines": self.console_lines,
                "stream_ended": self.stream_ended, "summary": self.summary()}


def _unescape(text: str) -> str:
    """/dev/kmsg writes bytes below 0x20, above 0x7e and the backslash as \\xNN."""
    if "\\x" not in text:
        return text
    raw = _ESCAPE.sub(lambda m: chr(int(m[1], 16)), text)
    return raw.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def _record(line: str) -> Record | None:
    m = _RECORD.match(line)
    if m is None:
        return None
    prefix = int(m["prefix"])
    return Record(int(m["seq"]), int(m["usec"]), prefix & 7, _unescape(m["text"]))


def framed_lines(text: str, tag: str) -> tuple[list[str], int]:
    """The payloads of lines framed with `tag` whose CRC holds, and how many did not."""
    good: list[str] = []
    bad = 0
    for line in text.split("\n"):
        if tag not in line:
            continue
        m = _FRAMED.search(line)
        if m is None or m["tag"] != tag:
            bad += 1
            continue
        payload = m["payload"].rstrip("\r")
        if f"{zlib.crc32(payload.encode('utf-8', errors='surrogateescape')):08x}" != m["crc"]:
            bad += 1
            continue
        good.append(payload)
    return good, bad


def numbered_lines(text: str, tag: str) -> tuple[list[str], list[int]]:
    """The guest's framed, numbered lines ("SEQ line"), first good copy of each, in order, and
    the numbers of those no good copy arrived for (`hvoh frame` sends each line twice)."""
    payloads, _ = framed_lines(text, tag)
    by_seq: dict[int, str] = {}
    for payload in payloads:
        number, _, line = payload.partition(" ")
        if number.isdigit():
            by_seq.setdefault(int(number), line)
    if not by_seq:
        return [], []
    missing = [n for n in range(max(by_seq) + 1) if n not in by_seq]
    return [by_seq[n] for n in sorted(by_seq)], missing


def parse_stream(text: str, framed: bool) -> Stream:
    """Records from the dmesg port's file (framed False) or from the console (framed True)."""
    stream = Stream()
    if framed:
        lines, stream.garbled = framed_lines(text, KMSG_TAG)
    else:
        lines = text.split("\n")
    seen: set[int] = set()
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            continue
        if line.startswith(_LOST):
            stream.lost_reports += 1
            continue
        record = _record(line)
        if record is None:
            # A cut last line (the guest died mid-write) or noise: never a record.
            stream.garbled += 1
            continue
        if record.seq in seen:
            continue
        seen.add(record.seq)
        stream.records.append(record)
        if record.text == END_TEXT:
            stream.ended = True
    stream.records.sort(key=lambda r: r.seq)
    return stream


def _console_items(console: str) -> list[tuple[int, str]]:
    """Console lines with the time stamp they carry, or the one of the line before them.

    The guest's framed channel lines are not console lines; kernel text that cut into one
    is kept from its time stamp on."""
    items: list[tuple[int, str]] = []
    current = -1
    for line in console.split("\n"):
        line = line.rstrip("\r")
        m = _STAMP.search(line)
        if KMSG_TAG in line or RESULT_TAG in line:
            if m is None:
                continue
            line = line[m.start():]
        if m is not None:
            current = int(m["sec"]) * 1_000_000 + int(m["usec"])
        if line.strip():
            items.append((current, line))
    return items


def merge(console: str, stream: Stream) -> KernelLog:
    """The kernel log to judge: the stream's records, and the console where they are missing."""
    if not stream.records:
        return KernelLog(console, "console", garbled=stream.garbled)
    # By time stamp (stable: console order within one), so each range is two bisections, not
    # a pass over the whole console per gap.
    items = sorted(_console_items(console), key=lambda item: item[0])
    stamps = [usec for usec, _ in items]
    records = stream.records
    out: list[str] = []
    taken = 0
    lost: list[tuple[int, int]] = []

    def console_between(low: int, high: int | None) -> None:
        nonlocal taken
        start = bisect.bisect_right(stamps, low)
        end = len(stamps) if high is None else bisect.bisect_left(stamps, high)
        out.extend(line for _, line in items[start:end])
        taken += max(0, end - start)

    console_between(-2, records[0].usec)
    if records[0].seq > 0 and taken == 0:
        # Records gone from the ring buffer before the stream started, and the console (which
        # shows only what its log level lets through) had none of them either.
        lost.append((0, records[0].seq - 1))
    for index, record in enumerate(records):
        out.extend(record.lines())
        following = records[index + 1] if index + 1 < len(records) else None
        if following is not None and following.seq != record.seq + 1:
            before = taken
            console_between(record.usec, following.usec)
            if taken == before:
                lost.append((record.seq + 1, following.seq - 1))
    console_between(records[-1].usec, None)
    return KernelLog("\n".join(out) + "\n", "kmsg+console", len(records), lost, stream.garbled,
                     taken, stream.ended)
