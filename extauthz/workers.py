"""``extauthz serve --workers N``: N worker processes serving one port.

One Python process uses one core for checks; this runs N of them. Each worker is a whole
extauthz (its own config, keys and feed, loaded once per process) listening on the same
gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads connections across them.
Metrics are aggregated across workers with prometheus-client's multiprocess mode: every
worker writes its values into files in one folder and any worker's ``/metrics`` reads
them all. This process only supervises: it starts the workers, passes SIGTERM, SIGINT and
SIGHUP on, restarts a worker that dies, and exits once they have all stopped.

Envoy multiplexes checks over one HTTP/2 connection per Envoy worker thread; for the
kernel to spread load, Envoy must open several (``max_concurrent_streams`` on the
extauthz cluster, see deploy/envoy/envoy.yaml).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from extauthz.config import Config
from extauthz.errors import ConfigError

log = logging.getLogger("extauthz.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker that dies sooner than this after its start is restarted only after a pause,
# so a worker that cannot start does not spin.
_RESTART_PAUSE = 1.0
_STOP_TIMEOUT_MARGIN = 5.0


def check_can_share_ports(config: Config, workers: int) -> None:
    """Raises ConfigError when ``workers`` processes cannot share the listeners."""
    if workers < 2:
        return
    for name in ("grpc_listen", "http_listen"):
        if getattr(config.server, name).endswith(":0"):
            raise ConfigError(
                str(config.path),
                f"server.{name}",
                "workers share their ports: give a fixed port, not 0",
            )


class Supervisor:
    def __init__(self, config_path: str, config: Config, workers: int) -> None:
        self.config_path = config_path
        self.config = config
        self.workers = workers
        self._own_dir = MULTIPROC_ENV not in os.environ
        self.metrics_dir = Path(
            os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="extauthz-metrics-")
        )
        self._processes: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self._stopping = False
        self._pending_signal: int | None = None

    def run(self) -> int:
        """Start the workers and supervise them until a stop signal; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            for _ in range(self.workers):
                self._start_worker()
            log.info(
                "workers started",
                extra={"workers": self.workers, "pids": sorted(self._processes)},
            )
            while self._processes:
                self._forward_pending_signal()
                self._reap()
                time.sleep(0.1)
        finally:
            for process, _ in self._processes.values():
                process.kill()
            if self._own_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("workers stopped")
        return 0

    def _start_worker(self) -> None:
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        process = subprocess.Popen(
            [sys.executable, "-m", "extauthz", "serve", "--config", self.config_path, "--worker"],
            env=env,
        )
        self._processes[process.pid] = (process, time.monotonic())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending_signal = signum

    def _forward_pending_signal(self) -> None:
        signum, self._pending_signal = self._pending_signal, None
        if signum is None:
            return
        if signum != signal.SIGHUP:
            self._stopping = True
        for process, _ in self._processes.values():
            # SIGHUP reloads each worker's policy; SIGTERM and SIGINT drain and stop them.
            process.send_signal(signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        for pid, (process, started) in list(self._processes.items()):
            code = process.poll()
            if code is None:
                continue
            del self._processes[pid]
            # Its live gauges no longer count; its counters stay in the totals.
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping:
                continue
            log.error("worker exited; starting another", extra={"pid": pid, "code": code})
            if time.monotonic() - started < _RESTART_PAUSE:
                time.sleep(_RESTART_PAUSE)
            self._start_worker()
