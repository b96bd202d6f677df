"""Run a command and report its wall time and peak RSS: `python benchmarks/launch.py REPORT.json CMD…`.

Why a separate small process: Linux carries a process's peak-RSS record across `exec`, and a
child made by `fork`/`vfork` starts from its parent's address space, so a command started
directly by the benchmark harness (which holds torch and test tensors, hundreds of MiB)
reports at least the harness's peak as its own. Started from this tiny launcher, the
command's `ru_maxrss` (from `wait4` on it) is its own. Keep this file free of imports
beyond the standard library's smallest modules.
"""

import json
import os
import sys
import time


def main() -> int:
    report, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(report, "w") as handle:
        json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "returncode": code}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
