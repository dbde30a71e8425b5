"""Command-line building blocks shared by every command (train, sample, config, profile, plan, evaluate,
reproduce): the parser class, the configuration options generated from :mod:`patchlab.config`, and the
options and value types several commands take.

A leaf module of the command line: it imports only core modules (the configuration, the patch geometry,
the tilings and executions), so every command module can use it without import circles.
"""

import argparse
import difflib
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from . import config as C
from . import execution as E
from . import patches as P
from . import tiling as T

PRESETS = {"paper": C.PAPER_PARAMS}
_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "kib": 2 ** 10, "m": 10 ** 6, "mb": 10 ** 6, "mib": 2 ** 20,
          "g": 10 ** 9, "gb": 10 ** 9, "gib": 2 ** 30, "t": 10 ** 12, "tb": 10 ** 12, "tib": 2 ** 40}


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with the behaviour every patchlab command shares.

    - Errors are one line (``PROG: error: ...``) and a pointer to ``--help``, not the usage of every
      option.
    - A mistyped option gets the closest valid ones ("did you mean ...?"), as config keys do.
    - An option that takes one value accepts values starting with ``-`` (``--budget -5GiB`` reaches the
      value check and is refused by name, instead of "expected one argument").
    - Abbreviated options are refused (``allow_abbrev=False``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._join_dash_values(args), namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(parsed) or self
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser._suggest(extras)}")
        return parsed

    def _join_dash_values(self, args: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(args):
            token = args[i]
            action = self._option_string_actions.get(token)
            if (action is not None and action.nargs is None and i + 1 < len(args) and args[i + 1].startswith("-")
                    and args[i + 1] not in self._option_string_actions and args[i + 1] != "--"):
                out.append(f"{token}={args[i + 1]}")
                i += 2
                continue
            out.append(token)
            i += 1
        return out

    def _chosen_subparser(self, parsed) -> "Parser | None":
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                return action.choices.get(chosen) if chosen else None
        return None

    def _suggest(self, extras: list[str]) -> str:
        options = [o for o in self._option_string_actions if o.startswith("--")]
        hints = []
        for token in extras:
            if token.startswith("--"):
                close = difflib.get_close_matches(token.split("=", 1)[0], options, n=2)
                if close:
                    hints.append(f"{token.split('=', 1)[0]}: did you mean {' or '.join(close)}?")
        return ("; " + "; ".join(hints)) if hints else ""


# --- value types ---------------------------------------------------------------------------------------


def patch_mode(text: str):
    """``batched``, ``sequential`` or k (patches per UNet pass), checked."""
    value = int(text) if text.isdigit() else text
    try:
        return P.check_patch_mode(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a patch mode: use batched, sequential or a positive integer (patches per pass)") from None


def int_list(text: str) -> tuple[int, ...]:
    """``1,2,4`` -> (1, 2, 4)."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592, '500MB' -> 500000000, '1024' -> 1024 (binary and decimal units)."""
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 8GiB, 500MB, 1073741824)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"a memory size must be at least one byte, got {text!r}")
    return int(value)


# --- options ----------------------------------------------------------------------------------------------


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per configuration parameter (``--patches``, ``--no-gcc``, ...), grouped by section, with
    the dataclass field's doc as help. Options not given stay out of the namespace (so a ``--config``
    file or a preset is only overridden by what is typed)."""
    defaults = C.Config().flat()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, (section, typ, doc) in C.parameter_docs().items():
        group = groups.setdefault(section, parser.add_argument_group(f"{section} parameters"))
        flag = "--" + key.replace("_", "-")
        kwargs = {"dest": key, "default": argparse.SUPPRESS, "help": f"{doc} (default: {_show(defaults[key])})"}
        if typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=_value_type(key, typ), metavar=key.upper(), **kwargs)


def add_config_file(parser: argparse.ArgumentParser, *, presets: bool = False) -> None:
    """``--config FILE`` (and ``--preset NAME`` with ``presets``): where the configuration starts."""
    parser.add_argument("--config", type=Path, help="JSON file of parameters (flat, or a run's config.json); "
                                                    "options given here override it")
    if presets:
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="start from a named configuration (paper: 128 px, N=4, dim 128, mults 1,2,4,8, "
                                 "batch 32); --config and options override it")


def add_patch_mode(parser: argparse.ArgumentParser, default="sequential") -> None:
    parser.add_argument("--patch-mode", type=patch_mode, default=default,
                        help="'batched', 'sequential' or k patches per UNet pass")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_output_file(path: Path | None, suffixes, option: str) -> None:
    """Refuse, before any work, an output file ``option`` that could not be written: a folder, a name without
    one of ``suffixes``, or a parent that is a file."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}, not "
                         f"{path.suffix or 'nothing'!r}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            break


def check_output_folder(path: Path | None, option: str) -> None:
    """Refuse, before any work, an output folder ``option`` that is a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file: give a folder (it is created if missing)")


def add_images_per_pass(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-per-pass", type=positive_int, default=None, metavar="K",
                        help="images per UNet pass: the images are denoised K at a time (less memory, the same "
                             "images); default: all at once")


def add_windows(parser: argparse.ArgumentParser) -> None:
    """``--windows`` and ``--global-from``: the tiling of the sampler (:mod:`patchlab.tiling`)."""
    parser.add_argument("--windows", choices=T.NAMES, default=None,
                        help="what each denoising step computes: the fixed grid, or (models trained with --coords) "
                             "the seam remedies 'shifted' (the grid moves) and 'overlap' (blended windows), or "
                             "(trained with --global-view) 'global' (the global view, then overlapping windows); "
                             "default: the grid, or 'global' for models trained with --windows-below < 1")
    parser.add_argument("--global-from", type=fraction, default=None, metavar="F",
                        help=f"--windows global: the global view denoises the steps at timesteps >= F * T, the "
                             f"windows the others (default {T.GLOBAL_FROM}, or the model's --windows-below if "
                             f"smaller; 0: the global view at every step); refused with the other tilings")


def tiling(args: argparse.Namespace, model_cfg: C.ModelConfig) -> "T.Tiling":
    """The tiling of ``--windows`` / ``--global-from`` for a model, checked against it (before any work)."""
    return T.build(model_cfg, args.windows, global_from=args.global_from)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=C.DEVICES, default="auto", help="where to run")


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=E.SAMPLE_PRECISIONS, default="fp32",
                        help="UNet precision: fp32, bf16 (autocast) or bf16-weights (weights stored in bf16: half "
                             "their memory, under bf16 autocast)")


def add_fast(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", choices=E.FAST_PATH_SETTINGS, default="off",
                        help="per-pass execution: 'compile' (torch.compile; compiling takes minutes on a small CPU) "
                             "or 'graphs' (CUDA graphs of each pass)")


def execution(args: argparse.Namespace) -> E.Execution:
    """The sampling execution of ``--patch-mode``, ``--images-per-pass``, ``--precision`` and ``--fast``."""
    return E.Execution(patch_mode=args.patch_mode, images_per_pass=args.images_per_pass, precision=args.precision,
                       fast_path=args.fast)


def add_sampler(parser: argparse.ArgumentParser, *, steps: int | None) -> None:
    """--sampler, --steps (default ``steps``; None: all T) and --spacing, as :func:`patchlab.sampling.sample`
    takes them."""
    from .sampling import SAMPLERS, SPACINGS

    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                        help="DDIM, Heun or DPM-Solver++(2M) (second order: fewer steps), or ancestral DDPM (all T)")
    parser.add_argument("--steps", type=positive_int, default=steps,
                        help=f"steps of DDIM, Heun or DPM-Solver++(2M) (default: {steps or 'all T'}; capped at T; "
                             f"Heun evaluates the model 2 x steps - 1 times)")
    parser.add_argument("--spacing", choices=tuple(SPACINGS), default="uniform",
                        help="the visited timesteps: evenly spaced (DDIM's) or quadratically (denser near the "
                             "clean image)")


def add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights to use")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> C.Config:
    """The configuration of a command: ``base`` (e.g. ``--preset``), then the ``--config`` file, then the
    options typed."""
    params: dict[str, Any] = dict(base or {})
    preset = getattr(args, "preset", None)
    if preset:
        params.update(PRESETS[preset])
    if getattr(args, "config", None):
        params.update(read_config_file(args.config))
    params.update({k: v for k, v in vars(args).items() if k in C.parameter_docs()})
    return C.from_params(**params)


def read_config_file(path) -> dict[str, Any]:
    """Flat parameters from a JSON file holding flat parameters or a run's nested config.json."""
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"--config: {path} is not a JSON text file (a checkpoint or another binary file?): give "
                         f"a JSON file of parameters, or a run's config.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold one JSON object of parameters (flat, or a run's "
                         f"config.json), not a {type(data).__name__}")
    return C.from_dict(data).flat() if any(k in C.SECTIONS for k in data) else data


def _value_type(key: str, typ):
    if key == "patch_mode":
        return patch_mode
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
        return _value_type(key, inner)
    if origin is tuple:
        return int_list
    return typ


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
