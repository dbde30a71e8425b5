"""Command line: ``python -m patchlab {train,sample,config} ...``.

Every configuration parameter is an option of ``train`` (generated from the config dataclasses, with
their docs as help), so the CLI and the Python API can never drift apart.
"""

import argparse
import json
import sys
import types
import typing
from pathlib import Path

import torch

from . import config as C
from .runs import RunPaths, load_run
from .runtime import make_generator, resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        # Bad input: one clear line, no traceback (set PATCHLAB_DEBUG=1 to see it).
        import os
        if os.environ.get("PATCHLAB_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m patchlab", allow_abbrev=False,
        description="Memory-efficient patch-based diffusion models: train, sample, inspect configs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train a model (resumes if the run directory holds a checkpoint)",
        description="Train a patch-based DDPM. The run directory receives config.json, checkpoint.pt, "
                    "metrics.csv and samples/*.png; running the same command again resumes the run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    train.add_argument("--run-dir", required=True, type=Path, help="where the run's files go")
    train.add_argument("--config", type=Path, help="JSON file of parameters (flat or a run's config.json); "
                                                   "options given here override it")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(train)
    train.set_defaults(handler=_train)

    smp = sub.add_parser(
        "sample", help="sample images from a trained run",
        description="Generate images with a trained run's EMA weights and write them as a PNG grid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    smp.add_argument("--run-dir", required=True, type=Path, help="a run directory written by 'train'")
    smp.add_argument("--n", type=int, default=16, help="number of images")
    smp.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim", help="ancestral DDPM or DDIM")
    smp.add_argument("--steps", type=int, default=None, help="DDIM steps (default: all T)")
    smp.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 deterministic, 1 DDPM-like)")
    smp.add_argument("--patch-mode", type=_patch_mode, default="sequential",
                     help="'batched', 'sequential' or k patches per UNet pass")
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    smp.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights to use")
    smp.add_argument("--device", choices=C.DEVICES, default="auto", help="where to run")
    smp.add_argument("--precision", choices=C.PRECISIONS, default="fp32", help="UNet precision")
    smp.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/samples/sample_*.png)")
    smp.add_argument("--tensor-out", type=Path, default=None, help="also save the images [n x C x H x W] (.pt)")
    smp.add_argument("--borders", action="store_true", help="draw the patch borders on the grid")
    smp.add_argument("--no-progress", action="store_true", help="no progress bar")
    smp.set_defaults(handler=_sample)

    show = sub.add_parser("config", help="print the resolved configuration (JSON) for the given options",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    show.add_argument("--config", type=Path, help="JSON file of parameters")
    _add_config_options(show)
    show.set_defaults(handler=_show_config)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list:
    """Subcommands that live next to the feature they drive: each module has ``register(subparsers)``
    that adds its parser and sets ``handler``. Add one import here per module."""
    from . import evaluate, profile_cli, reproduce
    return [profile_cli.register, evaluate.register, reproduce.register]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for section, keys in _sections().items():
        group = parser.add_argument_group(f"{section} parameters")
        for key, (typ, doc, default) in keys.items():
            flag = "--" + key.replace("_", "-")
            kwargs = {"dest": key, "default": argparse.SUPPRESS, "help": f"{doc} (default: {_show(default)})"}
            if typ is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(flag, type=_parser_for(key, typ), metavar=key.upper(), **kwargs)


def _sections() -> dict[str, dict[str, tuple]]:
    defaults = C.Config().flat()
    out: dict[str, dict[str, tuple]] = {}
    for key, (section, typ, doc) in C.parameter_docs().items():
        out.setdefault(section, {})[key] = (typ, doc, defaults[key])
    return out


def _parser_for(key: str, typ):
    if key == "patch_mode":
        return _patch_mode
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
        return _parser_for(key, inner)
    if origin is tuple:
        return lambda text: tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    return typ


def _patch_mode(text: str):
    return int(text) if text.isdigit() else text


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _resolve(args: argparse.Namespace, base: dict | None = None) -> C.Config:
    """Parameters from ``base`` (e.g. a preset), then the ``--config`` file, then the options given."""
    params: dict = dict(base or {})
    if getattr(args, "config", None):
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the config file {args.config}: {exc}") from exc
        params.update(C.from_dict(data).flat() if any(k in C.SECTIONS for k in data) else data)
    params.update({k: v for k, v in vars(args).items() if k in C.parameter_docs()})
    return C.from_params(**params)


def _train(args: argparse.Namespace) -> int:
    from .training import train
    cfg = _resolve(args)
    result = train(cfg, args.run_dir, progress=not args.no_progress)
    paths = RunPaths(result.run_dir)
    last = f", last loss {result.losses[result.step]:.4f}" if result.step in result.losses else ""
    print(f"run {paths.root}: {result.step}/{cfg.train.steps} steps{last}")
    print(f"  config      {paths.config}\n  checkpoint  {paths.checkpoint}\n  metrics     {paths.metrics}")
    grids = sorted(paths.samples.glob("step_*.png"))
    if grids:
        print(f"  samples     {grids[-1]}")
    return 130 if result.interrupted else 0


def _sample(args: argparse.Namespace) -> int:
    from .sampling import sample
    from .viz import save_grid
    device = resolve_device(args.device)
    model, schedule, cfg = load_run(args.run_dir, ema=args.weights == "ema", device=device)
    images = sample(model, schedule, args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                    patch_mode=args.patch_mode, generator=make_generator(args.seed, device),
                    precision=args.precision, progress=not args.no_progress)
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
    print(_resolve(args).to_json())
    return 0
