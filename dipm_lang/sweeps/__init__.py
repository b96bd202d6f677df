"""`dipm sweep`: which recipe, and which `t`, `λ`, weights work (SPEC §7.7).

A sweep computes one adapter per point of a grid (or of an Optuna search), optionally evaluates
each with the user's command, tables the results, plots them and picks the best. This package
is everything around computing the adapters; the compute step is a callback the caller gives
(`dipm_lang.api.sweeps.PointCompute`: the points of a pass in one merged program), so nothing
here imports the compiler.

Modules, one job each:
- `grid`      — `--grid` items → axes → points (decimal ranges, checks with a caret under the fault)
- `points`    — a point and its folder name `NAME=VALUE,…`
- `folder`    — the sweep folder: manifest, resume and `--force` rules, lock, point staging
- `evaluate`  — the eval hook: run `CMD {adapter}`, read the last stdout line's JSON metrics
- `executors` — local processes (`--jobs`) or Ray tasks (`--executor ray`)
- `sweep`     — `Sweep`: points written → evaluated → tabled; best pick; `finish`
- `search`    — `--search optuna`: TPE, ask-and-tell around the compute step, journal storage
- `table`, `report`, `plot`, `progress` — sweep.json/.csv, the printed table, sweep.png, the bar
- `plan`      — a sweep as asked (`SweepOptions`), checked (`plan_sweep`) and run (`run_sweep`)
"""

from dipm_lang.sweeps.plan import SweepOptions, SweepPlan, execute, plan_sweep, run_sweep
from dipm_lang.sweeps.evaluate import EvalJob, EvalResult, run_eval
from dipm_lang.sweeps.executors import Executor, LocalExecutor, RayExecutor, make_executor
from dipm_lang.sweeps.folder import Fingerprint
from dipm_lang.sweeps.grid import Axis, GridError, expand, parse_grid
from dipm_lang.sweeps.points import Point, parse_point_name
from dipm_lang.sweeps.search import run_search
from dipm_lang.sweeps.sweep import Compute, EvalSpec, Objective, PointSink, Sweep, SweepSummary

__all__ = [
    "Axis", "Compute", "EvalJob", "EvalResult", "EvalSpec", "Executor", "Fingerprint", "GridError",
    "LocalExecutor", "Objective", "Point", "PointSink", "RayExecutor", "Sweep", "SweepOptions", "SweepPlan",
    "SweepSummary", "execute", "expand", "make_executor",
    "parse_grid", "parse_point_name", "plan_sweep", "run_eval", "run_search", "run_sweep",
]
