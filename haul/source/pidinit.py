"""The init of a workload's PID namespace: start the command, reap, forward signals.

Run as ``python3 -S -E pidinit.py CMD [ARG...]`` as PID 1 of a new PID
namespace. It starts its own session (so CRIU can dump the tree without
--shell-job), runs CMD, reaps every process re-parented to it, forwards
SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to every other process of the
namespace, and exits with CMD's status once no child is left. It imports
nothing from haul: it is dumped and restored with the workload.
"""

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _forward(signum: int, frame: object) -> None:
    try:
        os.kill(-1, signum)  # inside a PID namespace: everyone but init
    except ProcessLookupError:
        pass


def main() -> int:
    argv = sys.argv[1:]
    if not argv:
        sys.stderr.write("pidinit: no command given\n")
        return 2
    os.setsid()
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            sys.stderr.write(f"pidinit: cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127)
    for sig in FORWARDED:
        signal.signal(sig, _forward)
    status = 0
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(raw)
            status = code if code >= 0 else 128 - code
    return status


if __name__ == "__main__":
    sys.exit(main())
