"""``python -m patchlab profile`` and ``python -m patchlab plan``: memory of diffusion steps from the shell.

profile: measure (or ``--estimate``) the peak memory of a sampling and/or training step, for one
configuration or a sweep over N (``--sweep-patches 1 2 4``) and patch modes (``--modes batched
sequential``); prints a table with ratios to the smallest N, or JSON with ``--json``.

plan: the fastest patch mode whose estimated peak fits a memory budget (``--budget 8GiB``), or what
would fit when nothing does (exit status 1).
"""

import argparse
import json
import re

from . import config as C
from . import memory_plan as MP
from .memory import format_bytes

PRESETS = {"paper": C.PAPER_PARAMS}
_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "kib": 2 ** 10, "m": 10 ** 6, "mb": 10 ** 6, "mib": 2 ** 20,
          "g": 10 ** 9, "gb": 10 ** 9, "gib": 2 ** 30, "t": 10 ** 12, "tb": 10 ** 12, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592, '500MB' -> 500000000, '1024' -> 1024 (binary and decimal units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 8GiB, 500MB, 1073741824)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"the memory size must be at least one byte, got {text!r}")
    return int(value)


def register(sub) -> None:
    """Add the ``profile`` and ``plan`` subcommands to the CLI's subparsers."""
    from .cli import _add_config_options, _patch_mode

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="JSON file of parameters (flat or a run's config.json)")
    common.add_argument("--preset", choices=sorted(PRESETS),
                        help="start from a named configuration (paper: 128 px, N=4, dim 128, mults 1,2,4,8, "
                             "batch 32); --config and options override it")
    common.add_argument("--batch", type=int, default=None, help="images per step (default: batch_size)")
    common.add_argument("--optimizer", choices=MP.OPTIMIZERS, default="none",
                        help="train phase: 'adam' adds gradient clipping and an Adam step with existing state")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    prof = sub.add_parser(
        "profile", parents=[common], allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="peak memory and time of a sampling / training step (measured or estimated)",
        description="Profile one denoising step ('sample') and/or one training step ('train'): tensor-level "
                    "peak memory split into weights, gradients, optimizer state, activations and temporaries "
                    "(plus the CUDA allocator's peak on a GPU) and the median step time. --estimate uses "
                    "fake tensors: the paper's configuration in seconds, nothing allocated.")
    prof.add_argument("--phase", nargs="+", choices=MP.PHASES, default=list(MP.PHASES), help="step(s) to profile")
    prof.add_argument("--modes", nargs="+", type=_patch_mode, default=None, metavar="MODE",
                      help="patch modes to sweep: batched, sequential, or k patches per pass "
                           "(default: the patch_mode parameter)")
    prof.add_argument("--sweep-patches", nargs="+", type=int, default=None, metavar="N",
                      help="values of N to sweep (default: the patches parameter)")
    prof.add_argument("--estimate", action="store_true", help="fake tensors: estimate, do not run")
    prof.add_argument("--repeats", type=int, default=3, help="timed runs per row (median); 0 = no timing")
    prof.add_argument("--cuda-graphs", action="store_true",
                      help="sample phase on CUDA: time the step with each UNet pass replayed as a CUDA graph "
                           "(memory columns stay those of the plain step)")
    _add_config_options(prof)
    prof.set_defaults(handler=_profile)

    pln = sub.add_parser(
        "plan", parents=[common], allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="the fastest patch mode that fits a memory budget",
        description="Estimate (fake tensors, nothing allocated) the peak of a step for each patch mode and "
                    "choose the fastest that fits the budget with headroom; when nothing fits, say what would "
                    "(a smaller batch, a larger N). Exit status 1 when nothing fits.")
    pln.add_argument("--budget", type=parse_bytes, required=True, help="memory budget, e.g. 24GiB or 500MB")
    pln.add_argument("--phase", choices=MP.PHASES, default="train", help="which step must fit")
    pln.add_argument("--headroom", type=float, default=0.1,
                     help="fraction kept free for what tensor-level accounting does not see (workspaces)")
    _add_config_options(pln)
    pln.set_defaults(handler=_plan)


def _config(args: argparse.Namespace) -> C.Config:
    from .cli import _resolve
    return _resolve(args, base=PRESETS.get(args.preset))


def _profile(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.repeats < 0:
        raise ValueError(f"--repeats must be >= 0, got {args.repeats}")
    unet_factory = None
    if args.cuda_graphs:
        from .accel import cuda_graph_unet
        unet_factory = cuda_graph_unet
    rows = MP.sweep(cfg, phases=args.phase, patches=args.sweep_patches, modes=args.modes, batch=args.batch,
                    estimate=args.estimate, optimizer=args.optimizer, repeats=args.repeats,
                    progress=not args.json, **({"unet_factory": unet_factory} if unet_factory else {}))
    table = MP.with_ratios(rows)
    if args.json:
        print(json.dumps(table[0] if len(table) == 1 else {"rows": table}, indent=2))
    else:
        print(format_table(table))
    return 0


def format_table(rows: list[dict]) -> str:
    """A readable table of :func:`patchlab.memory_plan.with_ratios` rows."""
    cuda = any(r["allocator_peak_bytes"] is not None for r in rows)
    head = ["phase", "N", "mode", "batch", "passes", "peak", "x N=min", "weights", "grads", "optim", "activ",
            "temps"] + (["alloc peak"] if cuda else []) + ["step s", "time x"]
    lines = []
    for r in rows:
        cells = [r["phase"], r["patches"], r["patch_mode"], r["batch"], r["passes"],
                 format_bytes(r["peak_bytes"]), _num(r["peak_ratio"], 3),
                 *(format_bytes(r[f"{c}_bytes"]) for c in ("weights", "gradients", "optimizer_state",
                                                           "activations", "temporaries"))]
        if cuda:
            cells.append(format_bytes(r["allocator_peak_bytes"]) if r["allocator_peak_bytes"] is not None else "-")
        cells += [_num(r["step_seconds"], 4), _num(r["time_ratio"], 2)]
        lines.append([str(c) for c in cells])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    first = rows[0] if rows else {}
    title = (f"{first.get('method', '')} on {first.get('device', '')}; {first.get('parameters', 0) / 1e6:.2f} M "
             f"parameters; 'x N=min': peak relative to the smallest N of the same phase")
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*line) for line in lines])


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plan(args: argparse.Namespace) -> int:
    import sys
    cfg = _config(args)
    progress = None if args.json else (lambda text: print(text, file=sys.stderr))
    result = MP.plan(cfg, args.budget, phase=args.phase, batch=args.batch, optimizer=args.optimizer,
                     headroom=args.headroom, progress=progress)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.message())
    return 0 if result.fits else 1
