"""Command line: ``python -m patchlab {train,sample,config,profile,plan,evaluate,reproduce} ...``.

Every configuration parameter is an option of ``train`` (generated from the config dataclasses, with
their docs as help), so the CLI and the Python API can never drift apart.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from . import options as O
from .distributed import PeerError, main_process
from .runs import RunPaths, load_run, read_run_config
from .runtime import make_generator, resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        # Bad input, or a file that cannot be read or written: one clear line, no traceback
        # (set PATCHLAB_DEBUG=1 to see it). Under torchrun, rank 0 reports what every rank would.
        if os.environ.get("PATCHLAB_DEBUG"):
            raise
        if not isinstance(exc, PeerError):
            rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
            print(f"{rank}error: {describe_error(exc)}", file=sys.stderr)
        return 2


def describe_error(exc: BaseException) -> str:
    """One line for an exception; an ``OSError`` names its file and its cause (e.g. a full disk)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = O.Parser(prog="python -m patchlab",
                      description="Memory-efficient patch-based diffusion models: train, sample, inspect configs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train a model (resumes if the run directory holds a checkpoint)",
        description="Train a patch-based DDPM. The run directory receives config.json, checkpoint.pt, "
                    "metrics.csv and samples/*.png; running the same command again resumes the run.")
    train.add_argument("--run-dir", required=True, type=Path, help="where the run's files go")
    O.add_config_file(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--curve-every", type=O.non_negative_int, default=0, metavar="STEPS",
                       help="record a learning curve (RUN_DIR/curve.csv: seam score, KID, SWD, coherence of the EMA "
                            "weights) every this many steps; 0: off")
    train.add_argument("--curve-samples", type=O.positive_int, default=64, help="samples per learning-curve point")
    train.add_argument("--curve-raw", action="store_true",
                       help="the learning curve scores the raw weights beside the EMA's (columns raw_...; a short "
                            "run's EMA lags its weights)")
    O.add_config_options(train)
    train.set_defaults(handler=_train)

    smp = sub.add_parser("sample", help="sample images from a trained run",
                         description="Generate images with a trained run's EMA weights and write them as a PNG grid.")
    smp.add_argument("--run-dir", required=True, type=Path, help="a run directory written by 'train'")
    smp.add_argument("--n", type=O.positive_int, default=16, help="number of images")
    O.add_sampler(smp, steps=None)
    smp.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 deterministic, 1 DDPM-like)")
    O.add_patch_mode(smp)
    O.add_images_per_pass(smp)
    O.add_windows(smp)
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    O.add_weights(smp)
    O.add_device(smp)
    O.add_precision(smp)
    O.add_fast(smp)
    smp.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/samples/sample_*.png)")
    smp.add_argument("--tensor-out", type=Path, default=None, help="also save the images [n x C x H x W] (.pt)")
    smp.add_argument("--borders", action="store_true", help="draw the patch borders on the grid")
    smp.add_argument("--no-progress", action="store_true", help="no progress bar")
    smp.set_defaults(handler=_sample)

    show = sub.add_parser("config", help="print the resolved configuration (JSON) for the given options")
    O.add_config_file(show)
    O.add_config_options(show)
    show.set_defaults(handler=_show_config)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list:
    """Subcommands that live next to the feature they drive: each module has ``register(subparsers)``
    that adds its parser and sets ``handler``. Add one import here per module."""
    from .memory import cli as memory_cli
    from .metrics import evaluate
    from .study import findings, reproduce
    return [memory_cli.register, evaluate.register, reproduce.register, findings.register]


def _train(args: argparse.Namespace) -> int:
    from .metrics.curves import evaluator_for
    from .training import train
    cfg = O.resolve_config(args)
    curve = evaluator_for(cfg, args.run_dir, every=args.curve_every, n=args.curve_samples, raw=args.curve_raw)
    result = train(cfg, args.run_dir, progress=not args.no_progress, evaluator=curve)
    code = {"SIGINT": 130, "SIGTERM": 143}.get(result.signal, 130) if result.interrupted else 0
    if not main_process():  # under torchrun, rank 0 alone reports
        return code
    paths = RunPaths(result.run_dir)
    last = f", last loss {result.losses[result.step]:.4f}" if result.step in result.losses else ""
    print(f"run {paths.root}: {result.step}/{cfg.train.steps} steps{last}")
    print(f"  config      {paths.config}\n  checkpoint  {paths.checkpoint}\n  metrics     {paths.metrics}")
    grids = sorted(paths.samples.glob("step_*.png"))
    if grids:
        print(f"  samples     {grids[-1]}")
    return code


def _sample(args: argparse.Namespace) -> int:
    from .sampling import sample
    from .viz import save_grid
    device = resolve_device(args.device)
    O.check_output_file(args.out, O.IMAGE_SUFFIXES, "--out")  # every argument checked before any work
    O.check_output_file(args.tensor_out, (".pt",), "--tensor-out")
    tiling = O.tiling(args, read_run_config(args.run_dir).model)  # checked against the model before any work
    execution = O.execution(args)
    model, schedule, cfg = load_run(args.run_dir, ema=args.weights == "ema", device=device,
                                     precision=execution.precision)
    images = sample(model, schedule, args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                    spacing=args.spacing, tiling=tiling,
                    execution=execution, generator=make_generator(args.seed, device), progress=not args.no_progress)
    out = args.out or RunPaths(args.run_dir).samples / f"sample_{args.sampler}_seed{args.seed}.png"
    save_grid(images, out, patches=cfg.model.patches if args.borders else None,
              scale=max(1, 64 // cfg.model.image_size))
    print(f"wrote {args.n} samples to {out}")
    if args.tensor_out:
        args.tensor_out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images.cpu(), args.tensor_out)
        print(f"wrote the image tensor to {args.tensor_out}")
    return 0


def _show_config(args: argparse.Namespace) -> int:
    print(O.resolve_config(args).to_json())
    return 0
