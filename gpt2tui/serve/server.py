"""Running the app under uvicorn: `run` for `gpt2tui serve` (signals, graceful shutdown), `ServerThread` for tests,
benchmarks and programs that serve a model beside other work.

SIGTERM or Ctrl+C: uvicorn stops accepting connections and lets responses in flight finish for
`settings.shutdown_timeout` seconds; streams still open then are cancelled (their rows stop before the next step),
and the scheduler thread ends. A second Ctrl+C quits at once.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import create_app
from .engine import Engine
from .settings import ServeSettings


def _config(engine: Engine, settings: ServeSettings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(engine, settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        # uvicorn's own: no "server: uvicorn" header, and X-Forwarded-* trusted from nobody.
        server_header=False,
        proxy_headers=False,
    )


def run(engine: Engine, settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl+C (the calling thread must be the main thread for the signals)."""
    uvicorn.Server(_config(engine, settings, log_level)).run()


class ServerThread:
    """The server in a background thread, on a port the OS picks unless `settings.port` is set (0 by default here):

    with ServerThread(engine, ServeSettings(port=0)) as server:
        OpenAI(base_url=server.base_url + "/v1", api_key="-")
    """

    def __init__(self, engine: Engine, settings: ServeSettings | None = None, log_level: str = "warning"):
        settings = settings or ServeSettings(port=0)
        self.settings = settings
        self.sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.host, settings.port))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(engine, settings, log_level))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="gpt2tui-uvicorn"
        )

    @property
    def base_url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError(f"the server did not start within {timeout:g} s")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
