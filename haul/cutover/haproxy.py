"""Built-in HAProxy cutover: move a workload's traffic from its source server to its
destination server over HAProxy's runtime API, in an order that never leaves the
backend without a server to send to.

The servers are named by an ``--lb`` spec, ``haproxy:SOCKET:BACKEND/SERVER[,addr]``
(its grammar, and how ``{host}`` and ``*`` pick the two servers, are in
:mod:`haul.cutover.lb_spec`).

What it does at each hook point (see :class:`HaproxyCutover`):

- pre-migrate: reads the backend and both servers, and fails (so the migration
  is refused before anything is touched) if the socket is not at level admin,
  or the backend, a server, or a health check on it is missing;
- pre-freeze: ``disable health`` on the source server. HAProxy then keeps it UP
  while it is frozen; with checks on, two failed checks would mark it DOWN and,
  the destination not being in service yet, HAProxy would answer 503 at once;
- post-commit: the destination server is pointed at its address if needed,
  taken out of maintenance into *drain* (checked, but given no traffic), its
  health forced DOWN so that only a check made now can bring it UP; once
  HAProxy reports it UP it is set *ready* (in rotation). Only then is the
  source server set to drain, given a moment to finish its sessions, put in
  maintenance, and its health checks enabled again (they stay paused while it
  is in maintenance). HAProxy would put a server leaving maintenance straight
  back UP on the strength of its last check; the detour through drain is what
  makes the wait mean "answers now";
- rolled-back: the source server's checks are enabled and it is set ready; the
  destination server, if it is another one, is put in maintenance;
- restored: nothing (the destination copy is still stopped).

Configuring HAProxy for a migration (the lab writes exactly this, see
:mod:`haul.lab.haproxy`). While the source is frozen (0.5 to 2 s) its network
is locked: SYNs and requests sent to it are dropped, not refused. After the
commit it is killed, and with an address change every connection to it is
lost without a reset. No request fails if HAProxy holds and replays requests
until the destination is UP::

    timeout connect 250ms      # a connect to the frozen or vanished source is given up
                               # quickly and tried again (a LAN connect takes < 1 ms)
    timeout server 1s          # a request the source had received when it froze is
                               # replayed after this: just above the slowest normal answer
    retries 20                 # 20 attempts of >= 250 ms: several seconds of frozen
                               # window, restore and cutover
    option redispatch 1        # every retry may go to another server: the destination
                               # as soon as it is UP and the source drained
    retry-on conn-failure empty-response response-timeout
    http-reuse never           # no idle connection to the source is handed a new request
    default-server check inter 250ms fastinter 100ms downinter 100ms rise 1 fall 2

``retry-on`` beyond ``conn-failure`` replays requests: right for idempotent
services, a choice to make for others (with ``conn-failure`` alone, requests in
flight at the freeze fail when the address changes). HAProxy's check task
keeps the ``inter`` pace even for a server in maintenance, so ``inter`` bounds
how long the destination waits for its first check (measured: 1 s -> up to
1 s, 250 ms -> 40 to 250 ms). ``http-reuse never`` made no measurable
difference in the lab (``safe``, the default, gave the same gaps); it is kept
because an idle server connection reused towards a frozen source makes a
request wait ``timeout server`` instead of ``timeout connect``.

What a client sees: the largest gap between two answers is about
max(``timeout server``, frozen window + time to the destination's first good
check + ``timeout connect``). Measured in the lab (4 keep-alive clients, the
source frozen then killed, the destination at another address; see
tests/integration/test_haproxy_cutover.py): 0 failed requests in every run;
frozen 0.5 s -> largest gap 1.0 s; 1.5 s -> 1.76 s; 2.0 s -> 2.26 s (with
``timeout server 2s`` and ``timeout connect 500ms``: 2.0, 2.0 and 2.5 s).

One thing no balancer can mend: an answer the source had *begun* to send when
it froze (headers out, body not) is cut, since HAProxy cannot replay a request
whose answer it has started to forward. Services that write a small answer in
one write make that window tiny; with the address following the workload
(TCP connections restored) the answer completes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import assert_never

from haul.cutover.haproxy_runtime import (
    AdminState,
    HaproxyError,
    HaproxyRuntime,
    ServerState,
)
from haul.cutover.lb_spec import HaproxyTarget
from haul.engine.ports import HookFacts, HookPoint

log = logging.getLogger(__name__)

UNASSIGNED = ("0.0.0.0", "::")
#: how long the destination server has to pass its health check after the commit
UP_TIMEOUT_S = 10.0
#: how long the source server is given to finish its sessions before maintenance
DRAIN_TIMEOUT_S = 2.0
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Pair:
    """The two servers a migration concerns, as HAProxy showed them."""

    source: ServerState
    dest: ServerState | None  # None: a '*' cutover whose destination has no server yet
    #: the address (and port) the destination server must be given, if any
    new_addr: tuple[str, int] | None = None

    @property
    def same(self) -> bool:
        return self.dest is not None and self.dest.name == self.source.name


@dataclass(slots=True)
class CutoverReport:
    """What the last post-commit cutover did, with its durations."""

    source: str
    dest: str
    address_set: str | None = None
    #: from taking the destination out of maintenance to HAProxy reporting it UP
    dest_up_s: float = 0.0
    #: sessions still open on the source when it was put in maintenance
    source_sessions_left: int = 0
    total_s: float = 0.0
    steps: list[str] = field(default_factory=list)


class HaproxyCutover:
    """The hooks port for one workload behind HAProxy: ``await fire(point, facts)``.

    Stateless between points (each reads HAProxy afresh), so a point fired by a
    restarted agent works. Raises HaproxyError (a HaulError) with one line that
    says what failed and where the traffic goes now.
    """

    def __init__(
        self,
        target: HaproxyTarget,
        *,
        up_timeout_s: float = UP_TIMEOUT_S,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        poll_s: float = POLL_S,
        runtime: HaproxyRuntime | None = None,
    ) -> None:
        self.target = target
        self.api = runtime if runtime is not None else HaproxyRuntime(target.socket)
        self.up_timeout_s = up_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.poll_s = poll_s
        self.last: CutoverReport | None = None

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        match point:
            case HookPoint.PRE_MIGRATE:
                await self.check(facts)
            case HookPoint.PRE_FREEZE:
                await self.hold_source(facts)
            case HookPoint.RESTORED:
                pass  # the destination copy is still stopped: nothing to move yet
            case HookPoint.POST_COMMIT:
                await self.cut_over(facts)
            case HookPoint.ROLLED_BACK:
                await self.roll_back(facts)
            case _:  # a point added to the engine must be given its step here
                assert_never(point)

    # -- the points ---------------------------------------------------------------------

    async def check(self, facts: HookFacts) -> ServerState:
        """Pre-migrate: everything the cutover will need exists; nothing is changed."""
        untouched = f"{facts.workload} stays on {facts.source_host}, nothing touched"
        try:
            level = await self.api.cli_level()
            if level != "admin":
                raise HaproxyError(
                    f"HAProxy stats socket {self.target.socket} is at level "
                    f"'{level}'; a cutover needs 'level admin'"
                )
            pair = await self._pair(facts, for_cutover=True)
        except HaproxyError as exc:
            raise HaproxyError(
                f"HAProxy cutover check: {exc.message}", workload_state=untouched
            ) from exc
        if not pair.source.serving:
            log.warning(
                "%s: source server %s is not in service before the migration",
                facts.migration_id,
                pair.source.describe(),
            )
        return pair.source

    async def hold_source(self, facts: HookFacts) -> None:
        """Pre-freeze: stop checking the source so HAProxy keeps it UP while frozen."""
        state = f"{facts.workload} still runs on {facts.source_host}"
        try:
            source = await self._source(facts)
            if source.has_check and source.check_enabled:
                await self.api.disable_health(self.target.backend, source.name)
                log.info(
                    "%s: health checks of %s disabled for the frozen window",
                    facts.migration_id,
                    source.label,
                )
        except HaproxyError as exc:
            raise HaproxyError(
                f"HAProxy cutover before the freeze: {exc.message}", workload_state=state
            ) from exc

    async def cut_over(self, facts: HookFacts) -> CutoverReport:
        """Post-commit: destination in service and UP first, then the source out."""
        started = time.monotonic()
        try:
            pair = await self._pair(facts, for_cutover=True)
            if pair.dest is None:  # _pair(for_cutover=True) finds one or raises
                raise HaproxyError(f"no destination server for {facts.dest_host}")
            report = CutoverReport(source=pair.source.label, dest=pair.dest.label)
            self.last = report
            if pair.same:
                await self._back_in_service(pair.source, report)
            else:
                await self._bring_up(pair.dest, pair.new_addr, report)
                await self._take_out(pair.source, report)
        except HaproxyError as exc:
            raise HaproxyError(
                f"HAProxy cutover after the commit: {exc.message}",
                workload_state=f"{facts.workload} runs on {facts.dest_host}; "
                f"{await self._where_traffic_goes(facts)}",
            ) from exc
        report.total_s = time.monotonic() - started
        log.info(
            "%s: HAProxy cutover %s -> %s done in %.3f s (destination UP after %.3f s)",
            facts.migration_id,
            report.source,
            report.dest,
            report.total_s,
            report.dest_up_s,
        )
        return report

    async def roll_back(self, facts: HookFacts) -> None:
        """Rolled-back: the source in service with its checks on, the destination out."""
        try:
            pair = await self._pair(facts, for_cutover=False)
            backend = self.target.backend
            if pair.source.has_check and not pair.source.check_enabled:
                await self.api.enable_health(backend, pair.source.name)
            if pair.source.in_maint or pair.source.draining:
                await self.api.set_state(backend, pair.source.name, AdminState.READY)
            if pair.dest is not None and not pair.same and not pair.dest.in_maint:
                await self.api.set_state(backend, pair.dest.name, AdminState.MAINT)
        except HaproxyError as exc:
            raise HaproxyError(
                f"HAProxy after the rollback: {exc.message}",
                workload_state=f"{facts.workload} runs on {facts.source_host}; "
                f"{await self._where_traffic_goes(facts)}",
            ) from exc
        log.info("%s: HAProxy back on %s", facts.migration_id, pair.source.label)

    # -- steps --------------------------------------------------------------------------

    async def _bring_up(
        self, dest: ServerState, new_addr: tuple[str, int] | None, report: CutoverReport
    ) -> None:
        backend = self.target.backend
        if new_addr is None and dest.serving and dest.check_enabled:
            report.steps.append(f"{dest.label} already in service")  # fired again
            return
        if new_addr is not None:
            address, port = new_addr
            await self.api.set_addr(backend, dest.name, address, port)
            report.address_set = f"{address}:{port}"
            report.steps.append(f"{dest.label} addr {address}:{port}")
        if dest.has_check and not dest.check_enabled:
            await self.api.enable_health(backend, dest.name)
        # Leaving maintenance HAProxy trusts the last check: through drain, with the
        # health forced down, only a check made from now on brings the server UP.
        await self.api.set_state(backend, dest.name, AdminState.DRAIN)
        await self.api.force_health_down(backend, dest.name)
        report.steps.append(f"{dest.label} drain, health down")
        t0 = time.monotonic()
        await self._wait_up(dest.name)
        report.dest_up_s = time.monotonic() - t0
        await self.api.set_state(backend, dest.name, AdminState.READY)
        report.steps.append(f"{dest.label} UP after {report.dest_up_s:.3f} s, ready")

    async def _take_out(self, source: ServerState, report: CutoverReport) -> None:
        backend = self.target.backend
        if not source.in_maint:
            await self.api.set_state(backend, source.name, AdminState.DRAIN)
            report.steps.append(f"{source.label} drain")
            report.source_sessions_left = await self._wait_drained(source.name)
            await self.api.set_state(backend, source.name, AdminState.MAINT)
            report.steps.append(
                f"{source.label} maint ({report.source_sessions_left} sessions left)"
            )
        if source.has_check and not source.check_enabled:
            await self.api.enable_health(backend, source.name)  # paused while in maint
            report.steps.append(f"{source.label} checks on")

    async def _back_in_service(self, server: ServerState, report: CutoverReport) -> None:
        """The address followed the workload: one server, kept; its checks resume."""
        backend = self.target.backend
        if server.has_check and not server.check_enabled:
            await self.api.enable_health(backend, server.name)
        if server.in_maint or server.draining:
            await self.api.set_state(backend, server.name, AdminState.READY)
        report.steps.append(f"{server.label} kept, checks on")

    async def _wait_up(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.up_timeout_s
        while True:
            state = await self.api.server(self.target.backend, name)
            if state.up:
                return
            if loop.time() >= deadline:
                check = (await self.api.stat(self.target.backend, name)).check_text()
                raise HaproxyError(
                    f"{state.describe()} did not come UP within {self.up_timeout_s:g} s "
                    f"(last check: {check})"
                )
            await asyncio.sleep(self.poll_s)

    async def _wait_drained(self, name: str) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while True:
            sessions = (await self.api.stat(self.target.backend, name)).sessions
            if sessions == 0 or loop.time() >= deadline:
                return sessions
            await asyncio.sleep(self.poll_s)

    # -- finding the servers ------------------------------------------------------------

    async def _source(self, facts: HookFacts) -> ServerState:
        return find_source(self.target, await self.api.servers(self.target.backend), facts)

    async def _pair(self, facts: HookFacts, *, for_cutover: bool) -> Pair:
        servers = await self.api.servers(self.target.backend)
        return choose_servers(self.target, servers, facts, for_cutover=for_cutover)

    async def _where_traffic_goes(self, facts: HookFacts) -> str:
        """One phrase on which servers HAProxy sends traffic to now, for error lines."""
        try:
            servers = await self.api.servers(self.target.backend)
        except HaproxyError:
            return "HAProxy's servers could not be read"
        serving = [s.name for s in servers if s.serving]
        if not serving:
            return f"HAProxy backend '{self.target.backend}' has no server in service"
        return f"HAProxy sends '{self.target.backend}' traffic to {', '.join(serving)}"


def choose_servers(
    target: HaproxyTarget, servers: tuple[ServerState, ...], facts: HookFacts, *, for_cutover: bool
) -> Pair:
    """The source and destination servers among ``servers`` (``show servers state``).

    ``for_cutover``: the destination must exist, or a spare be found for it, and both
    must be health-checked; otherwise (rolled-back) a missing destination is None.
    """
    source = find_source(target, servers, facts)
    if target.by_address:
        pair = _by_address(target, servers, source, facts, for_cutover)
    else:
        dest = _named(servers, target.backend, target.server_for(facts.dest_host))
        if dest.name == source.name:
            raise HaproxyError(f"source and destination hosts both map to {dest.label}")
        new_addr = None
        if target.set_addr:
            address = _address(facts.dest_address, "destination")
            if address != dest.address:
                new_addr = (address, dest.port)
        pair = Pair(source=source, dest=dest, new_addr=new_addr)
    for s in (pair.source, pair.dest):
        if s is not None and for_cutover and not s.has_check:
            raise HaproxyError(
                f"server {s.label} has no health check ('check' on its server line): "
                "the cutover waits for the destination's check to pass"
            )
    return pair


def find_source(
    target: HaproxyTarget, servers: tuple[ServerState, ...], facts: HookFacts
) -> ServerState:
    """The server the workload is served through on its source host."""
    if not target.by_address:
        return _named(servers, target.backend, target.server_for(facts.source_host))
    address = _address(facts.source_address, "source")
    at = [s for s in servers if s.address == address]
    if not at:
        raise HaproxyError(
            f"backend '{target.backend}' has no server at the workload's "
            f"source address {address} (servers: {_listing(servers)})"
        )
    if len(at) > 1:
        serving = [s for s in at if s.serving]
        if len(serving) != 1:
            raise HaproxyError(
                f"backend '{target.backend}' has several servers at "
                f"{address}: {', '.join(s.name for s in at)}"
            )
        at = serving
    return at[0]


def _by_address(
    target: HaproxyTarget,
    servers: tuple[ServerState, ...],
    source: ServerState,
    facts: HookFacts,
    for_cutover: bool,
) -> Pair:
    address = _address(facts.dest_address, "destination")
    if address == source.address:
        return Pair(source=source, dest=source)
    at = [s for s in servers if s.address == address and s.port == source.port]
    if at:
        return Pair(source=source, dest=at[0])
    if not for_cutover:
        return Pair(source=source, dest=None)
    spares = [s for s in servers if s.in_maint and s.name != source.name]
    if not spares:
        raise HaproxyError(
            f"backend '{target.backend}' has no server at the destination address "
            f"{address} and no spare server in maintenance to point there (add e.g. "
            f"'server-template slot 2 0.0.0.0:{source.port} check disabled')"
        )
    spares.sort(key=lambda s: (s.address not in UNASSIGNED, s.server_id))
    return Pair(source=source, dest=spares[0], new_addr=(address, source.port))


def _named(servers: tuple[ServerState, ...], backend: str, name: str) -> ServerState:
    for s in servers:
        if s.name == name:
            return s
    raise HaproxyError(f"backend '{backend}' has no server '{name}' (servers: {_listing(servers)})")


def _listing(servers: tuple[ServerState, ...]) -> str:
    return ", ".join(f"{s.name} {s.address or '-'}" for s in servers) or "none"


def _address(text: str, which: str) -> str:
    """The bare IP of a workload address as hooks give it ("10.0.0.5" or "10.0.0.5/24")."""
    if not text:
        raise HaproxyError(
            f"the migration has no {which} address for the workload; "
            "servers found by address ('*') or ',addr' need it"
        )
    try:
        return str(ipaddress.ip_interface(text.strip()).ip)
    except ValueError:
        raise HaproxyError(
            f"the workload's {which} address {text!r} is not an IP address"
        ) from None
