"""The director's HTTPS API, split by audience.

- :mod:`.agents`: what agents call (register, renew, update);
- :mod:`.auth`: logins, logout, auth-health;
- :mod:`.admin`: the agent registry and the CA, for admins;
- :mod:`.sessions`: servers and sessions, for admins;
- :mod:`.root`: assembles them into one Klein app with per-path body limits.

Routes are thin: they decode the request into a declared type
(:mod:`dcvix.director.requests`), call one domain service and render its
answer. Every route declares who may call it with :func:`.authz.authorized`;
the check runs before the route, which receives the checked caller.
"""
