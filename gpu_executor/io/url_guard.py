"""Moved to `service_runtime.net.url_guard` (the control plane fetches URLs too). This name stays an alias of that
very module object, so `from gpu_executor.io import url_guard` keeps working, and monkeypatching an attribute here
(tests replace `resolve_host`) patches the one the guard itself reads."""

import sys

from service_runtime.net import url_guard as _url_guard
from service_runtime.net.url_guard import *  # noqa: F403 - the public names, for readers and type checkers

sys.modules[__name__] = _url_guard
