"""The init of a workload's PID namespace: start the command, reap, forward signals.

Run as ``python3 -S -E pidinit.py [--log PATH] [--cwd DIR] [--wait-net IF:SECONDS]
-- CMD [ARG...]`` as PID 1 of a new PID namespace. With ``--wait-net`` (a tree
in a network namespace of its own), it first waits until interface IF is up
and has an IPv4 address (the agent wires it meanwhile), and exits with status
125 if that does not happen in time. It first points stdin at /dev/null and
stdout and stderr at the log (appending), and changes to DIR, all opened from
inside the host's namespaces: a descriptor inherited from another mount
namespace is one CRIU cannot dump. It then starts its own session (so CRIU can dump the tree without
--shell-job), runs CMD, reaps every process re-parented to it, forwards
SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to every other process of the
namespace, and exits with CMD's status once no child is left. It imports
nothing from haul: it is dumped and restored with the workload.

Signals are taken synchronously (blocked, then sigwaitinfo), never by an
asynchronous handler, so a signal can never land between a check and a
blocking wait and be left unhandled. A handler is still installed for each:
the kernel drops signals that an init leaves at their default action.
"""

import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
import time

FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}
WAITED = FORWARDED | {signal.SIGCHLD}


def _unexpected(signum: int, frame: object) -> None:
    """Never runs while the signals are blocked; present so the kernel queues them."""


def _reap(child: int, status: int) -> tuple[int, bool]:
    """Reap every exited child; return CMD's status and whether any child is left."""
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if pid == 0:
            return status, True
        if pid == child:
            code = os.waitstatus_to_exitcode(raw)
            status = code if code >= 0 else 128 - code


def _parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    opts = {"--log": "/dev/null", "--cwd": "/", "--wait-net": ""}
    while args and args[0] != "--":
        if args[0] in opts and len(args) > 1:
            opts[args[0]] = args[1]
            args = args[2:]
        else:
            raise SystemExit(f"pidinit: unknown argument {args[0]}")
    return opts, args[1:]


SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
IFF_UP = 0x1


def _net_ready(probe: socket.socket, ifname: str) -> bool:
    req = struct.pack("16s16x", ifname.encode())
    try:
        flags = struct.unpack_from("16xH", fcntl.ioctl(probe, SIOCGIFFLAGS, req))[0]
        fcntl.ioctl(probe, SIOCGIFADDR, req)  # fails until the interface has an address
    except OSError:
        return False
    return bool(flags & IFF_UP)


def _wait_net(spec: str) -> bool:
    ifname, _, seconds = spec.partition(":")
    deadline = time.monotonic() + float(seconds or "10")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        while not _net_ready(probe, ifname):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    return True


def _stdio(log: str, cwd: str) -> None:
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in (null, out):
        if fd > 2:
            os.close(fd)
    os.chdir(cwd)


def main() -> int:
    opts, argv = _parse(sys.argv[1:])
    if not argv:
        sys.stderr.write("pidinit: no command given\n")
        return 2
    _stdio(opts["--log"], opts["--cwd"])
    if opts["--wait-net"] and not _wait_net(opts["--wait-net"]):
        sys.stderr.write(f"pidinit: network {opts['--wait-net']} not ready; giving up\n")
        return 125
    os.setsid()
    for sig in WAITED:
        signal.signal(sig, _unexpected)
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    child = os.fork()
    if child == 0:
        for sig in WAITED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            sys.stderr.write(f"pidinit: cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127)
    status = 0
    while True:
        status, left = _reap(child, status)
        if not left:
            return status
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo in FORWARDED:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, info.si_signo)  # inside a PID namespace: everyone but init


if __name__ == "__main__":
    sys.exit(main())
