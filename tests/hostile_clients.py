"""Idle, slowloris and stalled-handshake connections, held from their own process.

Run: python tests/hostile_clients.py PORT [--idle N] [--slowloris N]
     [--stalled N] [--trickle SECONDS] [--reconnect] [--status FILE]
     [--limit SECONDS]

Against a TLS server on 127.0.0.1:PORT it holds three kinds of connection:

- ``idle``: a TCP connection that sends nothing;
- ``slowloris``: a finished TLS handshake, then a request whose headers never
  end, one byte every ``--trickle`` seconds;
- ``stalled``: the first half of a real TLS ClientHello, then nothing.

It runs in its own process so that the caller's file-descriptor limit and GIL
are not shared with 700 sockets (it raises its own open-file limit). Each
connection waits for the server to close it; with ``--reconnect`` it is opened
again, so the load is held whatever the server's timeouts. Counts per kind are
written as JSON to ``--status`` (atomically, a few times a second) and printed
on stdout at the end. It stops on SIGTERM or SIGINT, or by itself after
``--limit`` seconds (default 300).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
KINDS = ("idle", "slowloris", "stalled")
# Connections being opened at once: more would overflow the server's accept
# queue (Twisted listens with a backlog of 50) and wait for SYN retries.
OPENING = 32
REQUEST_START = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@dataclass
class Tally:
    """What happened to the connections of one kind."""

    wanted: int = 0
    opened: int = 0  # ever (a reconnection counts again)
    open: int = 0  # now
    closed_by_server: int = 0
    answered_408: int = 0  # a slowloris connection answered 408 before its close
    failed: int = 0  # could not connect (or handshake)
    held_min: float | None = None  # seconds from connect to the server's close
    held_max: float | None = None

    def held(self, seconds: float) -> None:
        """Record one connection the server closed after ``seconds``."""
        self.closed_by_server += 1
        self.held_min = (
            seconds if self.held_min is None else min(self.held_min, seconds)
        )
        self.held_max = (
            seconds if self.held_max is None else max(self.held_max, seconds)
        )


@dataclass
class Load:
    """Every connection slot, their tallies and when all were first open at once."""

    port: int
    trickle: float
    reconnect: bool
    tallies: dict[str, Tally] = field(default_factory=dict)
    all_open_after: float | None = None  # seconds from the start
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.gate = asyncio.Semaphore(OPENING)
        self.stopping = asyncio.Event()

    def status(self) -> dict[str, object]:
        open_now = sum(t.open for t in self.tallies.values())
        wanted = sum(t.wanted for t in self.tallies.values())
        if self.all_open_after is None and wanted and open_now == wanted:
            self.all_open_after = time.monotonic() - self.started
        return {
            "kinds": {kind: asdict(tally) for kind, tally in self.tallies.items()},
            "open": open_now,
            "wanted": wanted,
            "all_open_after": self.all_open_after,
            "elapsed": time.monotonic() - self.started,
        }

    async def slot(self, kind: str) -> None:
        """One connection of ``kind``, opened again after each close if asked."""
        tally = self.tallies[kind]
        while not self.stopping.is_set():
            try:
                async with self.gate:
                    begun = time.monotonic()
                    reader, writer = await self._open(kind)
            except (TimeoutError, OSError, ssl.SSLError):
                tally.failed += 1
                await asyncio.sleep(0.5)
                continue
            tally.opened += 1
            tally.open += 1
            self.status()
            try:
                closed, seen = await self._hold(kind, reader, writer)
            finally:
                tally.open -= 1
                writer.close()
            if not closed:
                return  # we are stopping
            tally.held(time.monotonic() - begun)
            tally.answered_408 += seen.startswith(b"HTTP/1.1 408 ")
            if not self.reconnect:
                return

    async def _open(
        self, kind: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if kind == "slowloris":
            return await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port, ssl=CLIENT_CONTEXT), 30
            )
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, self.port), 30
        )
        if kind == "stalled":
            writer.write(HALF_HELLO)
        return reader, writer

    async def _hold(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bool, bytes]:
        """Until the server closes (True, what it sent) or we stop (False)."""
        trickler = None
        if kind == "slowloris":
            trickler = asyncio.ensure_future(self._trickle(writer))
        reading = asyncio.ensure_future(read_until_closed(reader))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if trickler is not None:
                trickler.cancel()
        if not reading.done():
            reading.cancel()
            return False, b""
        return True, reading.result()

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        """A request line and headers, one byte at a time, never ending."""
        header = 0
        data = REQUEST_START
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            while True:
                for byte in data:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(self.trickle)
                header += 1
                data = b"X-Slow-%d: x\r\n" % header


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (an orderly close or a reset)."""
    seen = b""
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while chunk := await reader.read(4096):
            seen += chunk
    return seen


def client_context() -> ssl.SSLContext:
    """Checks nothing, and loads no CA store (tens of ms per context)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


CLIENT_CONTEXT = client_context()


def half_client_hello() -> bytes:
    """The first half of the ClientHello this machine's OpenSSL would send."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = CLIENT_CONTEXT.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


HALF_HELLO = half_client_hello()


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def write_status(path: Path | None, status: dict[str, object]) -> None:
    if path is None:
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path)


async def run(arguments: argparse.Namespace) -> dict[str, object]:
    load = Load(arguments.port, arguments.trickle, arguments.reconnect)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, load.stopping.set)
    loop.call_later(arguments.limit, load.stopping.set)
    slots = []
    counts = {kind: getattr(arguments, kind) for kind in KINDS}
    for kind, count in counts.items():
        load.tallies[kind] = Tally(wanted=count)
    # Interleaved, so that every kind is being opened from the start.
    for n in range(max(counts.values(), default=0)):
        for kind, count in counts.items():
            if n < count:
                slots.append(asyncio.ensure_future(load.slot(kind)))
    every = asyncio.gather(*slots)
    while not every.done():
        write_status(arguments.status, load.status())
        await asyncio.wait({every}, timeout=0.25)
    every.result()
    status = load.status()
    write_status(arguments.status, status)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    for kind in KINDS:
        parser.add_argument(f"--{kind}", type=int, default=0)
    parser.add_argument("--trickle", type=float, default=2.0)
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--status", type=Path)
    parser.add_argument("--limit", type=float, default=300.0)
    arguments = parser.parse_args()
    raise_open_file_limit()
    print(json.dumps(asyncio.run(run(arguments))))


if __name__ == "__main__":
    main()
