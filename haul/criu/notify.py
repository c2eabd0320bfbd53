"""CRIU's mid-request notifications ("action scripts" delivered over RPC).

With ``notify_scripts`` set, CRIU stops at each action point, sends a NOTIFY
message and waits for the client's answer. haul turns each into a
:class:`Notification` passed to an async handler; the handler returning
normally means "go on", raising means "fail the request here". The handler is
where the caller holds CRIU: a dump waits at ``post-dump`` (tree frozen,
images written) for as long as the handler takes.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


class Action(enum.StrEnum):
    PRE_STREAM = "pre-stream"
    PRE_DUMP = "pre-dump"
    POST_DUMP = "post-dump"
    PRE_RESTORE = "pre-restore"
    POST_RESTORE = "post-restore"
    NETWORK_LOCK = "network-lock"
    NETWORK_UNLOCK = "network-unlock"
    SETUP_NAMESPACES = "setup-namespaces"
    POST_SETUP_NAMESPACES = "post-setup-namespaces"
    PRE_RESUME = "pre-resume"
    POST_RESUME = "post-resume"
    ORPHAN_PTS_MASTER = "orphan-pts-master"
    STATUS_READY = "status-ready"
    QUERY_EXT_FILES = "query-ext-files"


@dataclass(frozen=True, slots=True)
class Notification:
    #: the action name as CRIU sent it (an :class:`Action` value, or a newer one)
    name: str
    #: the restored root's PID (setup-namespaces, post-restore), else None
    pid: int | None = None
    #: a file descriptor CRIU attached (orphan-pts-master); the handler owns it
    fd: int | None = None

    @property
    def action(self) -> Action | None:
        try:
            return Action(self.name)
        except ValueError:
            return None

    def close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


NotifyHandler = Callable[[Notification], Awaitable[None]]
