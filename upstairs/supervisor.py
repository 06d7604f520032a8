"""A small process supervisor for ``upstairs demo``: start, restart, stop a process tree.

Children run in sessions of their own, so a Ctrl-C in the terminal reaches only the
launcher, which then stops them in order (SIGTERM, then SIGKILL after a grace period). On
Linux each child also gets ``PR_SET_PDEATHSIG``: if the launcher is killed outright, the
kernel sends the child SIGTERM, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the launcher's own stop path still applies
        pass


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None  # None: the supervisor's
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    """Runs named child processes until a signal arrives; restarts a child that dies."""

    def __init__(self, env: dict[str, str], grace_s: float = 10.0) -> None:
        self.env = env
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._stopping = False

    def add(
        self, name: str, upstairs_args: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        argv = [sys.executable, "-m", "upstairs", *upstairs_args]
        self.children.append(Child(name, argv, env))

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(
            list(child.argv),
            env=child.env if child.env is not None else self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        logger.info("started %s (pid %d)", child.name, child.process.pid)

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask for a stop from here on (not a KeyboardInterrupt halfway
        through starting the children: Ctrl-C during startup stops everything cleanly)."""
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, on_tick: Callable[[], None] | None = None) -> None:
        """Watch the children until SIGINT/SIGTERM; then stop them all."""
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while not self._stopping:
                for child in self.children:
                    self._watch(child)
                if on_tick is not None:
                    on_tick()
                time.sleep(0.2)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self, child: Child) -> None:
        process = child.process
        if process is None or process.poll() is None:
            return
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60]
        if len(child.restarts) >= 5:
            logger.error("%s keeps dying (exit %s); not restarting", child.name, process.returncode)
            child.process = None
            return
        delay = 0.5 * 2 ** len(child.restarts)
        logger.warning(
            "%s exited with %s; restarting in %.1fs", child.name, process.returncode, delay
        )
        child.restarts.append(now)
        time.sleep(delay)
        if not self._stopping:
            self._spawn(child)

    def stop(self) -> None:
        """SIGTERM every child, wait for them, SIGKILL the stragglers."""
        alive = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for process in alive:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "pid %d did not stop in %.0fs; killing it", process.pid, self.grace_s
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for child in self.children:
            child.process = None
