"""The page ``custode serve`` answers ``/`` with: what this is, its version, the host, and
links to ``/metrics`` and ``/healthz``, as every Prometheus exporter has.

Built once, from nothing a request says (so nothing of a request is ever echoed), every
value escaped. The links are relative, so they still lead to the right place behind a
reverse proxy that serves custode under a path prefix.
"""

from __future__ import annotations

import html
import socket

from custode import __version__

CONTENT_TYPE = "text/html; charset=utf-8"

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>custode</title>
</head>
<body>
<h1>custode</h1>
<p>Metrics of the git repositories on {host}, from custode {version}.</p>
<ul>
<li><a href="metrics">/metrics</a>: the Prometheus metrics</li>
<li><a href="healthz">/healthz</a>: ok, or 503 and why the metrics cannot be trusted</li>
</ul>
</body>
</html>
"""


def landing_page(*, version: str = __version__, host: str | None = None) -> bytes:
    """The HTML of ``/`` for ``host`` (default: this host's name) and ``version``."""
    name = socket.gethostname() if host is None else host
    return _PAGE.format(host=html.escape(name), version=html.escape(version)).encode()
