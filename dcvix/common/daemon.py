"""What both daemons do to become a well-behaved long-running process."""

from __future__ import annotations

import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorFromThreads,
    IReactorTCP,
)
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import Componentized
from twisted.web.server import Site

from dcvix.common.files import ensure_private_dir, require_owner_only
from dcvix.common.jobs import PeriodicJob
from dcvix.common.logging import make_observer, open_log_file, stdout
from dcvix.common.networks import AddressList
from dcvix.common.proxied import ProxiedFactory
from dcvix.common.reuseport import SharedPortEndpoint

log = Logger()


class StartupError(Exception):
    """A problem that stops a daemon before it serves; ``str()`` is one line."""


def fail(message: str) -> NoReturn:
    """Print one line on stderr and exit 1 (not twistd's usage text)."""
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def prepare_process() -> None:
    """Umask 077, and the open-file soft limit raised to the hard limit."""
    os.umask(0o077)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warn("could not raise the open-file limit above {soft}", soft=soft)


def private_dir(path: Path, what: str) -> Path:
    """Create or tighten a 0700 folder, or fail with a one-line reason."""
    try:
        ensure_private_dir(path)
    except OSError as error:
        raise StartupError(f"{what} {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"{what} {path}: not writable")
    return path


def require_private_file(path: Path) -> None:
    """Refuse a key file that group or other users may read (it must be 0600)."""
    try:
        require_owner_only(path)
    except ValueError as error:
        raise StartupError(str(error)) from None


def log_observer(component: str, log_section: Any) -> ILogObserver:
    """Stdout plus the rotated file of ``[log]``, at its level and format."""
    directory = Path(log_section.directory)
    try:
        private_dir(directory, "log directory")
        log_file = open_log_file(directory, component, log_section.rotation)
    except OSError as error:
        raise StartupError(f"log directory {directory}: {error.strerror}") from None
    return make_observer(log_section.level, log_section.format, [stdout(), log_file])


class DaemonService(MultiService):
    """The root service of a daemon; gives twistd our log observer.

    twistd asks the application for an ``ILogObserver`` component; a plugin only
    reaches the application when twistd attaches the service to it.
    """

    def __init__(self, name: str, observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.setName(name)
        self._observer = observer

    def privilegedStartService(self) -> None:
        """Bind the listeners; a port already in use is one line and exit 1."""
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            message = f"{self.name}: cannot listen on {error.interface or '*'}:" + (
                f"{error.port}: {error.socketError}"
            )
            log.critical("{message}", message=message)
            sys.stderr.write(message + "\n")
            raise SystemExit(1) from None

    def setServiceParent(self, parent: Any) -> None:
        """Attach to the application, handing it the log observer first."""
        if self._observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer)
        super().setServiceParent(parent)


class SighupService(Service):
    """Runs callbacks on SIGHUP, in the reactor thread."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._reactor = reactor
        self._callbacks: list[Callable[[], object]] = []
        self._previous: Any = None

    def add(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on every SIGHUP."""
        self._callbacks.append(callback)

    def startService(self) -> None:
        """Install the handler."""
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._handle)

    def stopService(self) -> None:
        """Restore the previous handler."""
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.fire)

    def fire(self) -> None:
        """Run every callback; one failing does not stop the others."""
        log.info("SIGHUP: reloading")
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.failure("SIGHUP handler {name} failed", name=repr(callback))


def tls_listener(
    reactor: IReactorTCP,
    host: str,
    port: int,
    creator: IOpenSSLServerConnectionCreator,
    site: Site,
    proxies: AddressList | None = None,
    shared: bool = False,
) -> IService:
    """A TLS listener on ``host:port``; ``""`` or ``::`` listen on IPv6 and IPv4.

    Connections from ``proxies`` start with a PROXY header (see
    :mod:`dcvix.common.proxied`). ``shared``: other processes may listen on
    the same port (see :mod:`dcvix.common.reuseport`).
    """
    factory: Any = TLSMemoryBIOFactory(creator, False, site)
    if proxies:
        factory = ProxiedFactory(factory, proxies)
    if shared:
        endpoint: Any = SharedPortEndpoint(reactor, port, host or "::")
    elif host in ("", "::") or ":" in host:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=host or "::")
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    service = StreamServerEndpointService(endpoint, factory)
    service._raiseSynchronously = True  # a busy port fails the start, exit 1
    return service


TLS_CHECK_SECONDS = 5.0


def tls_reload_job(tls: Any, clock: Any, sighup: SighupService) -> IService:
    """Reload the listener's certificate when its files change, and on SIGHUP."""

    async def check() -> None:
        tls.reload_if_changed()

    sighup.add(tls.reload_if_changed)
    return PeriodicJob("tls-reload", TLS_CHECK_SECONDS, check, clock, TLS_CHECK_SECONDS)
