"""Sends the report to the director every ``update_interval``, over one connection.

The first send comes after a random part of the interval, so a fleet started
together does not report in the same second. The connection is kept alive
between updates (no handshake per update) and replaced when the agent's
certificate changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.logger import Logger

from dcvix.agent.directors import Director, Directors
from dcvix.agent.identity import AgentFiles, SignerKey, load_cas
from dcvix.agent.metrics import AgentMetrics
from dcvix.agent.report import Reporter
from dcvix.common.pki import load_certificates
from dcvix.common.tls import director_client_tls
from dcvix.common.webclient import Answer, JsonClient

log = Logger()

UPDATE_TIMEOUT = 30.0


class Updater:
    """One ``POST /v1/agent/update`` per call of :meth:`send`.

    Args:
        files, key: the agent's identity (read at each send: it may be renewed).
        reporter: builds the body.
        directors: where to send it (the first that answers).
        reactor: network and clock.
        enrolled: whether the agent holds a certificate now.
        metrics: counts reports by outcome, and their round trips.
    """

    def __init__(
        self,
        files: AgentFiles,
        key: SignerKey,
        reporter: Reporter,
        directors: Directors,
        reactor: Any,
        enrolled: Callable[[], bool],
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._files = files
        self._key = key
        self._reporter = reporter
        self._directors = directors
        self._reactor = reactor
        self._enrolled = enrolled
        self._metrics = metrics or AgentMetrics()
        self._client: JsonClient | None = None
        self._serial: int | None = None
        self._failing = False

    def _client_for(self, certificate: x509.Certificate) -> JsonClient:
        if self._client is None or self._serial != certificate.serial_number:
            if self._client is not None:
                self._client.close()
            creator = director_client_tls(load_cas(self._files), certificate, self._key)
            self._client = JsonClient(self._reactor, creator, persistent=True)
            self._serial = certificate.serial_number
        return self._client

    async def send(self) -> None:
        """Report once; failures are logged (once per run of failures)."""
        if not self._enrolled():
            return
        certificate = load_certificates(self._files.certificate.read_bytes())[0]
        report = await self._reporter.build()
        client = self._client_for(certificate)

        async def post_to(director: Director) -> Answer:
            url = director.url("/v1/agent/update")
            return await client.call("POST", url, report, UPDATE_TIMEOUT)

        started = self._reactor.seconds()
        try:
            answer = await self._directors.call(post_to)
        except Exception as error:
            self._metrics.reports.labels("failed").inc()
            self._report_failure(str(error) or type(error).__name__)
            return
        self._metrics.report_seconds.observe(self._reactor.seconds() - started)
        if answer.status != 200:
            self._metrics.reports.labels("refused").inc()
            self._report_failure(f"{answer.status} {answer.error}")
            return
        self._metrics.reports.labels("delivered").inc()
        self._reporter.delivered(report)
        if self._failing:
            log.info("updates reach the director again")
        self._failing = False

    def _report_failure(self, reason: str) -> None:
        if not self._failing:
            log.warn("update not delivered: {reason}", reason=reason[:300])
        else:
            log.debug("update not delivered: {reason}", reason=reason[:300])
        self._failing = True

    async def close(self) -> None:
        """Close the kept-alive connection."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def first_delay(interval: float, chooser: random.Random | None = None) -> float:
    """A random start offset within one interval."""
    return (chooser or random.Random()).uniform(0, interval)  # noqa: S311 - jitter
