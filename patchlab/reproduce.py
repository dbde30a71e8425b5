"""``python -m patchlab reproduce --profile NAME``: run the notebooks in order, write ``reports/NAME/``.

A profile is ``notebooks/params/NAME.json`` (or any JSON file): one flat object of notebook parameters
(and an optional ``"description"``). Every key is checked against the parameters the notebooks declare
(:mod:`patchlab.notebook`) before anything runs; each notebook then gets the keys it declares, plus
``profile`` and ``root``, through papermill. ``reports/NAME/`` receives the executed notebooks, the
tables (CSV + Markdown) and figures (PNG) they write, and a README.md that shows them. Training runs
live in ``runs/NAME/`` and are reused while their configuration is unchanged.
"""

import argparse
import json
import os
import time
from pathlib import Path

from . import notebook as NB

SET_BY_REPRODUCE = ("profile", "root")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in NB.PROFILE_DIR.glob("*.json") if p.stem != "demo")


def load_profile(profile: str) -> tuple[str, dict]:
    """(name, values) of a profile given by name (``notebooks/params/NAME.json``) or as a JSON file path."""
    path = Path(profile)
    if path.suffix == ".json" or os.sep in profile:
        name = path.stem
    else:
        name, path = profile, NB.PROFILE_DIR / f"{profile}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no profile {profile!r} (looked for {path}); available profiles: "
                                f"{', '.join(available_profiles())}, or give the path of a JSON file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {path} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"profile {path} must hold one JSON object of parameters")
    return name, values


def resolve_profile(name: str, values: dict, *, root: str = ".", overrides: dict | None = None) -> dict[str, dict]:
    """{notebook: its parameters} for a profile, every key and type checked (raises before any work)."""
    clash = [k for k in SET_BY_REPRODUCE if k in values or k in (overrides or {})]
    if clash:
        raise NB.ParameterError(f"profile {name!r}: {clash} are set by reproduce itself (--profile, --root)")
    params = {k: v for k, v in {**values, **(overrides or {})}.items() if k not in NB.PROFILE_META}
    per_notebook = NB.split_profile({**params, "profile": name, "root": root}, where=f"profile {name!r}")
    for notebook, p in per_notebook.items():  # the configurations must resolve too (sizes, modes, ...)
        NB.make_setup(notebook, p)
    return {nb: {k: v for k, v in {**params, "profile": name, "root": root}.items() if k in NB.NOTEBOOKS[nb]}
            for nb in per_notebook}


def reproduce(profile: str, *, root: str = ".", notebooks=None, overrides: dict | None = None,
              kernel: str | None = None, progress: bool = True) -> Path:
    """Run the notebooks (default all, in order) of ``profile``; returns ``<root>/reports/<name>``."""
    import papermill as pm

    from .reports import slim_notebook, write_readme

    name, values = load_profile(profile)
    plan = resolve_profile(name, values, root=root, overrides=overrides)
    selected = list(NB.ORDER) if not notebooks else list(notebooks)
    unknown = [n for n in selected if n not in NB.NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; the notebooks are {', '.join(NB.ORDER)}")
    missing = [n for n in selected if not NB.notebook_path(n).is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {missing} not found in {NB.NOTEBOOK_DIR} (reproduce runs from a "
                                f"checkout of the repository)")
    reports = Path(root) / "reports" / name
    out_dir = reports / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_file = out_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    for nb in selected:
        out = out_dir / f"{nb}.ipynb"
        if progress:
            print(f"[reproduce {name}] running {nb} ...", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(NB.notebook_path(nb)), str(out), parameters=plan[nb], kernel_name=kernel,
                                progress_bar=progress, cwd=os.getcwd())
        except pm.PapermillExecutionError as exc:
            raise RuntimeError(f"notebook {nb} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                               f"(the executed notebook is {out})") from exc
        timings[nb] = round(time.perf_counter() - start, 1)
        timings_file.write_text(json.dumps({n: timings[n] for n in NB.ORDER if n in timings}, indent=1) + "\n")
        slim_notebook(out)
        if progress:
            print(f"[reproduce {name}] {nb} done in {timings[nb]:.1f} s", flush=True)
    meta = {k: v for k, v in values.items() if k in NB.PROFILE_META}
    shown = {**meta, **{k: v for nb in NB.ORDER for k, v in plan[nb].items() if k != "root"}}
    done = {n: timings[n] for n in NB.ORDER if n in timings and (out_dir / f"{n}.ipynb").is_file()}
    readme = write_readme(reports, profile=name, params=shown, timings=done,
                          command=f"python -m patchlab reproduce --profile {name}")
    if progress:
        print(f"[reproduce {name}] wrote {readme} ({sum(timings[n] for n in selected):.0f} s for "
              f"{len(selected)} notebook(s))")
    return reports


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
        "reproduce", help="run the notebooks with a parameter profile and write reports/PROFILE/",
        description="Run notebooks/01_train ... 04_seam_inspector in order with papermill, passing the parameters "
                    "of a profile (notebooks/params/PROFILE.json), and write reports/PROFILE/: executed notebooks, "
                    "tables (CSV + Markdown), figures (PNG) and README.md. Training runs (runs/PROFILE/) are "
                    "reused while their configuration is unchanged. Unknown parameters fail before any work.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--profile", required=True,
                   help=f"profile name ({', '.join(available_profiles())}) or path of a JSON file")
    p.add_argument("--root", default=".", help="folder that receives runs/PROFILE and reports/PROFILE")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", default=None,
                   help=f"run only these notebooks ({', '.join(NB.ORDER)})")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="override a profile parameter (VALUE read as JSON, else as a string); repeatable")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own, python3)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    reproduce(args.profile, root=args.root, notebooks=args.only, overrides=dict(args.overrides), kernel=args.kernel,
              progress=not args.no_progress)
    return 0
