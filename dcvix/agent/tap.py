"""twistd glue for ``twistd -n dcvix-agent --conf FILE``: no logic here."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger

from dcvix.agent.config import AgentConfig
from dcvix.agent.service import build_agent
from dcvix.common.daemon import StartupError, fail, log_observer, prepare_process
from dcvix.common.tap import DaemonOptions

log = Logger()


class Options(DaemonOptions):
    """Command line of the agent."""

    component = "agent"
    config_class = AgentConfig


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the agent from the loaded config."""
    if reactor is None:
        from twisted.internet import reactor
    prepare_process()
    config: AgentConfig = options["config"]
    try:
        observer = log_observer("agent", config.log)
        for note in options["notes"]:
            log.warn("{note}", note=note)
        return build_agent(config, reactor, observer)
    except StartupError as error:
        fail(f"dcvix-agent: {error}")
