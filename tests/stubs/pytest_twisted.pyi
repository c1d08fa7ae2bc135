"""Types for the parts of pytest-twisted the tests use (it ships none).

``ensureDeferred`` only marks the test function for the plugin and returns it
unchanged; ``blockon`` waits in the test greenlet for a Deferred's result.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

def ensureDeferred(f: _F) -> _F: ...
def blockon(d: Deferred[_T]) -> _T: ...
