"""The operator declarations import the backend lazily: no torch until a kernel runs, and no
ImportError when something walks `sys.modules` first (a bug found by the property tests:
`import dipm_lang.ops; inspect.stack()` failed — hypothesis and torch's own import both do that)."""

from __future__ import annotations

import subprocess
import sys

from clitools import cli_env

PROBE = """
import inspect, sys
import dipm_lang.ops
inspect.stack()  # touches every module in sys.modules
assert 'torch' not in sys.modules, 'declaring operators imported torch'
from dipm_lang.ops.backend import L, arith
assert arith.plain is not None and L.LowRank.__name__ == 'LowRank'
print('OK')
"""


def test_walking_sys_modules_before_a_kernel_runs_imports_nothing_broken():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=cli_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "OK"
