"""Run a command and write its peak RSS, CPU time and wall time as JSON.

    python bench/peak_rss.py RESULT.json COMMAND [ARG...]

Why a wrapper: on Linux a child's ``ru_maxrss`` starts from its parent's resident set at
the fork (the high-water mark survives ``execve``), so a child of the benchmark process, which
holds hundreds of MiB of events, would report the benchmark's size rather than its own. This
wrapper imports almost nothing (about 10 MiB), so the figure it reads with ``os.wait4`` is the
command's own peak. It exits with the command's exit code.
"""

import json
import os
import sys
import time


def _own_hwm_kb() -> int | None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main() -> int:
    result, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawn(command[0], command, os.environ)
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    figures = {
        "returncode": code,
        "seconds": seconds,
        "max_rss_kb": usage.ru_maxrss,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        # The floor of the command's figure: this process's own high-water mark (VmHWM; its
        # ru_maxrss would include its parent's, for the reason above).
        "wrapper_hwm_kb": _own_hwm_kb(),
    }
    with open(result, "w") as handle:
        json.dump(figures, handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
