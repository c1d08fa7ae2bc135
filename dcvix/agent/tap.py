"""twistd glue for ``twistd -n dcvix-agent --conf FILE``: no logic here."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from dcvix.agent.config import AgentConfig, check_agent_config
from dcvix.agent.service import build_agent
from dcvix.common.config import ConfigError
from dcvix.common.daemon import fail
from dcvix.common.tap import DaemonOptions, make_daemon


class Options(DaemonOptions):
    """Command line of the agent."""

    component = "agent"
    config_class = AgentConfig

    def postOptions(self) -> None:
        """Load the config, then check what spans keys (one line, exit 1)."""
        super().postOptions()
        try:
            check_agent_config(self["config"])
        except ConfigError as error:
            fail(str(error))


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the agent from the loaded config."""
    return make_daemon(options, build_agent, reactor)
