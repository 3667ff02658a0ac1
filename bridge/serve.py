"""`serve`: the app on its listener, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import Literal

from bridge import __version__
from bridge.config import Config
from bridge.logs import configure as configure_logging
from bridge.redact import Redactor

# The cyclic garbage collector's thresholds while serving (Python's default: 700, 10, 10).
SERVE_GC_THRESHOLDS = (20_000, 20, 50)


def serve(config: Config, log_level: str, log_format: Literal["human", "json"]) -> bool:
    """Serve until signalled; False (said on stderr) when the address cannot be listened on."""
    redact = Redactor(config.secrets())
    configure_logging(log_level, log_format, redact)
    host, port = config.server.host, config.server.port
    try:
        try:
            asyncio.run(_serve_until_signalled(config, redact))
        finally:  # the log lines still waiting go before anything else on stderr
            for handler in logging.getLogger().handlers:
                handler.flush()
    except OSError as exc:
        print(
            f"jobserv-bridge: cannot listen on {host}:{port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return False
    logging.getLogger("bridge").info("stopped")
    return True


async def _serve_until_signalled(config: Config, redact: Redactor) -> None:
    """Serve until SIGTERM or SIGINT; then stop taking requests and finish those in flight."""
    from bridge.listener import listening
    from bridge.server import RUNTIME, create_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config, redact)
    refused = app[RUNTIME].metrics.refused
    async with listening(app, config.server, lambda code: refused.labels(code).inc()) as runner:
        port = runner.addresses[0][1]  # the one bound, when the config asks for any (0)
        logging.getLogger("bridge").info(
            "jobserv-bridge %s listening on http://%s:%d/webhook",
            __version__,
            config.server.host,
            port,
        )
        _spare_the_collector()
        await stop.wait()


def _spare_the_collector() -> None:
    """What serve has loaded lives as long as the process: the cyclic garbage collector need
    not walk it again and again. And at hundreds of webhooks a second, the default young
    generation (700 new objects) is collected thousands of times a second: collect it more
    rarely (its garbage is small, a few MB at most). What is frozen is never collected: a
    reload that drops startup's config in a cycle keeps it, once, not at every reload."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVE_GC_THRESHOLDS)
