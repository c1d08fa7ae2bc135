"""The agent's footprint at ``update_interval = 30``, beside a bare twisted.web.

Run: .venv/bin/python bench/agent_footprint.py [SECONDS]   (default 600)

A real director (twistd, its own process, ``auto_approve = token``) enrols a
real agent (twistd, its own process, the default ``update_interval`` of 30 s)
whose ``dcv`` is the shipped simulator holding 20 sessions, so the agent does
what it does on a workstation: every 30 s it runs ``dcv list-sessions``,
reads host stats and posts an update over mTLS; its reaper runs on its own
period. The baseline, started in the same run, is a bare twisted.web TLS
server (its own process, the agent's certificate) left idle: the floor of any
Twisted TLS daemon.

Once the agent holds its certificate, both are watched for SECONDS: RSS every
5 s (the largest and the last), and CPU as (utime + stime) over the wall
time, in % of one core. The ``dcv`` processes the agent starts are counted
apart (their CPU is the simulator's, not Amazon DCV's). At the end the
director's summary lines must count the agent's updates, so a run in which the
agent did not report is refused. Targets: RSS under 60 MB, CPU under 0.5 % of
a core. The table is printed and appended to bench/RESULTS.md with the
machine and the git commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BASELINE,
    RESULTS,
    RESULTS_INTRO,
    answers,
    commit,
    free_port,
    machine,
    wait,
)
from bench.dcv_endpoints import SESSIONS, start_fleet

SAMPLE_SECONDS = 5.0
UPDATE_INTERVAL = 30.0
TARGET_RSS_MB = 60.0
TARGET_CPU_PCT = 0.5
SUMMARY = re.compile(r"(\d+) agent updates from \d+ agents")


def times(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of waited-for children) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick
    return own, children


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """RSS (largest, last) and CPU share of each process over ``seconds``."""
    start = {name: times(pid) for name, pid in pids.items()}
    largest = {name: rss_mb(pid) for name, pid in pids.items()}
    began = time.monotonic()
    while (left := seconds - (time.monotonic() - began)) > 0:
        time.sleep(min(SAMPLE_SECONDS, left))
        for name, pid in pids.items():
            largest[name] = max(largest[name], rss_mb(pid))
    wall = time.monotonic() - began
    found = {}
    for name, pid in pids.items():
        own, children = times(pid)
        found[name] = {
            "rss_max": largest[name],
            "rss_last": rss_mb(pid),
            "cpu_pct": 100 * (own - start[name][0]) / wall,
            "children_cpu_pct": 100 * (children - start[name][1]) / wall,
        }
    return found


def updates_counted(director_folder: Path) -> int:
    """Agent updates the director's periodic summary lines count."""
    total = 0
    for path in director_folder.rglob("*"):
        if path.is_file() and path.suffix in {".log", ".out", ""}:
            text = path.read_text(errors="replace")
            total += sum(int(count) for count in SUMMARY.findall(text))
    return total


def table(found: dict[str, dict[str, float]]) -> str:
    rows = [
        "| process | RSS max / last | CPU, % of a core | its `dcv` runs | "
        "targets (RSS < 60 MB, CPU < 0.5 %) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("agent", f"dcvix-agent, {SESSIONS} sessions, update every 30 s"),
        ("baseline", "bare twisted.web TLS, idle"),
    ):
        row = found[name]
        met = "—"
        if name == "agent":
            ok = row["rss_max"] < TARGET_RSS_MB and row["cpu_pct"] < TARGET_CPU_PCT
            met = "met" if ok else "**missed**"
        dcv = f"{row['children_cpu_pct']:.2f} %" if name == "agent" else "—"
        rows.append(
            f"| {label} | {row['rss_max']:.1f} / {row['rss_last']:.1f} MB | "
            f"{row['cpu_pct']:.3f} % | {dcv} | {met} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        # At info, the director logs a summary of the updates it took each minute.
        fleet = start_fleet(folder, director_log="info")
        baseline = None
        try:
            agent_data = folder / "agent" / "data"
            wait("the agent's certificate", (agent_data / "agent.crt").exists)
            bare = free_port()
            baseline = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    BASELINE,
                    str(bare),
                    str(agent_data / "agent.crt"),
                    str(agent_data / "agent.key"),
                ]
            )
            wait("the baseline", lambda: answers(bare))
            agent = fleet.processes[-1]
            found = watch({"agent": agent.pid, "baseline": baseline.pid}, args.seconds)
        finally:
            fleet.stop()
            if baseline is not None:
                baseline.terminate()
                baseline.wait(30)
        counted = updates_counted(folder / "director")
    # Summaries come every minute: the last minute's may not be written yet.
    expected = int((args.seconds - 60) // UPDATE_INTERVAL) - 1
    if counted < expected:
        raise SystemExit(f"the director counted {counted} updates, not {expected}+")
    text = table(found)
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header = (
        f"## bench/agent_footprint.py, {when}\n\n"
        f"{machine()}; commit {commit()}; watched {args.seconds:g} s after "
        f"enrolment, RSS every {SAMPLE_SECONDS:g} s; the director counted "
        f"{counted} updates from the agent.\n"
    )
    print(header)
    print(text)
    with RESULTS.open("a", encoding="utf-8") as out:
        if out.tell() == 0:
            out.write(f"# Benchmark results\n\n{RESULTS_INTRO}\n")
        out.write(f"\n{header}\n{text}\n")


if __name__ == "__main__":
    main()
