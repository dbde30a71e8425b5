"""``python -m patchlab profile`` and ``python -m patchlab plan``: memory of diffusion steps from the shell.

profile: measure (or ``--estimate``) the peak memory of a sampling and/or training step, for one
configuration or a sweep over N (``--sweep-patches 1 2 4``) and patch modes (``--modes batched
sequential``); prints a table with ratios to the smallest N, or JSON with ``--json``.

plan: the fastest patch mode whose estimated peak fits a memory budget (``--budget 8GiB``), or what
would fit when nothing does (exit status 1).
"""

import argparse
import json
import sys

from .. import options as O
from ..execution import FAST_PATHS, Execution
from ..runtime import resolve_device
from . import planner, steps
from .table import format_table, with_ratios


def register(sub) -> None:
    """Add the ``profile`` and ``plan`` subcommands to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    O.add_config_file(common, presets=True)
    common.add_argument("--batch", type=O.positive_int, default=None, help="images per step (default: batch_size)")
    common.add_argument("--optimizer", choices=steps.OPTIMIZERS, default="none",
                        help="train phase: 'adam' adds gradient clipping and an Adam step with existing state")
    common.add_argument("--world-size", type=O.positive_int, default=1, metavar="W",
                        help="train phase: one process of a data-parallel job of W processes (torchrun), stepping "
                             "batch/W images; with --shard-optimizer it holds 1/W of Adam's state")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    prof = sub.add_parser(
        "profile", parents=[common],
        help="peak memory and time of a sampling / training step (measured or estimated)",
        description="Profile one denoising step ('sample') and/or one training step ('train'): tensor-level "
                    "peak memory split into weights, gradients, optimizer state, activations and temporaries "
                    "(plus the CUDA allocator's peak on a GPU) and the median step time. --estimate uses "
                    "fake tensors: the paper's configuration in seconds, nothing allocated.")
    prof.add_argument("--phase", nargs="+", choices=steps.PHASES, default=list(steps.PHASES),
                      help="step(s) to profile")
    prof.add_argument("--modes", nargs="+", type=O.patch_mode, default=None, metavar="MODE",
                      help="patch modes to sweep: batched, sequential, or k patches per pass "
                           "(default: the patch_mode parameter)")
    prof.add_argument("--sweep-patches", nargs="+", type=O.positive_int, default=None, metavar="N",
                      help="values of N to sweep (default: the patches parameter)")
    prof.add_argument("--estimate", action="store_true", help="fake tensors: estimate, do not run")
    prof.add_argument("--repeats", type=O.non_negative_int, default=3,
                      help="timed runs per row (median); 0 = no timing")
    prof.add_argument("--fast", nargs="?", const="auto", default=None, choices=("auto", *FAST_PATHS),
                      help="time every step with the fast per-pass execution (patchlab.accel.fast_unet): 'graphs' "
                           "(CUDA graphs of each pass, forward and backward), 'compile' (torch.compile), or 'auto' "
                           "(the default when given without a value: graphs on CUDA, compile on the CPU); the first "
                           "step (compilation, capture) is reported apart as compile_seconds; memory columns stay "
                           "those of the plain step")
    prof.add_argument("--cuda-graphs", action="store_const", dest="fast", const="graphs",
                      help="the same as --fast graphs")
    prof.add_argument("--bf16-weights", action="store_true",
                      help="sample phase: weights stored in bf16 (half their memory), under bf16 autocast")
    O.add_config_options(prof)
    prof.set_defaults(handler=_profile)
    _register_plan(sub, common)


def _register_plan(sub, common: argparse.ArgumentParser) -> None:
    pln = sub.add_parser(
        "plan", parents=[common],
        help="the fastest patch mode that fits a memory budget",
        description="Estimate (fake tensors, nothing allocated) the peak of a step for each patch mode and "
                    "choose the fastest that fits the budget with headroom; when nothing fits, say what would "
                    "(a smaller batch, a larger N). Exit status 1 when nothing fits.")
    pln.add_argument("--budget", type=O.parse_bytes, default=None, help="memory budget, e.g. 24GiB or 500MB")
    pln.add_argument("--frontier", action="store_true",
                     help="instead of one plan: for the paper's UNet and budgets of 8, 16, 24, 40 and 80 GiB, the "
                          "largest square image (multiples of 64 px) that trains (batch 1, Adam) and samples (batch "
                          "1) with each lever (N=1 plain or checkpointed, N=2, 4, 8 one patch per pass, N=4 "
                          "checkpointed; fp32 and bf16); fake-tensor estimates, a few minutes on 2 CPU cores")
    pln.add_argument("--phase", choices=steps.PHASES, default="train", help="which step must fit")
    pln.add_argument("--speed", action="store_true",
                     help="also weigh bf16 and the device's fast path (CUDA graphs; torch.compile on the CPU, "
                          "whose compilation takes minutes), timed from measured steps of one image, and pick the "
                          "fastest that fits")
    pln.add_argument("--headroom", type=float, default=0.1,
                     help="fraction kept free for what tensor-level accounting does not see (workspaces)")
    O.add_config_options(pln)
    pln.set_defaults(handler=_plan)


def _optimizer(args: argparse.Namespace, cfg) -> str:
    """--shard-optimizer shards Adam's state: it implies --optimizer adam."""
    return "adam" if cfg.train.shard_optimizer else args.optimizer


def _profile(args: argparse.Namespace) -> int:
    if args.sweep_patches:  # the sweep's N replace the configured one (which need not build at this size)
        if "patches" in vars(args):
            raise ValueError("give --patches N or --sweep-patches N [N ...], not both")
        args.patches = args.sweep_patches[0]
    cfg = O.resolve_config(args)
    fast = args.fast
    if fast == "auto":  # the device's fast path
        fast = "graphs" if resolve_device(cfg.train.device).type == "cuda" else "compile"
    if args.bf16_weights and "sample" not in args.phase:
        raise ValueError("--bf16-weights stores the weights in bf16 for sampling: add --phase sample (training "
                         "keeps float32 weights; use --precision bf16 for autocast)")
    if fast and args.estimate:
        raise ValueError(f"--fast {fast} times the steps; --estimate does not run them (its memory is the plain "
                         f"step's): leave out one of the two")
    if cfg.train.checkpointing != "none" and "train" not in args.phase:
        raise ValueError(f"--checkpointing {cfg.train.checkpointing} applies to training steps: add --phase train "
                         f"(sampling keeps no activations for backward)")
    execution = Execution.of_training(cfg.train, fast_path=fast or "off")
    rows = steps.sweep(cfg, phases=args.phase, patches=args.sweep_patches, modes=args.modes, batch=args.batch,
                       execution=execution, estimate=args.estimate, optimizer=_optimizer(args, cfg),
                       repeats=args.repeats, world_size=args.world_size, progress=not args.json,
                       sample_precision="bf16-weights" if args.bf16_weights else None)
    table = with_ratios([r.to_dict() for r in rows])
    if args.json:
        print(json.dumps(table[0] if len(table) == 1 else {"rows": table}, indent=2))
    else:
        print(format_table(table))
    return 0


def _plan(args: argparse.Namespace) -> int:
    if args.frontier:
        return _frontier(args)
    if args.budget is None:
        raise ValueError("plan needs --budget (e.g. --budget 24GiB), or --frontier for the image sizes every lever "
                         "reaches at the paper's budgets")
    cfg = O.resolve_config(args)
    progress = None if args.json else (lambda text: print(text, file=sys.stderr))
    result = planner.plan(cfg, args.budget, phase=args.phase, batch=args.batch, optimizer=_optimizer(args, cfg),
                          headroom=args.headroom, progress=progress, world_size=args.world_size, speed=args.speed)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.message())
    return 0 if result.fits else 1


def _frontier(args: argparse.Namespace) -> int:
    """``plan --frontier``: the paper's UNet, so the options that describe another step are refused."""
    from . import frontier as F

    given = [k for k in ("budget", "batch", "config", "preset") if getattr(args, k, None)] + \
        [k for k in vars(args) if k in O.C.parameter_docs()] + \
        [k for k, default in (("speed", False), ("world_size", 1), ("optimizer", "none"), ("phase", "train"))
         if getattr(args, k) != default]
    if given:
        raise ValueError(f"plan --frontier is for the paper's UNet at batch 1 and its own budgets; it takes no "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    progress = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    rows, checks = F.frontier(headroom=args.headroom, progress=progress)
    if args.json:
        print(json.dumps({"budgets_gib": list(F.BUDGETS_GIB), "headroom": args.headroom, "rows": rows,
                          "checks": checks, "crossover_px": F.crossover(rows)}, indent=2))
    else:
        print(F.format_frontier(rows, checks))
    return 0
