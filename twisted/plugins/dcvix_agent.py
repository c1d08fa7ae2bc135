from twisted.application.service import ServiceMaker

dcvixAgent = ServiceMaker(
    "dcvix agent",
    "dcvix.agent.tap",
    "dcvix agent: drives the local Amazon DCV server for the director",
    "dcvix-agent",
)
