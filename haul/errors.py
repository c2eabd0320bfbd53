"""One root, HaulError, and the few families a user or a caller can act on.

Every error renders as one line that says what failed, where, and (when known)
where the workload is now. Third-party exceptions are mapped to these at the
edge of the module that calls the third party.
"""

from __future__ import annotations


class HaulError(Exception):
    """Root of every error haul raises on purpose."""

    #: where the workload is after this error, when the raiser knows it
    workload_state: str | None = None

    def __init__(self, message: str, *, workload_state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if workload_state is not None:
            self.workload_state = workload_state

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.workload_state:
            text = f"{text}; workload: {self.workload_state}"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(HaulError):
    """Bad configuration, flags, inventory or install record."""


class UsageError(HaulError):
    """The caller asked for something that cannot be meant (bad name, bad path)."""


class LabError(HaulError):
    """Creating or removing lab hosts (namespaces, links, addresses) failed."""


class WorkloadError(HaulError):
    """Starting, finding, stopping or resuming a workload failed."""


class TransportError(HaulError):
    """Moving images or pages between hosts failed."""


class ChecksumMismatch(TransportError):
    """A copied file's content does not match what the sender hashed."""


class CriuError(HaulError):
    """CRIU refused or failed a request.

    Carries CRIU's errno (``cr_errno`` in its RPC response, 0 when it gave none),
    its own message, and the last lines of its log file.
    """

    def __init__(
        self,
        message: str,
        *,
        request: str,
        errno: int = 0,
        criu_message: str = "",
        log_path: str | None = None,
        log_tail: tuple[str, ...] = (),
        workload_state: str | None = None,
    ) -> None:
        super().__init__(message, workload_state=workload_state)
        self.request = request
        self.errno = errno
        self.criu_message = criu_message
        self.log_path = log_path
        self.log_tail = log_tail

    def one_line(self) -> str:
        parts = [f"CRIU {self.request}: {' '.join(self.message.split())}"]
        if self.errno:
            parts.append(f"errno {self.errno}")
        if self.criu_message:
            parts.append(self.criu_message)
        err = _first_error_line(self.log_tail)
        if err:
            parts.append(f"log: {err}")
        if self.log_path:
            parts.append(f"(full log {self.log_path})")
        text = " ".join("; ".join(parts).split())
        if self.workload_state:
            text = f"{text}; workload: {self.workload_state}"
        return text


class CriuProtocolError(CriuError):
    """CRIU's RPC conversation broke (process died, bad message, wrong type)."""


class PeerError(HaulError):
    """The other agent answered with an error code."""

    def __init__(self, message: str, *, code: str, workload_state: str | None = None) -> None:
        super().__init__(message, workload_state=workload_state)
        self.code = code


class IllegalTransition(HaulError):
    """The migration state machine was asked to do something its table forbids."""


#: CRIU log errors that every run logs on these machines and that say nothing about the
#: failure (root lacks CAP_SYS_RESOURCE on these machines: docs/environment.md)
HARMLESS_CRIU_ERRORS = ("rlimit: Can't setup RLIMIT_NOFILE",)


def _first_error_line(lines: tuple[str, ...]) -> str:
    """The most telling line of a CRIU log tail: the first 'Error' line that is not one
    every run logs, else the last line."""
    for line in lines:
        if any(harmless in line for harmless in HARMLESS_CRIU_ERRORS):
            continue
        if "Error" in line or "error" in line.split(":", 1)[0]:
            return line.strip()
    return lines[-1].strip() if lines else ""
