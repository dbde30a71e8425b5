"""``python -m patchlab reproduce --profile NAME``: run the notebooks in order, write the report.

A profile is ``notebooks/params/NAME.json`` (or any JSON file): the run keys every notebook shares and
the notebooks' own parameters (see :mod:`patchlab.study.params`). Every key, type, range and the
configuration of every notebook are checked before anything runs. Each notebook then runs under
papermill with the profile, the ``--set`` changes and its own parameters; what the notebooks print
(one line per training run with its speed and ETA, among others) streams to the terminal.

Where files go: trained models to ``<root>/runs/NAME/`` (reused while their configuration is
unchanged); the report (executed notebooks, tables, figures, README.md) to ``<root>/results/NAME/``,
which git does not track, or with ``--publish`` to ``<root>/reports/NAME/``, the committed report.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import options as O
from . import params as NB


def resolve_profile(profile: str, *, root: str = ".", output: str = "results",
                    overrides: dict | None = None) -> tuple[str, dict[str, dict]]:
    """(profile name, {notebook: its parameters}) with every key, value and configuration checked.

    ``overrides`` (from ``--set``) may change run keys and notebook parameters; the profile's own
    values, ``profile``, ``overrides``, ``root`` and ``output`` are what each notebook receives.
    """
    name, values = NB.load_profile(profile)
    reserved = [k for k in NB.COMMON if k in values or k in (overrides or {})]
    if reserved:
        raise NB.ParameterError(f"profile {name!r}: {reserved} are set by reproduce itself "
                                f"(--profile, --set, --root, --publish)")
    _, own = NB.split_profile(values, where=f"profile {name!r}")
    run_changes, own_changes = NB.split_profile(overrides or {}, where="--set")
    own.update(own_changes)
    where = str(Path(profile).resolve()) if Path(profile).suffix == ".json" or os.sep in profile else profile
    plan = {}
    for notebook, spec in NB.NOTEBOOKS.items():
        params = {"profile": where, "overrides": run_changes, "root": root, "output": output,
                  **{k: v for k, v in own.items() if k in spec}}
        NB.make_setup(notebook, NB.check(notebook, params, where=f"profile {name!r} ({notebook})"))
        plan[notebook] = params
    return name, plan


def reproduce(profile: str, *, root: str = ".", publish: bool = False, notebooks=None,
              overrides: dict | None = None, kernel: str | None = None, progress: bool = True,
              readme_only: bool = False) -> Path:
    """Run the notebooks (default all, in order) of ``profile``; returns the report folder
    (``<root>/results/<name>``, or ``<root>/reports/<name>`` with ``publish``). ``readme_only``: run nothing,
    rewrite the report's README.md from the files it holds."""
    import papermill as pm

    from .reports import slim_notebook, write_readme

    output = "reports" if publish else "results"
    name, plan = resolve_profile(profile, root=root, output=output, overrides=overrides)
    selected = list(NB.ORDER) if not notebooks else list(notebooks)
    unknown = [n for n in selected if n not in NB.NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; the notebooks are {', '.join(NB.ORDER)}")
    missing = [n for n in selected if not NB.notebook_path(n).is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {missing} not found in {NB.NOTEBOOK_DIR} (reproduce runs from a "
                                f"checkout of the repository)")
    reports = Path(root) / output / name
    runs_before = finished_runs(Path(root) / "runs" / name)
    began = time.perf_counter()
    out_dir = reports / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_file = out_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    for nb in [] if readme_only else selected:
        out = out_dir / f"{nb}.ipynb"
        if progress:
            print(f"[reproduce {name}] running {nb} ...", flush=True)
        start = time.perf_counter()
        try:
            execute(NB.notebook_path(nb), out, parameters=plan[nb], kernel=kernel, progress=progress)
        except pm.PapermillExecutionError as exc:
            raise RuntimeError(f"notebook {nb} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                               f"(the executed notebook is {out})") from exc
        timings[nb] = round(time.perf_counter() - start, 1)
        timings_file.write_text(json.dumps({n: timings[n] for n in NB.ORDER if n in timings}, indent=1) + "\n")
        slim_notebook(out)
        if progress:
            print(f"[reproduce {name}] {nb} done in {timings[nb]:.1f} s", flush=True)
    _, values = NB.load_profile(profile)
    shown = {**values, **(overrides or {})}
    done = {n: timings[n] for n in NB.ORDER if n in timings and (out_dir / f"{n}.ipynb").is_file()}
    command = f"python -m patchlab reproduce --profile {name}" + (" --publish" if publish else "")
    if not readme_only:
        trained = len(finished_runs(Path(root) / "runs" / name) - runs_before)
        record_duration(out_dir, command=command, seconds=time.perf_counter() - began,
                        notebooks={n: timings[n] for n in selected}, runs_trained=trained,
                        runs_reused=len(runs_before), complete=set(selected) == set(NB.ORDER))
    readme = write_readme(reports, profile=name, params=shown, timings=done, command=command)
    if progress:
        ran = "" if readme_only else f" ({sum(timings[n] for n in selected):.0f} s for {len(selected)} notebook(s))"
        print(f"[reproduce {name}] wrote {readme}{ran}")
    return reports


def execute(notebook, out, *, parameters: dict, kernel: str | None = None, progress: bool = True) -> None:
    """Run ``notebook`` with papermill into ``out``, what its cells print streaming to stdout (``progress``).

    The kernel talks to papermill over local sockets (ZeroMQ's IPC transport, in a temporary folder)
    instead of TCP on localhost, so it has nothing to warn about ("Kernel is running over TCP without
    encryption", once per notebook): the terminal keeps to the kit's own progress lines. Where the
    platform has no Unix sockets it stays on TCP."""
    import socket
    import tempfile

    import papermill as pm
    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="patchlab-kernel-") as sockets:
        config = Config()
        if hasattr(socket, "AF_UNIX"):
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = os.path.join(sockets, "kernel")
        pm.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name=kernel, progress_bar=False,
                            cwd=os.getcwd(), stdout_file=sys.stdout if progress else None, config=config)


DURATION = "reproduction.json"  # in the report's notebooks/ folder


def finished_runs(runs_dir: Path) -> set[str]:
    """Names of the run folders under ``runs_dir`` whose checkpoint is at their final step."""
    from .. import checkpoint as ckpt
    from ..runs import RunPaths, read_run_config

    done = set()
    for folder in sorted(Path(runs_dir).glob("*")) if Path(runs_dir).is_dir() else []:
        paths = RunPaths(folder)
        if paths.config.is_file() and paths.checkpoint.is_file():
            try:
                if ckpt.read_step(paths.checkpoint) >= read_run_config(folder).train.steps:
                    done.add(folder.name)
            except Exception:  # a broken run folder is not a finished run; training says what is wrong with it
                continue
    return done


def record_duration(notebooks_dir, *, command: str, seconds: float, notebooks: dict[str, float],
                    runs_trained: int, runs_reused: int, complete: bool) -> Path:
    """Write ``notebooks_dir/reproduction.json``: how long this reproduction took (wall clock), on how many
    cores, and whether it was one from scratch (every notebook, no trained run reused). ``"last"`` is this
    reproduction; ``"from_scratch"`` the latest one from scratch (kept when a later one reuses runs): the
    duration the docs state for a profile is checked against it (tests/test_docs.py)."""
    import platform

    import torch

    from ..runs import write_text_atomic

    path = Path(notebooks_dir) / DURATION
    old = json.loads(path.read_text()) if path.is_file() else {}
    last = {"command": command, "when": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
            "minutes": round(seconds / 60, 1), "notebooks_s": {k: round(v, 1) for k, v in notebooks.items()},
            "runs_trained": runs_trained, "runs_reused": runs_reused, "cpu_cores": os.cpu_count(),
            "machine": platform.machine(), "torch": torch.__version__}
    scratch = last if complete and runs_reused == 0 else old.get("from_scratch")
    record = {"last": last, "from_scratch": scratch}
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def measured_minutes(report_dir) -> float | None:
    """Minutes of the latest from-scratch reproduction recorded in ``report_dir`` (None: none recorded)."""
    path = Path(report_dir) / "notebooks" / DURATION
    scratch = json.loads(path.read_text()).get("from_scratch") if path.is_file() else None
    return scratch["minutes"] if scratch else None


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def register(subparsers) -> None:
    """Add ``reproduce`` to the CLI (see :func:`patchlab.cli._extra_commands`)."""
    p = subparsers.add_parser(
        "reproduce", help="run the notebooks with a parameter profile and write its report",
        description="Run notebooks/01_train ... 04_seam_inspector in order with papermill, passing the parameters "
                    "of a profile (notebooks/params/PROFILE.json), and write the report: executed notebooks, "
                    "tables (CSV + Markdown), figures (PNG) and README.md, to results/PROFILE/ (not tracked by "
                    "git), or to reports/PROFILE/ (the committed report) with --publish. Training runs "
                    "(runs/PROFILE/) are reused while their configuration is unchanged. Every parameter is "
                    "checked before any work.")
    p.add_argument("--profile", required=True,
                   help=f"profile name ({', '.join(NB.available_profiles())}) or path of a JSON file")
    p.add_argument("--root", default=".", help="folder that receives runs/PROFILE and the report folder")
    p.add_argument("--publish", action="store_true",
                   help="write the committed report reports/PROFILE/ instead of results/PROFILE/")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", default=None, choices=NB.ORDER,
                   help=f"run only these notebooks ({', '.join(NB.ORDER)})")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="change a profile parameter (VALUE read as JSON, else as a string); repeatable")
    p.add_argument("--readme-only", action="store_true",
                   help="run no notebook: rewrite the report's README.md from the tables and figures it holds")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own, python3)")
    O.add_progress(p)
    p.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    reproduce(args.profile, root=args.root, publish=args.publish, notebooks=args.only,
              overrides=dict(args.overrides), kernel=args.kernel, progress=not args.no_progress,
              readme_only=args.readme_only)
    return 0
