from twisted.application.service import ServiceMaker

dcvixDirector = ServiceMaker(
    "dcvix director",
    "dcvix.director.tap",
    "dcvix session broker: REST API, CA and policy for Amazon DCV",
    "dcvix-director",
)
