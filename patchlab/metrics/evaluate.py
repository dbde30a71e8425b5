"""Evaluate a trained run: sample, load as many real images, compute every metric, write it down.

    python -m patchlab evaluate RUN_DIR --n 256 --steps 50

writes ``RUN_DIR/eval/metrics.json`` (all values and how they were obtained), ``metrics.csv`` (the
same as one row, for tables) and ``samples.png`` (the first samples with patch borders), and prints a
table. :func:`evaluate_run` does the same from Python (notebooks).

Metrics (see :mod:`patchlab.metrics`): seam score of the samples and of real images at the run's patch
borders (a run with N=1 is measured at the 2 x 2 borders, as a baseline for patch models), and their
ratio; SWD x 1e3; KID with its standard error; FID when asked for or with at least
:data:`FID_AUTO_MIN` images (it is strongly biased for fewer); the dataset's content score (:mod:`.content`). KID and
FID use the standard Inception-v3 features when their weights are available offline, otherwise an
offline extractor; the ``features`` entry names it, and ``features_standard`` says whether the
numbers are comparable to published ones. Every score of the samples comes with its 95% interval
(``key_lo``, ``key_hi``: :mod:`patchlab.metrics.uncertainty`); ``interval_level`` and ``resamples`` say how
they were obtained.
"""

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed
from .. import metrics as M
from .. import options as O
from .. import tiling as T
from ..checkpoint import read_step
from ..config import Config
from ..data import MissingSplitError, load_images, make_dataset
from ..execution import Execution
from ..runs import RunPaths, load_run, read_run_config, write_text_atomic
from ..runtime import Stream, derived_seed, make_generator
from ..sampling import get_sampler, sample
from ..viz import save_grid
from . import content
from . import uncertainty as U
from .sample_set import score_samples

FID_AUTO_MIN = 1000


def evaluate_run(run_dir, *, n: int = 256, sampler: str = "ddim", steps: int | None = 50, spacing: str = "uniform",
                 seed: int = 0,
                 tiling=None, execution: Execution | None = None, weights: str = "ema", device="auto",
                 batch_size: int = 64, fid: bool | None = None, features: str = "auto", inception_weights=None,
                 data_root=None, out_dir=None, write: bool = True, progress: bool = False) -> dict:
    """Sample ``n`` images from the run in ``run_dir`` and compare them with ``n`` real images.

    Samples: ``sampler`` (one of :data:`patchlab.sampling.SAMPLERS`: "ddim", "heun" or "dpmpp_2m" with ``steps``
    steps, capped at T, spaced as ``spacing`` says, or "ddpm" with all T), in batches of
    ``batch_size`` whose noise comes from ``make_generator(derived_seed(seed, batch index))``, so a result
    is a function of (checkpoint, n, steps, seed, batch_size); ``tiling`` as in
    :func:`patchlab.sampling.sample` (a :class:`patchlab.tiling.Tiling`, a name, or None: the model's own),
    ``execution`` how its steps run (its precision ``"bf16-weights"`` loads the weights in bf16; a fast
    path gives the same samples up to round-off). Real images: the run's dataset (``data_root`` overrides
    the run's, e.g. on another machine), the ``"test"`` split when it has at least ``n`` images, else the
    larger of test and train; no flips; ``n`` of them picked at random from ``seed``. Metrics: those of
    :func:`patchlab.metrics.sample_set.score_samples` (the seam score on every line where a window border
    fell, ``seam_lines``); ``fid``: True / False / None (only with ``n >= FID_AUTO_MIN``); ``features``,
    ``inception_weights``: see :func:`patchlab.metrics.feature_extractor`.

    Returns a flat dict (the row written to ``metrics.csv``); with ``write`` it also goes to
    ``out_dir`` (default ``RUN_DIR/eval``) as metrics.json, metrics.csv and samples.png.

    Under torchrun the W processes share the sampling (batch i on rank i mod W, each on its own
    device) and rank 0 gathers the samples and computes the metrics: the result is the same as one
    process's, in about 1/W of the sampling time. Other ranks return None.
    """
    _check_evaluation(n, weights, batch_size)
    start, execution, paths = time.perf_counter(), execution or Execution(), RunPaths(Path(run_dir))
    with distributed.join(device) as (world, device):
        model, schedule, cfg = load_run(paths.root, ema=weights == "ema", device=device,
                                         precision=execution.precision)
        tiling = T.build(cfg.model, tiling)
        step = read_step(paths.checkpoint)
        steps = schedule.timesteps if get_sampler(sampler).all_steps or steps is None else \
            min(steps, schedule.timesteps)
        fake = generate(model, schedule, n, sampler=sampler, steps=steps, spacing=spacing, seed=seed, tiling=tiling,
                        execution=execution, batch_size=batch_size, progress=progress and world.main, world=world)
    if fake is None:  # another rank of a torchrun job: rank 0 has the samples and computes the metrics
        return None
    real, split = real_images(cfg, n, seed=seed, data_root=data_root, progress=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.OfflineFeaturesWarning)  # the name is recorded and printed
        extractor = M.feature_extractor(features, weights=inception_weights, device=device)
    scores = score_samples(fake, real, tiling=tiling, steps=steps, dataset=cfg.data.dataset, extractor=extractor,
                           swd_generator=make_generator(derived_seed(seed, Stream.EVAL_SWD)),
                           kid_generator=make_generator(derived_seed(seed, Stream.EVAL_KID)),
                           resample_generator=make_generator(derived_seed(seed, Stream.RESAMPLE)),
                           fid=fid if fid is not None else min(len(real), n) >= FID_AUTO_MIN, batch_size=batch_size,
                           progress=progress)
    result = {"run_dir": str(paths.root), "step": step, "dataset": cfg.data.dataset, "real_split": split,
              "image_size": cfg.model.image_size, "channels": cfg.model.channels, "patches": cfg.model.patches,
              "seam_patches": scores["seam_patches"], "sampler": sampler, "steps": steps,
              **({} if spacing == "uniform" else {"spacing": spacing}),
              "patch_mode": execution.patch_mode, **tiling.settings(), "seam_lines": scores["seam_lines"],
              "weights": weights, "seed": seed, "batch_size": batch_size, "n_fake": n, "n_real": len(real),
              **{k: scores[k] for k in RESULT_SCORES + content.for_dataset(cfg.data.dataset).result_keys()},
              "interval_level": U.LEVEL, "resamples": U.RESAMPLES, "features": extractor.name,
              "features_standard": extractor.standard, "device": str(device),
              "seconds": round(time.perf_counter() - start, 2)}
    if write:
        write_results(result, fake, scores["seam_patches"], Path(out_dir) if out_dir else paths.evaluation)
    return result


# the scores of score_samples in the order of a result's columns, each interval after its value
# (then the dataset's content score's, patchlab.metrics.content)
RESULT_SCORES = ("seam_fake", *U.columns("seam_fake"), "seam_real", "seam_ratio", "swd", *U.columns("swd"), "kid",
                 "kid_stderr", *U.columns("kid"), "mean_fake", "mean_real", "fid", *U.columns("fid"))


def _check_evaluation(n, weights: str, batch_size: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 4:
        raise ValueError(f"n must be an integer >= 4 (KID needs 4 images per set), got {n!r}")
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def generate(model, schedule, n: int, *, sampler: str = "ddim", steps: int | None = 50, spacing: str = "uniform",
             seed: int = 0,
             tiling=None, execution: Execution | None = None, batch_size: int = 64, progress: bool = False,
             world: distributed.World | None = None):
    """``n`` samples [n x C x H x W] on the CPU, in batches; batch i draws from seed ``derived_seed(seed, i)``.
    ``spacing``, ``tiling`` and ``execution`` as in :func:`patchlab.sampling.sample` (one execution for all
    batches: a fast path compiles each shape once).

    With a ``world`` of W processes (torchrun), rank r samples the batches i with i mod W = r and rank 0
    gathers them all: it returns the same tensor as one process would, the other ranks None."""
    world = world or distributed.World()
    device = next(model.parameters()).device
    tiling, execution = T.build(model.config, tiling), execution or Execution()
    starts = list(range(0, n, batch_size))
    mine = {}
    for i in tqdm(range(world.rank, len(starts), world.size), desc="sampling batches",
                  disable=not progress or len(starts) == 1):
        mine[i] = sample(model, schedule, min(batch_size, n - starts[i]), sampler=sampler,
                         steps=None if get_sampler(sampler).all_steps else steps, spacing=spacing, tiling=tiling,
                         execution=execution,
                         generator=make_generator(derived_seed(seed, i), device), progress=progress).cpu()
    everything = distributed.gather_to_main(world, mine)
    return None if everything is None else torch.cat([everything[i] for i in range(len(starts))])


def real_images(cfg: Config, n: int, *, seed: int = 0, data_root=None,
                progress: bool = False) -> tuple[torch.Tensor, str]:
    """Up to ``n`` real images [m x C x H x W] of the run's dataset, and the split they come from.

    The ``"test"`` split when it holds at least ``n`` images; otherwise whichever of test and train is
    larger (a dataset without a test split gives train). Never flipped. Picked at random from ``seed``.
    """
    root = data_root if data_root is not None else cfg.data.data_root
    found = {}
    for split in ("test", "train"):
        try:
            found[split] = make_dataset(cfg.data.dataset, root, image_size=cfg.model.image_size,
                                        channels=cfg.model.channels, split=split,
                                        size=max(n, cfg.data.dataset_size), flip=False)
        except MissingSplitError:
            continue
        if split == "test" and len(found[split]) >= n:
            break
    split = max(found, key=lambda s: (len(found[s]), s == "test"))
    if "test" not in found:
        warnings.warn(RealImagesWarning(
            f"the real images come from the training split: the {cfg.data.dataset} data at {root} has no held-out "
            f"split (CelebA: list_eval_partition.txt next to img_align_celeba), so the scores compare the samples "
            f"with images the model trained on"), stacklevel=2)
    dataset = found[split]
    count = min(n, len(dataset))
    order = torch.randperm(len(dataset), generator=make_generator(derived_seed(seed, Stream.EVAL_REAL)))[:count]
    return load_images(dataset, sorted(order.tolist()), progress=progress), split


class RealImagesWarning(UserWarning):
    """The real images an evaluation compares with are not held out from training."""


def real_floor(cfg: Config, n: int, *, seed: int = 0, features: str = "offline", data_root=None,
               batch_size: int = 64) -> dict:
    """What SWD and KID give for real images against other real images: the noise floor below which two
    models' values do not differ. The real set of :func:`real_images` against ``n`` other images of the
    dataset (the train split's, or the rest of a single split). {"swd", "kid", "kid_stderr", "n"}."""
    reference, split = real_images(cfg, n, seed=seed, data_root=data_root)
    root = data_root if data_root is not None else cfg.data.data_root
    other_split = "train" if split == "test" else "test"
    try:
        other = make_dataset(cfg.data.dataset, root, image_size=cfg.model.image_size, channels=cfg.model.channels,
                             split=other_split, size=max(n, cfg.data.dataset_size), flip=False)
    except MissingSplitError:
        other = None
    if other is None or len(other) < 4:
        raise ValueError(f"the {cfg.data.dataset} dataset has no second set of real images for a noise floor")
    others = load_images(other, range(min(n, len(other))))
    extractor = M.feature_extractor(features)
    kid, kid_stderr = M.kid_from_features(extractor(reference, batch_size=batch_size),
                                          extractor(others, batch_size=batch_size),
                                          generator=make_generator(derived_seed(seed, Stream.EVAL_KID)))
    swd = M.sliced_wasserstein(reference, others, generator=make_generator(derived_seed(seed, Stream.EVAL_SWD)))
    return {"swd": swd, "kid": kid, "kid_stderr": kid_stderr, "n": min(len(reference), len(others))}


def write_results(result: dict, samples: torch.Tensor, patches: int, out_dir: Path) -> Path:
    """metrics.csv (one row), samples.png (up to 64 samples, borders drawn) and, last and atomically (a kill
    leaves the previous file or none, never half of one), metrics.json in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result))
        writer.writeheader()
        writer.writerow({k: "" if v is None else v for k, v in result.items()})
    save_grid(samples[:64], out_dir / "samples.png", patches=patches,
              scale=max(1, 64 // samples.shape[-1]))
    write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    return out_dir


def format_table(result: dict) -> str:
    """The human-readable summary printed by the CLI."""
    def num(v, fmt=".4f"):
        return "-" if v is None else format(v, fmt)

    def interval(key, fmt):
        found = U.read(result, key)
        return "" if found is None else f"   [{num(found.low, fmt)}, {num(found.high, fmt)}]"

    fid_note = "" if result["fid"] is not None else f"   (not computed: needs --fid or n >= {FID_AUTO_MIN})"
    lines = [
        f"evaluation of {result['run_dir']} at step {result['step']}: {result['dataset']}, "
        f"{result['image_size']} px, N={result['patches']}",
        f"  {result['n_fake']} samples ({result['sampler']}, {result['steps']} steps, "
        f"{result.get('spacing', 'uniform')} spacing, seed {result['seed']}) vs "
        f"{result['n_real']} real images ({result['real_split']} split)",
        f"  seam score   samples {num(result['seam_fake'], '.3f')}{interval('seam_fake', '.3f')}   "
        f"real {num(result['seam_real'], '.3f')}   "
        f"ratio {num(result['seam_ratio'], '.3f')}   (on the border lines {result['seam_lines']}; "
        f"windows {result['windows']}" + (f", the global view at t >= {result['global_from']} T"
                                          if "global_from" in result else "") + ")",
        f"  SWD x1e3     {num(result['swd'], '.2f')}{interval('swd', '.2f')}",
        f"  KID          {num(result['kid'], '.5f')} +- {num(result['kid_stderr'], '.5f')}{interval('kid', '.5f')}",
        f"  FID          {num(result['fid'], '.2f')}{interval('fid', '.2f')}{fid_note}",
    ]
    for col in content.columns(result):
        if result.get(f"{col.key}_fake") is not None:
            lines.append(f"  {col.key:<12} samples {num(result[f'{col.key}_fake'], '.3f')}"
                         f"{interval(f'{col.key}_fake', '.3f')}   real {num(result[f'{col.key}_real'], '.3f')}")
    if result.get("digit_classifier_accuracy") is not None:
        lines.append(f"  (digit classifier: {result['digit_classifier_accuracy']:.3f} held-out accuracy)")
    if "interval_level" in result:
        lines.append(f"  [low, high]: {result['interval_level']:.0%} intervals over the samples "
                     f"({result['resamples']} resamples; Wilson for shares)")
    lines.append(f"  features     {result['features']}")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add ``evaluate`` to the CLI (see :func:`patchlab.cli._extra_commands`)."""
    p = subparsers.add_parser(
        "evaluate", help="sample from a trained run and compute seam score, SWD, KID, FID, the content score",
        description="Sample from a trained run, load as many real images of its dataset, compute the metrics of "
                    "patchlab.metrics and write RUN_DIR/eval/metrics.json, metrics.csv and samples.png.")
    p.add_argument("run_dir", type=Path, nargs="?", help="a run directory written by 'train'")
    p.add_argument("--run-dir", dest="run_dir_option", type=Path, help="the run directory (instead of RUN_DIR)")
    p.add_argument("--samples", "--n", dest="n", type=O.positive_int, default=256,
                   help="number of samples (and of real images); under torchrun write --samples (torchrun's own "
                        "parser takes --n for an abbreviation of its options)")
    O.add_sampler(p, steps=50)
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, the real-image choice and the metrics")
    O.add_patch_mode(p)
    O.add_images_per_pass(p)
    O.add_windows(p)
    O.add_weights(p)
    p.add_argument("--batch-size", type=O.positive_int, default=64, help="images per sampling / feature batch")
    O.add_device(p)
    O.add_precision(p)
    O.add_fast(p)
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                   help=f"compute FID (default: only with --n >= {FID_AUTO_MIN})")
    p.add_argument("--features", choices=M.FEATURE_KINDS, default="auto",
                   help="FID/KID features: standard Inception-v3, offline random CNN, or auto (Inception if available)")
    p.add_argument("--inception-weights", type=Path, default=None,
                   help=f"Inception FID weights file (else ${M.INCEPTION_ENV}, else the torch hub cache)")
    p.add_argument("--data-root", type=Path, default=None, help="real data folder, overriding the run's data_root")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/eval)")
    O.add_progress(p)
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    if (args.run_dir is None) == (args.run_dir_option is None):
        raise ValueError("give the run directory once: as RUN_DIR or as --run-dir")
    run_dir = args.run_dir or args.run_dir_option
    O.check_output_folder(args.out, "--out")
    tiling = O.tiling(args, read_run_config(run_dir).model)  # checked against the model before any work
    result = evaluate_run(run_dir, n=args.n, steps=args.steps, spacing=args.spacing, seed=args.seed,
                          sampler=args.sampler, tiling=tiling,
                          execution=O.execution(args), weights=args.weights, device=args.device,
                          batch_size=args.batch_size, fid=args.fid, features=args.features,
                          inception_weights=args.inception_weights, data_root=args.data_root, out_dir=args.out,
                          progress=not args.no_progress)
    if result is None:  # not rank 0 of a torchrun job
        return 0
    print(format_table(result))
    out = args.out or RunPaths(Path(result["run_dir"])).evaluation
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and {out / 'samples.png'}")
    return 0
