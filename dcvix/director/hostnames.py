"""The director's own host names, looked up without holding up its start."""

from __future__ import annotations

import contextlib
import socket
import threading


def own_host_names(timeout: float = 2.0) -> list[str]:
    """This machine's host name and, when DNS answers in time, its FQDN.

    A resolver that hangs must not hold up the director's start.
    """
    hostname = socket.gethostname()
    found: list[str] = []

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.append(socket.getfqdn(hostname))

    worker = threading.Thread(target=lookup, name="fqdn-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    names = [hostname]
    if found and found[0] and found[0] != hostname and "." in found[0]:
        names.append(found[0].rstrip("."))
    return [n for n in names if n and n != "localhost"]
