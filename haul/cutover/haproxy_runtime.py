"""HAProxy's runtime API (its stats socket), as an asyncio client.

One command per connection: the client connects to the unix socket, sends
``set severity-output number; COMMAND``, reads until HAProxy closes, and
parses the answer. HAProxy prefixes its own complaints with a severity
(``[3]: No such server.``); levels 0 to 3, and "Unknown command", become a
:class:`HaproxyError` that quotes HAProxy's words. A missing socket, a
refused connection, a permission problem, a silent HAProxy: each is one
line that names the socket.

What it reads, from HAProxy 2.6 (management guide, "show servers state" and
"show stat"):

- ``show servers state BACKEND`` (format 1): each server's address, port,
  operational state (0 stopped, 1 starting, 2 running, 3 stopping), admin
  flags (0x01 forced maintenance, 0x02 inherited, 0x04 disabled in the
  configuration, 0x08/0x10 drain, 0x20 resolution; maintenance is any of
  0x23), check result, check health counter and check flags (0x02
  configured, 0x04 enabled, 0x08 paused by maintenance);
- ``show stat BACKEND 4 -1`` (CSV): per server the status word HAProxy
  shows (UP, DOWN, MAINT, DRAIN, ...), current sessions, and the last check's
  status and description (``L4CON`` / ``Connection refused``).

Columns are looked up by the names in each answer's header line, not by
position, so a later HAProxy that adds columns still parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import enum
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from haul.errors import HaulError

#: how long one command may take, from connect to HAProxy closing the connection
COMMAND_TIMEOUT_S = 5.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_SEVERITY_RE = re.compile(r"^\[(\d)\]: ?(.*)$")
_MAX_ANSWER = 16 << 20

ADMF_FMAINT = 0x01
ADMF_IMAINT = 0x02
ADMF_CMAINT = 0x04
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN

CHK_ST_INPROGRESS = 0x01
CHK_ST_CONFIGURED = 0x02
CHK_ST_ENABLED = 0x04
CHK_ST_PAUSED = 0x08

CHK_RES_PASSED = 3


class HaproxyError(HaulError):
    """HAProxy could not be reached, or its runtime API refused a command."""


class OpState(enum.IntEnum):
    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    STOPPING = 3


class AdminState(enum.Enum):
    """The states ``set server B/S state`` accepts."""

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state``."""

    backend: str
    name: str
    server_id: int
    address: str  # "" when HAProxy has none (an FQDN not yet resolved)
    port: int
    op_state: OpState
    admin_flags: int
    weight: int
    check_result: int
    check_health: int
    check_flags: int

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_flags & ADMF_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_flags & ADMF_DRAIN)

    @property
    def has_check(self) -> bool:
        return bool(self.check_flags & CHK_ST_CONFIGURED)

    @property
    def check_enabled(self) -> bool:
        return bool(self.check_flags & CHK_ST_ENABLED)

    @property
    def up(self) -> bool:
        """HAProxy would send this server traffic if the balancer picked it."""
        return not self.in_maint and self.op_state in (OpState.RUNNING, OpState.STARTING)

    @property
    def serving(self) -> bool:
        """Up, and in the balancer's rotation (not draining, weight above zero)."""
        return self.up and not self.draining and self.weight > 0

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.name}"

    def describe(self) -> str:
        where = f"{self.address}:{self.port}" if self.address else "no address"
        return f"{self.label} ({where}, {self.status_word()})"

    def status_word(self) -> str:
        if self.in_maint:
            return "MAINT"
        word = {
            OpState.STOPPED: "DOWN",
            OpState.STARTING: "UP (slow start)",
            OpState.RUNNING: "UP",
            OpState.STOPPING: "NOLB",
        }[self.op_state]
        if self.draining:
            word = f"{word}, draining"
        if self.has_check and not self.check_enabled:
            word = f"{word}, checks disabled"
        return word


@dataclass(frozen=True, slots=True)
class ServerStat:
    """The few columns of ``show stat`` a cutover reads for one server."""

    backend: str
    name: str
    status: str  # as HAProxy shows it: UP, DOWN, MAINT, DRAIN, "DOWN 1/2", ...
    sessions: int  # scur: connections to this server right now
    check_status: str  # L7OK, L4CON, L4TOUT, ... ("" before any check)
    check_desc: str  # "Layer4 connection problem", ...
    check_info: str  # last_chk: "Connection refused", "HTTP status check returned code <503>"

    def check_text(self) -> str:
        parts = [p for p in (self.check_status, self.check_desc, self.check_info) if p]
        return ": ".join(parts) if parts else "no check result yet"


def valid_name(name: str) -> bool:
    """Whether ``name`` is a name HAProxy accepts for a proxy or a server."""
    return bool(_NAME_RE.fullmatch(name))


def parse_answer(command: str, raw: str) -> str:
    """The answer to ``command`` from what HAProxy sent after
    ``set severity-output number; COMMAND``; HaproxyError if it is a complaint."""
    # The first command ("set severity-output") answers with one empty line.
    text = raw.removeprefix("\n")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    m = _SEVERITY_RE.match(first)
    words = m.group(2) if m is not None else first
    complaint = None
    if m is not None and int(m.group(1)) <= 3:
        complaint = " ".join([words, *lines[1:]])
    if words.startswith("Unknown command"):
        complaint = "unknown command"
    elif words.strip() == "Permission denied":
        complaint = (
            "permission denied (the stats socket's level is too low; a cutover needs 'level admin')"
        )
    if complaint is not None:
        raise HaproxyError(f"HAProxy refused '{command}': {' '.join(complaint.split())}")
    if m is not None:  # a notice or a warning: the command did its work
        text = "\n".join([m.group(2), *lines[1:]])
    return text


def parse_servers_state(text: str) -> tuple[ServerState, ...]:
    """The servers in an answer to ``show servers state [BACKEND]`` (format 1)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        head = lines[0] if lines else ""
        raise HaproxyError(f"HAProxy's 'show servers state' answer is not format 1: {head!r}")
    header: list[str] | None = None
    servers = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("#").split()
            continue
        if header is None:
            raise HaproxyError("HAProxy's 'show servers state' answer has no header line")
        row = dict(zip(header, line.split(), strict=False))
        try:
            addr = row["srv_addr"]
            servers.append(
                ServerState(
                    backend=row["be_name"],
                    name=row["srv_name"],
                    server_id=int(row["srv_id"]),
                    address="" if addr == "-" else addr,
                    port=int(row["srv_port"]),
                    op_state=OpState(int(row["srv_op_state"])),
                    admin_flags=int(row["srv_admin_state"]),
                    weight=int(row["srv_uweight"]),
                    check_result=int(row["srv_check_result"]),
                    check_health=int(row["srv_check_health"]),
                    check_flags=int(row["srv_check_state"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise HaproxyError(
                f"HAProxy's 'show servers state' line {line!r} does not parse: {exc!r}"
            ) from exc
    return tuple(servers)


def parse_stat(text: str) -> tuple[ServerStat, ...]:
    """The server rows (not FRONTEND/BACKEND) of a ``show stat`` CSV answer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        head = lines[0] if lines else ""
        raise HaproxyError(f"HAProxy's 'show stat' answer has no header line: {head!r}")
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    stats = []
    for row in rows:
        name = row.get("svname") or ""
        if name in ("FRONTEND", "BACKEND", ""):
            continue
        try:
            stats.append(
                ServerStat(
                    backend=row["pxname"],
                    name=name,
                    status=row["status"],
                    sessions=int(row["scur"] or 0),
                    # "* L4TOUT": a check is running; the status is the last one's
                    check_status=(row.get("check_status") or "").removeprefix("* "),
                    check_desc=row.get("check_desc") or "",
                    check_info=row.get("last_chk") or "",
                )
            )
        except (KeyError, ValueError) as exc:
            raise HaproxyError(
                f"HAProxy's 'show stat' row for {name!r} does not parse: {exc!r}"
            ) from exc
    return tuple(stats)


def parse_weight(text: str) -> tuple[int, int]:
    """``get weight``'s answer, ``"1 (initial 1)"``, as (current, initial)."""
    m = re.fullmatch(r"\s*(\d+) \(initial (\d+)\)\s*", text)
    if m is None:
        raise HaproxyError(f"HAProxy's 'get weight' answer does not parse: {text.strip()!r}")
    return int(m.group(1)), int(m.group(2))


class HaproxyRuntime:
    """A client of one HAProxy's stats socket. Holds no connection between commands."""

    def __init__(self, socket: Path, *, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.socket = socket
        self.timeout_s = timeout_s

    async def command(self, command: str) -> str:
        """Send one command; return HAProxy's answer (HaproxyError if it complains)."""
        if "\n" in command or ";" in command:
            raise HaproxyError(f"refusing to send {command!r}: one command, no ';' or newline")
        raw = await self._exchange(f"set severity-output number; {command}\n")
        return parse_answer(command, raw)

    async def _exchange(self, line: str) -> str:
        where = f"HAProxy stats socket {self.socket}"
        try:
            mode = os.stat(self.socket).st_mode
        except FileNotFoundError:
            raise HaproxyError(
                f"no {where} (no such file; is HAProxy running with 'stats socket' there?)"
            ) from None
        except PermissionError:
            raise HaproxyError(f"no permission to reach {where}") from None
        except OSError as exc:
            raise HaproxyError(f"cannot reach {where}: {exc.strerror}") from exc
        if not stat.S_ISSOCK(mode):
            raise HaproxyError(f"{self.socket} is not a socket, so not HAProxy's stats socket")
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
                try:
                    writer.write(line.encode())
                    await writer.drain()
                    data = await _read_to_end(reader)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise HaproxyError(
                f"{where} did not answer {line.strip()!r} within {self.timeout_s:g} s"
            ) from None
        except ConnectionRefusedError:
            raise HaproxyError(
                f"nothing listens on {where} (HAProxy is not running, or the socket file is stale)"
            ) from None
        except PermissionError:
            raise HaproxyError(
                f"no permission to connect to {where} (its mode "
                f"{stat.S_IMODE(mode):o} and owner keep this user out)"
            ) from None
        except OSError as exc:
            raise HaproxyError(f"{where}: {exc.strerror or exc}") from exc
        return data.decode(errors="replace")

    # -- reading ------------------------------------------------------------------------

    async def cli_level(self) -> str:
        return (await self.command("show cli level")).strip()

    async def _about(self, backend: str, command: str, unknown: str) -> str:
        """``command`` on ``backend``; HAProxy's answer ``unknown`` means there is none."""
        _check_name(backend, "backend")
        try:
            return await self.command(command)
        except HaproxyError as exc:
            if unknown in exc.message:
                raise HaproxyError(f"HAProxy at {self.socket} has no backend '{backend}'") from None
            raise

    async def servers(self, backend: str) -> tuple[ServerState, ...]:
        return parse_servers_state(
            await self._about(backend, f"show servers state {backend}", "Can't find backend")
        )

    async def server(self, backend: str, server: str) -> ServerState:
        found = await self.servers(backend)
        for s in found:
            if s.name == server:
                return s
        names = ", ".join(s.name for s in found) or "none"
        raise HaproxyError(f"HAProxy backend '{backend}' has no server '{server}' (it has {names})")

    async def stats(self, backend: str) -> tuple[ServerStat, ...]:
        return parse_stat(await self._about(backend, f"show stat {backend} 4 -1", "No such proxy"))

    async def stat(self, backend: str, server: str) -> ServerStat:
        for s in await self.stats(backend):
            if s.name == server:
                return s
        raise HaproxyError(f"HAProxy backend '{backend}' has no server '{server}'")

    async def weight(self, backend: str, server: str) -> tuple[int, int]:
        return parse_weight(await self.command(f"get weight {_label(backend, server)}"))

    # -- changing -----------------------------------------------------------------------

    async def set_state(self, backend: str, server: str, state: AdminState) -> None:
        await self.command(f"set server {_label(backend, server)} state {state.value}")

    async def set_addr(
        self, backend: str, server: str, address: str, port: int | None = None
    ) -> str:
        """Point the server at ``address`` (and ``port``); return HAProxy's notice."""
        if not re.fullmatch(r"[0-9A-Fa-f.:]+", address):
            raise HaproxyError(f"refusing to set server address {address!r}: not an IP address")
        tail = "" if port is None else f" port {int(port)}"
        return (
            await self.command(f"set server {_label(backend, server)} addr {address}{tail}")
        ).strip()

    async def force_health_down(self, backend: str, server: str) -> None:
        """Mark the server's health DOWN; only a passing check brings it back UP."""
        await self.command(f"set server {_label(backend, server)} health down")

    async def enable_health(self, backend: str, server: str) -> None:
        await self.command(f"enable health {_label(backend, server)}")

    async def disable_health(self, backend: str, server: str) -> None:
        """Stop checking the server: HAProxy then considers it UP whatever happens."""
        await self.command(f"disable health {_label(backend, server)}")


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything HAProxy sends until it closes the connection (its end of answer)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_ANSWER:
            raise HaproxyError(f"HAProxy's answer exceeds {_MAX_ANSWER >> 20} MiB")
    return b"".join(chunks)


def _check_name(name: str, what: str) -> None:
    if not valid_name(name):
        raise HaproxyError(
            f"{what} name {name!r} is not a HAProxy name (letters, digits, '-', '_', '.', ':')"
        )


def _label(backend: str, server: str) -> str:
    _check_name(backend, "backend")
    _check_name(server, "server")
    return f"{backend}/{server}"
