"""A sample workload with state to lose: a counter and a block of memory.

    python3 -S -E counter.py STATEFILE [--mem-mib N] [--interval-ms MS]

Every interval it increments a counter held only in memory and writes it to
STATEFILE (kept open, rewritten in place, one fixed-width line:
``count <n> mem <MiB>``). At start it fills N MiB with random bytes and keeps
their SHA-256. On SIGTERM it re-hashes the memory and writes a last line,
``PASS <n>`` or ``FAIL <reason>``, then exits. A restored copy that lost or
corrupted its memory, or restarted from zero, cannot write PASS with a count
that continues the one written before the move.
"""

import hashlib
import os
import signal
import sys
import time

_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def main() -> int:
    args = sys.argv[1:]
    if not args:
        sys.stderr.write("usage: counter.py STATEFILE [--mem-mib N] [--interval-ms MS]\n")
        return 2
    path = args[0]
    mem_mib = 0
    interval = 0.05
    i = 1
    while i < len(args):
        if args[i] == "--mem-mib":
            mem_mib = int(args[i + 1])
        elif args[i] == "--interval-ms":
            interval = int(args[i + 1]) / 1000.0
        else:
            sys.stderr.write(f"counter.py: unknown option {args[i]}\n")
            return 2
        i += 2
    memory = bytearray(mem_mib << 20)
    for start in range(0, len(memory), 16 << 20):
        chunk = memory[start : start + (16 << 20)]
        memory[start : start + len(chunk)] = os.urandom(len(chunk))
    digest = hashlib.sha256(memory).digest()
    signal.signal(signal.SIGTERM, _on_term)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    count = 0
    while not _stop:
        count += 1
        os.pwrite(fd, f"count {count:12d} mem {mem_mib:6d}\n".encode(), 0)
        time.sleep(interval)
    ok = hashlib.sha256(memory).digest() == digest
    verdict = f"PASS {count}" if ok else "FAIL memory changed"
    os.pwrite(fd, f"{verdict:<30}\n".encode(), 0)
    os.close(fd)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
