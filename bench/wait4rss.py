"""Run one command with a file on stdin; print its exit status, wall time and peak RSS (JSON).

Peak RSS is ru_maxrss from os.wait4. Run this with `python3 -S -E`, not from the bench's own big
process: a child forked from a process starts with that process's RSS as its high-water mark
(exec keeps the old mm's hiwater in signal->maxrss), so the floor here is this small helper's
RSS (~9 MB; bench_memory.py measures it with /bin/true and prints it).

    python3 -S -E bench/wait4rss.py INPUT CMD [ARG...]
"""

import os
import sys
import time


def main() -> int:
    path, cmd = sys.argv[1], sys.argv[2:]
    fd = os.open(path, os.O_RDONLY)
    err_r, err_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(fd, 0)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(err_w, 2)
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    os.close(err_w)
    err = b""
    while chunk := os.read(err_r, 65536):
        err += chunk
    _, status, ru = os.wait4(pid, 0)
    t1 = time.monotonic()
    rc = os.waitstatus_to_exitcode(status)
    detail = err.decode(errors="replace").strip().replace('"', "'").replace("\\", "/")[-300:]
    detail = " ".join(detail.split())
    sys.stdout.write(
        f'{{"rc": {rc}, "start": {t0!r}, "end": {t1!r}, "maxrss_kib": {ru.ru_maxrss}, '
        f'"cpu": {ru.ru_utime + ru.ru_stime!r}, "stderr": "{detail}"}}\n'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
