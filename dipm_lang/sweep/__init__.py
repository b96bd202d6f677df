"""`dipm sweep`: which recipe, and which `t`, `λ`, weights work (SPEC §7.7).

A sweep computes one adapter per point of a grid (or of an Optuna search), optionally evaluates
each with the user's command, tables the results, plots them and picks the best. This package
is everything around computing the adapters; the compute step is a callback the caller gives
(the compiled recipe, all points in one pass over modules), so nothing here imports the compiler.

Modules, one job each:
- `grid`      — `--grid` items → axes → points (decimal ranges, checks with a caret under the fault)
- `points`    — a point and its folder name `NAME=VALUE,…`
- `folder`    — the sweep folder: manifest, resume and `--force` rules, lock, point staging
- `evaluate`  — the eval hook: run `CMD {adapter}`, read the last stdout line's JSON metrics
- `executors` — local processes (`--jobs`) or Ray tasks (`--executor ray`)
- `sweep`     — `Sweep`: points written → evaluated → tabled; best pick; `finish`
- `search`    — `--search optuna`: TPE, ask-and-tell around the compute step, journal storage
- `table`, `report`, `plot`, `progress` — sweep.json/.csv, the printed table, sweep.png, the bar
- `cli`       — the flags, their checks (`plan_sweep`), and `run_sweep`
"""

from dipm_lang.sweep.cli import (SweepOptions, SweepPlan, add_sweep_arguments, execute, options_from, plan_sweep,
                                 run_sweep)
from dipm_lang.sweep.evaluate import EvalJob, EvalResult, run_eval
from dipm_lang.sweep.executors import Executor, LocalExecutor, RayExecutor, make_executor
from dipm_lang.sweep.folder import Fingerprint
from dipm_lang.sweep.grid import Axis, GridError, expand, parse_grid
from dipm_lang.sweep.points import Point, parse_point_name
from dipm_lang.sweep.search import run_search
from dipm_lang.sweep.sweep import Compute, EvalSpec, Objective, PointSink, Sweep, SweepSummary

__all__ = [
    "Axis", "Compute", "EvalJob", "EvalResult", "EvalSpec", "Executor", "Fingerprint", "GridError",
    "LocalExecutor", "Objective", "Point", "PointSink", "RayExecutor", "Sweep", "SweepOptions", "SweepPlan",
    "SweepSummary", "add_sweep_arguments", "execute", "expand", "make_executor", "options_from",
    "parse_grid", "parse_point_name", "plan_sweep", "run_eval", "run_search", "run_sweep",
]
