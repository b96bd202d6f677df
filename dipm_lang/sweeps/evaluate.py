"""The eval hook: run the user's command on one written point and read its metrics.

How the command runs (documented for users in `dipm sweep --help`):

- `{adapter}` is replaced by the point's folder as an absolute path, **shell-quoted**
  (`shlex.quote`), so folder names such as `t=0.3,lam=1.0` or a DIR with spaces arrive as one
  word; write `{adapter}/NAME` for one adapter of a recipe with several saves. No other braces
  are touched (`jq '{a: .b}'` is fine).
- The result is run by `/bin/sh -c` (the user's shell syntax: pipes, `&&`, `VAR=… cmd`, `2>/dev/null`),
  in the current working directory, with the environment of `dipm` plus `DIPM_SWEEP_ADAPTER`
  (the folder, unquoted) and `DIPM_SWEEP_PARAMS` (the point's values as a JSON object).
- It runs in a new session (its own process group), so a timeout ends the whole pipeline:
  SIGTERM to the group, then SIGKILL after `KILL_GRACE_S`.
- stdout and stderr go to anonymous temporary files, not pipes: a chatty evaluator cannot fill
  memory, and a background process that keeps a pipe open cannot stall the sweep.
- The **last non-blank stdout line** must be a JSON object whose values are finite numbers
  (`{"acc": 0.91, "loss": 1.3}`); everything before it is free-form logging. A non-zero exit, a
  timeout, no such line, invalid JSON, or a non-numeric value fails the point (recorded, with the
  exit code, the reason and the last stderr lines); the sweep goes on.

This module imports only the standard library on purpose: the Ray executor ships it to the
workers by value, so evaluation nodes need the evaluator's environment, not dipm_lang.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

PLACEHOLDER = "{adapter}"
KILL_GRACE_S = 3.0       # between SIGTERM and SIGKILL when a command times out
STDERR_LINES = 20        # stderr lines kept for a failed point (a traceback's end)
TAIL_BYTES = 64 * 1024   # of each stream read back: enough for the last lines, bounded for Ray
LINE_CHARS = 500         # a single kept line is clipped to this


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: `command` with `{adapter}` still in it, the point's folder and values."""

    command: str
    adapter: str            # absolute path of the point's folder
    params: dict[str, float] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation gave: `metrics` when it succeeded, else `reason` (and the exit code,
    None when the command never exited by itself) and the end of its stderr."""

    metrics: dict[str, float] | None
    exit_code: int | None
    reason: str | None = None
    stderr: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.metrics is not None

    def failure(self) -> dict[str, Any]:
        """The table's `"eval"` object of a failed point."""
        return {"exit_code": self.exit_code, "reason": self.reason, "stderr": list(self.stderr)}


def command_for(template: str, adapter: str) -> str:
    """`template` with every `{adapter}` replaced by the shell-quoted folder."""
    return template.replace(PLACEHOLDER, shlex.quote(adapter))


def run_eval(job: EvalJob, *, started: Callable[[subprocess.Popen], None] | None = None) -> EvalResult:
    """Run one evaluation to the end (or its timeout) and judge its output; never raises for
    anything the command does. `started` receives the process (the local executor keeps it, to
    end it if the sweep is interrupted)."""
    begin = time.monotonic()
    env = dict(os.environ, DIPM_SWEEP_ADAPTER=job.adapter, DIPM_SWEEP_PARAMS=json.dumps(job.params))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(command_for(job.command, job.adapter), shell=True, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as exc:
            return EvalResult(None, None, f"could not start the command: {exc}", (), time.monotonic() - begin)
        if started is not None:
            started(proc)
        timed_out = False
        try:
            code = proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            end_process_group(proc)
            code = None
        except BaseException:  # interrupted while waiting: leave nothing running behind
            end_process_group(proc)
            raise
        seconds = time.monotonic() - begin
        stdout, stderr = _tail(out), _tail(err)
    stderr_lines = tuple(_clip(line) for line in stderr.splitlines()[-STDERR_LINES:])
    if timed_out:
        return EvalResult(None, None, f"timed out after {job.timeout:g} s", stderr_lines, seconds)
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return EvalResult(None, code, how, stderr_lines, seconds)
    metrics, problem = parse_metrics(stdout)
    if problem is not None:
        return EvalResult(None, code, problem, stderr_lines, seconds)
    return EvalResult(metrics, code, None, (), seconds)


def run_eval_plain(job: dict[str, Any]) -> dict[str, Any]:
    """`run_eval` on plain data (the Ray task): a dict of `EvalJob` fields in, of `EvalResult`
    fields out, so that nothing but builtins crosses between driver and worker."""
    result = run_eval(EvalJob(**job))
    return {"metrics": result.metrics, "exit_code": result.exit_code, "reason": result.reason,
            "stderr": list(result.stderr), "seconds": result.seconds}


def result_from_plain(data: dict[str, Any]) -> EvalResult:
    return EvalResult(data["metrics"], data["exit_code"], data["reason"], tuple(data["stderr"]), data["seconds"])


def parse_metrics(stdout: str) -> tuple[dict[str, float] | None, str | None]:
    """(metrics, None) from the last non-blank line of `stdout`, or (None, what is wrong)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None, "no output on stdout (the last line must be a JSON object of metrics)"
    last = lines[-1].strip()
    try:
        value = json.loads(last, parse_constant=_no_constant)
    except ValueError:
        return None, f"the last stdout line is not JSON: {_clip(last, 200)}"
    if not isinstance(value, dict):
        return None, f"the last stdout line is JSON but not an object of metrics: {_clip(last, 200)}"
    if not value:
        return None, "the last stdout line is an empty JSON object (no metrics)"
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return None, f"metric {name!r} is not a number: {_clip(json.dumps(number), 80)}"
        try:
            finite = math.isfinite(number)
        except OverflowError:  # an integer beyond any float
            finite = False
        if not finite:
            return None, f"metric {name!r} is not a finite float: {_clip(str(number), 80)}"
    return value, None


def end_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it after KILL_GRACE_S, and reap the shell."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # The shell may be gone while a child that ignores SIGTERM lives on in the group.
    _signal_group(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the shell's pid
        else:  # Windows has no process groups of this kind
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass  # already gone


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; metrics must not


def _tail(handle) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - TAIL_BYTES))
    return handle.read().decode("utf-8", errors="replace")


def _clip(line: str, limit: int = LINE_CHARS) -> str:
    return line if len(line) <= limit else line[:limit] + "…"
