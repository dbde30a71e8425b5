"""The recipe study: the paper's training objective against faster ones, on the digits, at equal compute.

Every run is the ``digits`` profile's model (32 px, dim 32, mults 1,2,2, batch 32, Adam 2e-3) at N = 1 and
N = 2 (:data:`PATCHES`), trained for the same number of steps with each recipe of :data:`RECIPES` (the
objective's keys, :mod:`patchlab.objective`) and each seed, with learning curves (confident share and digit
FID of the EMA weights, DDIM). The UNet and its passes are the same for every objective, so equal steps are
equal wall-clock (each curve point records the training seconds too). The final models of the first seed
are then sampled with every sampler setting of :data:`SAMPLER_SWEEP` (and their raw weights beside the
EMA), which says how few network evaluations each recipe needs.

    python -m patchlab.study.recipes --out reports/recipes            # about 2 hours on 2 cores
    python -m patchlab.study.recipes --out /tmp/r --steps 8 --smoke   # seconds: the tests' run

writes ``curves.csv`` (one row per run and curve point), ``samplers.csv`` (one row per final model and
sampler setting), ``config.json`` (the study's settings) and ``README.md`` (the tables and the recipe
chosen). Runs live in ``runs/recipes/`` and are reused when their configuration is unchanged.
"""

import argparse
import csv
import json
import time
from pathlib import Path

from .. import config as C
from ..metrics import uncertainty as U
from ..metrics.curves import read_curve
from ..runs import read_metrics
from ..sampling import get_sampler
from .orchestrate import ensure
from .variants import Run, is_trained, run_for

# The objectives compared: the paper's, and two published recipes that converge faster at equal compute.
RECIPES: dict[str, dict] = {
    "paper": {},  # noise, L1, uniform weights, uniform timesteps (Arakawa et al.; DDPM)
    "v + min-SNR-5": dict(prediction="v", loss="l2", weighting="min_snr", snr_gamma=5.0),  # Hang et al., 2023
    "EDM": dict(prediction="edm", loss="l2", noise_levels="lognormal"),  # Karras et al., 2022
}
PATCHES = {1: dict(patches=1, position=False, gcc=False), 2: dict(patches=2, position=True, gcc=True)}
# The digits profile's model and optimisation (notebooks/params/digits.json), trained for ``steps`` here.
BASE = dict(dataset="digits", image_size=32, channels=1, dim=32, dim_mults=(1, 2, 2), batch_size=32, lr=2e-3,
            warmup_steps=50, patch_mode="batched", device="cpu", log_every=25, checkpoint_every=250)
# (sampler, steps, spacing) for the final models: DDIM at 10 and 25 evenly spaced steps (the kit's default),
# and the second-order samplers at about the same numbers of network evaluations with quadratic spacing (Heun:
# 2 x steps - 1 evaluations).
SAMPLER_SWEEP = (("ddim", 10, "uniform"), ("ddim", 25, "uniform"), ("heun", 13, "quadratic"),
                 ("dpmpp_2m", 10, "quadratic"), ("dpmpp_2m", 25, "quadratic"))
HALF_REAL = 0.49  # the issue's bar: half the real held-out digits' confident share (0.977)


def runs(steps: int, seeds, runs_dir, *, recipes=None, patches=None) -> list[tuple[str, int, int, Run]]:
    """(recipe, N, seed, run) of every training run of the study (``recipes``, ``patches``: a subset of
    :data:`RECIPES`, :data:`PATCHES`; default all), seed by seed: the first seed's runs (the sampler sweep's)
    train first."""
    out = []
    for seed in seeds:
        for name in recipes or RECIPES:
            for n in patches or PATCHES:
                cfg = C.from_params(**BASE, **PATCHES[n], **RECIPES[name], steps=steps, seed=seed)
                out.append((name, n, seed, run_for(cfg, runs_dir, f"{name}, N={n}, seed {seed}", trains=f"N={n}")))
    return out


def train_seconds(metrics: list[dict]) -> dict[int, float]:
    """{step: seconds the run had trained by then} from its metrics.csv rows, across resumes (each process's
    ``elapsed_s`` starts again from 0; the seconds of the segments before add up)."""
    out, offset, last = {}, 0.0, 0.0
    for row in metrics:
        if row["elapsed_s"] < last:  # a resumed process
            offset += last
        last = row["elapsed_s"]
        out[row["step"]] = offset + last
    return out


def curve_rows(study) -> list[dict]:
    """One row per run and learning-curve point: recipe, N, seed, step, images seen, training seconds, metrics."""
    rows = []
    for name, n, seed, run in study:
        seconds = train_seconds(read_metrics(run.paths.metrics))
        for point in read_curve(run.paths.curve):
            step = point["step"]
            rows.append({"recipe": name, "N": n, "seed": seed, "step": step,
                         "images": step * run.config.train.batch_size, "train_s": seconds.get(step),
                         **{k: v for k, v in point.items() if k != "step"}})
    return rows


def sampler_rows(study, *, n: int, sweep=SAMPLER_SWEEP, workers: int = 1) -> list[dict]:
    """The final models of the first seed, sampled with every setting of ``sweep`` (EMA weights) and with DDIM
    25 from their raw weights: confident share, digit FID, evaluations per image, seconds; ``workers``
    models at a time (one thread each)."""
    first = min(seed for _, _, seed, _ in study)
    tasks = [(name, patches, str(run.path), n, tuple(sweep)) for name, patches, seed, run in study if seed == first]
    if workers <= 1:
        return [row for task in tasks for row in _sweep_model(task)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [row for rows in pool.map(_sweep_model, tasks) for row in rows]


def _sweep_model(task) -> list[dict]:
    """One model's rows of :func:`sampler_rows` (a worker process's task)."""
    import torch

    from ..metrics.evaluate import evaluate_run

    torch.set_num_threads(1)
    name, patches, path, n, sweep = task
    rows = []
    for sampler, steps, spacing, weights in [(*s, "ema") for s in sweep] + [("ddim", 25, "uniform", "model")]:
        start = time.perf_counter()
        m = evaluate_run(path, n=n, sampler=sampler, steps=steps, spacing=spacing, weights=weights, device="cpu",
                         features="offline", write=False, progress=False)
        rows.append({"recipe": name, "N": patches, "weights": weights, "sampler": sampler, "steps": steps,
                     "spacing": spacing, "evaluations": get_sampler(sampler).evaluations(steps),
                     "confident": m["confident_fake"], "digit_fid": m["digit_fid_fake"],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name} N={patches} {weights} {sampler} {steps} {spacing}: confident {rows[-1]['confident']:.3f}, "
              f"digit FID {rows[-1]['digit_fid']:.1f}", flush=True)
    return rows


# --- the report ------------------------------------------------------------------------------------------


def _share(value: float | None, n: int) -> str:
    """``0.55 [0.49, 0.61]``: a confident share of ``n`` samples with its Wilson 95% interval."""
    if value is None:
        return "-"
    i = U.wilson(round(value * n), n)
    return f"{value:.2f} [{i.low:.2f}, {i.high:.2f}]"


def _pooled(values: list[float], n: int) -> U.Interval:
    """The Wilson interval of the shares ``values`` of ``n`` samples each, pooled (k of len(values) x n)."""
    return U.wilson(sum(round(v * n) for v in values), n * len(values))


def reached(rows: list[dict], bar: float = HALF_REAL) -> dict[tuple, int | None]:
    """{(recipe, N, seed): the images seen at the first curve point whose confident share is >= ``bar``, or
    None}."""
    out = {}
    for row in sorted(rows, key=lambda r: r["step"]):
        key = (row["recipe"], row["N"], row["seed"])
        out.setdefault(key, None)
        if out[key] is None and row["confident"] is not None and row["confident"] >= bar:
            out[key] = row["images"]
    return out


def final_points(rows: list[dict]) -> dict[tuple, list[dict]]:
    """{(recipe, N): the last curve point of each seed}."""
    last: dict[tuple, dict] = {}
    for row in rows:
        key = (row["recipe"], row["N"], row["seed"])
        if key not in last or row["step"] > last[key]["step"]:
            last[key] = row
    out: dict[tuple, list[dict]] = {}
    for (recipe, n, _), row in sorted(last.items(), key=lambda kv: kv[0][2]):
        out.setdefault((recipe, n), []).append(row)
    return out


def choose(rows: list[dict], samples: int) -> tuple[str, str]:
    """(the recommended recipe, why): the highest confident share at the last point, pooled over seeds and
    N = 1, 2; a tie with the runner-up (overlapping intervals) goes to the one whose N = 1 runs reached the
    bar with fewer images on average (a run that did not counts as one curve point past its last), then to
    the higher share."""
    finals = final_points(rows)
    recipes = list(dict.fromkeys(r for r, _ in finals))
    shares = {r: [p["confident"] for (recipe, _), points in finals.items() if recipe == r for p in points]
              for r in recipes}
    share = {r: sum(v) / len(v) for r, v in shares.items()}
    pooled = {r: _pooled(v, samples) for r, v in shares.items()}
    ranked = sorted(recipes, key=share.get, reverse=True)
    best, why = ranked[0], (f"the highest confident share at the last point, {share[ranked[0]]:.2f} pooled over "
                            f"seeds and N = 1, 2, its interval apart from the next recipe's")
    if len(ranked) > 1 and pooled[best].overlaps(pooled[ranked[1]]):
        cost = {r: _images_at_n1(rows, r) for r in ranked[:2]}
        best = min(ranked[:2], key=lambda r: (cost[r], -share[r]))
        other = ranked[1] if best == ranked[0] else ranked[0]
        why = (f"{ranked[0]} and {ranked[1]} tie on the confident share at the last point ({share[ranked[0]]:.2f} "
               f"and {share[ranked[1]]:.2f} pooled over seeds and N = 1, 2; the intervals overlap); at N = 1 "
               f"{best} reached the bar after {cost[best]:,.0f} images on average, {other} after "
               f"{cost[other]:,.0f} (a run that did not reach it counted one curve point past the last)"
               if cost[best] != cost[other] else
               f"{ranked[0]} and {ranked[1]} tie on the confident share at the last point and reached the bar "
               f"alike; {best} scores higher")
    return best, why


def _images_at_n1(rows: list[dict], recipe: str) -> float:
    """The mean images the recipe's N = 1 runs needed to reach the bar (one curve point past the last for a run
    that did not)."""
    first = reached(rows)
    mine = [(key, v) for key, v in first.items() if key[0] == recipe and key[1] == 1]
    if not mine:
        return float("inf")
    images = sorted({r["images"] for r in rows})
    beyond = images[-1] + (images[-1] - images[-2] if len(images) > 1 else images[-1])
    return sum(v if v is not None else beyond for _, v in mine) / len(mine)


def write_report(out: Path) -> Path:
    """README.md and figures/learning_curves.png of a study folder (curves.csv, samplers.csv, config.json)."""
    settings = json.loads((out / "config.json").read_text())
    n = settings["samples"]
    rows = _read_csv(out / "curves.csv")
    plot_curves(rows, out / "figures" / "learning_curves.png", samples=n)
    best, why = choose(rows, n)
    first = reached(rows)
    seeds = settings["seeds"]
    lines = [
        "# Training recipes: the paper's objective against faster ones (digits, 32 px)", "",
        f"Written by `python -m patchlab.study.recipes --out {out}` (see `patchlab/study/recipes.py`). Every run is "
        f"the `digits` profile's model (dim 32, mults 1,2,2, batch 32, Adam 2e-3) trained {settings['steps']} steps "
        f"({settings['steps'] * 32:,} images) per recipe, N and seed ({', '.join(map(str, seeds))}); learning "
        f"curves every {settings['curve_every']} steps from {n} DDIM-25 samples of the EMA weights. A run took "
        f"{settings['run_minutes_median']:.0f} minutes (median, with its curve; {settings['workers']} runs at a "
        f"time on 2 CPU cores). The UNet and "
        f"its passes are the same for every recipe, so equal images are equal wall-clock (`train_s` in "
        f"curves.csv). Confident: the share of samples that the kit's digit classifier recognises with confidence "
        f">= 0.9 (real held-out digits: 0.98), with its 95% Wilson interval; digit FID: the Fréchet distance on "
        f"the classifier's features to as many real digits (lower is better).", "",
        "| recipe | objective |", "|---|---|",
        *[f"| {name} | {_objective_label(name)} |" for name in settings["recipes"]], "",
        f"**Recommended: {best}** ({why}).", "",
        "## Images until the confident share reaches half the real digits' (0.49)", "",
        "| recipe | N | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---|" * len(seeds),
    ]
    for recipe in settings["recipes"]:
        for patches in settings["patches"]:
            cells = [(recipe, patches, s) for s in seeds]
            lines.append(f"| {recipe} | {patches} | " + " | ".join(
                "not trained" if c not in first else f"{first[c]:,}" if first[c] is not None else
                f"not in {settings['steps'] * 32:,}" for c in cells) + " |")
    missing = len(settings["recipes"]) * len(settings["patches"]) * len(seeds) - len(first)
    if missing:
        lines += ["", f"{missing} run(s) of the full design were not trained (left out for time): the table says "
                      f"which; `make recipes` trains them all (the runs above are reused)."]
    lines += ["", "## The last point", "", "| recipe | N | confident (each seed) | pooled | digit FID (each seed) |",
              "|---|---|---|---|---|"]
    for (recipe, patches), points in final_points(rows).items():
        pooled = _pooled([p["confident"] for p in points], n)
        shares = " / ".join(_share(p["confident"], n) for p in points)
        fids = " / ".join(f"{p['digit_fid']:.0f}" for p in points)
        mean = sum(p["confident"] for p in points) / len(points)
        lines.append(f"| {recipe} | {patches} | {shares} | {mean:.2f} [{pooled.low:.2f}, {pooled.high:.2f}] | {fids} |")
    lines += ["", "![learning curves](figures/learning_curves.png)", ""]
    if (out / "samplers.csv").is_file():
        lines += _sampler_section(_read_csv(out / "samplers.csv"), n)
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _sampler_section(rows: list[dict], n: int) -> list[str]:
    lines = ["## Samplers on the final models (first seed)", "",
             f"{n} samples each; `model` rows sample the raw weights instead of the EMA's. Evaluations: network "
             "evaluations per image (a patch model runs each on every patch).", "",
             "| recipe | N | weights | sampler | steps | spacing | evaluations | confident | digit FID | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['N']} | {r['weights']} | {r['sampler']} | {r['steps']} | {r['spacing']} | "
                     f"{r['evaluations']} | {_share(r['confident'], n)} | {r['digit_fid']:.0f} | {r['seconds']:.0f} |")
    return lines + [""]


def _objective_label(name: str) -> str:
    from ..objective import build

    return build(C.from_params(**BASE, **PATCHES[1], **RECIPES[name])).label()


def plot_curves(rows: list[dict], path: Path, *, samples: int) -> Path:
    """Confident share (with the pooled Wilson band) and digit FID against images seen, a panel per N, a
    colour per recipe (thick: mean over seeds; thin: each seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    patches = sorted({r["N"] for r in rows})
    fig, axes = plt.subplots(2, len(patches), figsize=(6.5 * len(patches), 7), squeeze=False, sharex=True)
    colours = plt.get_cmap("tab10")
    for col, n in enumerate(patches):
        for i, recipe in enumerate(recipes):
            mine = [r for r in rows if r["recipe"] == recipe and r["N"] == n]
            steps = sorted({r["images"] for r in mine})
            for row_axis, key in enumerate(("confident", "digit_fid")):
                ax = axes[row_axis][col]
                for seed in sorted({r["seed"] for r in mine}):
                    pts = sorted((r["images"], r[key]) for r in mine if r["seed"] == seed)
                    ax.plot(*zip(*pts), color=colours(i), alpha=0.35, lw=1)
                means = [sum(r[key] for r in mine if r["images"] == s) / sum(1 for r in mine if r["images"] == s)
                         for s in steps]
                ax.plot(steps, means, color=colours(i), lw=2.2, marker="o", label=recipe)
                if key == "confident":
                    bands = [_pooled([r[key] for r in mine if r["images"] == s], samples) for s in steps]
                    ax.fill_between(steps, [b.low for b in bands], [b.high for b in bands], color=colours(i),
                                    alpha=0.15)
        axes[0][col].axhline(HALF_REAL, color="grey", ls="--", lw=1)
        seeds = len({r["seed"] for r in rows if r["N"] == n})
        runs = f"{seeds} seed{'s' if seeds > 1 else ''}"
        axes[0][col].set_title(f"N = {n} ({runs}): confident share (real digits 0.98; dashed: 0.49)")
        axes[1][col].set_title(f"N = {n} ({runs}): digit FID (lower is better)")
        axes[1][col].set_xlabel("training images seen")
        axes[0][col].set_ylim(0, 1)
    axes[0][0].legend(loc="upper left")
    fig.suptitle(f"Training recipes on the digits: learning curves (EMA weights, {samples} DDIM-25 samples a point)\n"
                 f"thick: mean over seeds, thin: each seed, band: the confident share's pooled 95% interval")
    for ax in axes.flat:
        ax.set_xticks(sorted({r["images"] for r in rows}))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _read_csv(path: Path) -> list[dict]:
    def value(v):
        try:
            number = float(v)
        except ValueError:
            return v if v != "" else None
        return int(number) if number.is_integer() and "." not in v else number

    with open(path, newline="") as fh:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m patchlab.study.recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for curves.csv, samplers.csv, config.json")
    p.add_argument("--runs", type=Path, default=Path("runs/recipes"), help="where the runs are trained")
    p.add_argument("--steps", type=int, default=750, help="training steps of every run (750 x 32 = 24,000 images)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=None, help="a subset of the recipes")
    p.add_argument("--patches", type=int, nargs="+", choices=tuple(PATCHES), default=None, help="a subset of N")
    p.add_argument("--curve-every", type=int, default=250)
    p.add_argument("--samples", type=int, default=128, help="samples per curve point and per sampler setting")
    p.add_argument("--workers", type=int, default=2, help="runs trained (or swept) at once, one thread each")
    p.add_argument("--smoke", action="store_true", help="tiny settings for the tests (not a result)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: report the runs that are trained already (the others are left out)")
    p.add_argument("--no-sweep", action="store_true", help="no sampler sweep (an existing samplers.csv is kept)")
    args = p.parse_args(argv)
    study = runs(args.steps, args.seeds, args.runs, recipes=args.recipes, patches=args.patches)
    if args.no_train:
        study = [entry for entry in study if is_trained(entry[3])]
        if not study:
            raise SystemExit(f"no run of the study is trained in {args.runs}: run without --no-train first")
    else:
        ensure([run for *_, run in study], workers=args.workers, threads=1,
               curve={"every": args.curve_every, "n": args.samples})
    write_csv(args.out / "curves.csv", curve_rows(study))
    sweep = (("ddim", 2, "uniform"), ("heun", 2, "quadratic"), ("dpmpp_2m", 2, "quadratic")) if args.smoke \
        else SAMPLER_SWEEP
    if not args.no_sweep:
        write_csv(args.out / "samplers.csv", sampler_rows(study, n=args.samples, sweep=sweep, workers=args.workers))
    minutes = sorted(max(train_seconds(read_metrics(run.paths.metrics)).values()) / 60 for *_, run in study)
    settings = {"recipes": {r: RECIPES[r] for r in args.recipes or RECIPES}, "patches": args.patches or list(PATCHES),
                "base": {**BASE, "dim_mults": list(BASE["dim_mults"])}, "steps": args.steps,
                "seeds": args.seeds, "runs": [[name, n, seed] for name, n, seed, _ in study],
                "curve_every": args.curve_every, "samples": args.samples, "sampler_sweep": [list(s) for s in sweep],
                "run_minutes_median": round(minutes[len(minutes) // 2], 1), "workers": args.workers}
    (args.out / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {write_report(args.out)}")


if __name__ == "__main__":
    main()
