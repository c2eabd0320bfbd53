"""systemd's readiness protocol (sd_notify), without libsystemd.

With ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` to a unix datagram
socket (a path, or ``@name`` in the abstract namespace) and waits for
``READY=1`` on it. :class:`Notifier` takes the address out of the
environment when created, so that the workloads and CRIU processes the agent
starts do not inherit it, and does nothing when it was not set.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for (and the variable removed), or a no-op one."""
        env = environ if environ is not None else os.environ
        return cls(env.pop(ENV, None))

    def _target(self) -> str | None:
        if self.address is None:
            return None
        if self.address.startswith("@"):
            return "\0" + self.address[1:]
        if self.address.startswith("/"):
            return self.address
        log.warning("%s=%s is not a unix socket address; not notifying systemd", ENV, self.address)
        return None

    def notify(self, *assignments: str) -> bool:
        """Send ``READY=1``-style lines; True when sent, False when there is no one to tell."""
        target = self._target()
        if target is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(target)
                s.sendall(message)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
