"""Speed of the memory-saving patch modes, plain and with the fast path, side by side in one run.

    python benchmarks/speed.py --json reports/speed_cpu.json     # the CPU configuration of issue 11
    python benchmarks/speed.py --device cuda --preset paper ...  # (run by benchmarks/gpu_check.py)

For each phase (training step, denoising step) and N, the batched and the sequential step are timed
plain and with the fast per-pass execution (:func:`patchlab.accel.fast_unet`: torch.compile on the
CPU, CUDA graphs of each pass on CUDA), and bf16 (autocast training, bf16-weight sampling) when asked.
Every row is a :func:`patchlab.memory.profile_step` measurement; ratios are to the batched step of the
same N, phase, path and precision, measured in the same run. Compilation / capture is the first step's
extra time (``compile_seconds``), reported apart. The targets of the issue are checked at the end.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import patchlab
from patchlab import memory as MP
from patchlab.execution import Execution

CPU_CONFIG = dict(image_size=32, dim=32, dim_mults=(1, 2, 4, 8))  # the configuration of issue 11's CPU table
# (where, phase, N, bound): sequential step / batched step of the same N, with the fast path on
TARGETS = [("cpu", "train", 2, 1.2), ("cpu", "train", 4, 2.0), ("cpu", "sample", 2, 1.2),
           ("cpu", "sample", 4, 2.0), ("cuda", "train", 2, 1.25), ("cuda", "train", 4, 2.5),
           ("cuda", "sample", 2, 1.1), ("cuda", "sample", 4, 1.6)]


def _device_path(device) -> str:
    """The fast path of a device: CUDA graphs on CUDA, torch.compile on the CPU."""
    return "graphs" if torch.device(device).type == "cuda" else "compile"


def measure(cfg, *, device, patches=(2, 4), phases=("train", "sample"), batches=None, fast=True, bf16=False,
            repeats=3, progress=print) -> list[dict]:
    """Profiled rows (:meth:`patchlab.memory.StepProfile.to_dict`) of batched and sequential steps, plain and
    ``fast``, in fp32 and (``bf16``) bf16; ``batches``: images per phase (default: the config's batch)."""
    batches = batches or {}
    rows = []
    for phase in phases:
        low = "bf16-weights" if phase == "sample" else "bf16"
        for precision in ("fp32", low) if bf16 else ("fp32",):
            for path in (None, "auto") if fast else (None,):
                for n in patches:
                    for mode in ("batched", "sequential"):
                        if progress:
                            progress(f"{phase} N={n} {mode} {precision} {'fast' if path else 'plain'}")
                        MP.release_memory()
                        fast_path = "off" if path is None else _device_path(device)
                        prof = MP.profile_step(cfg.replace(patches=n), phase, batch=batches.get(phase),
                                               execution=Execution(patch_mode=mode, precision=precision,
                                                                   fast_path=fast_path),
                                               device=device, repeats=repeats)
                        rows.append({k: v for k, v in prof.to_dict().items() if k != "config"})
    for row in rows:
        batched = next(r for r in rows if r["patch_mode"] == "batched" and all(
            r[k] == row[k] for k in ("phase", "patches", "precision", "fast")))
        row["x_batched"] = row["step_seconds"] / batched["step_seconds"]
    return rows


def check_targets(rows: list[dict], where: str) -> list[dict]:
    """The issue's ratio targets for ``where`` ("cpu" or "cuda"): sequential / batched of the same N, fast, fp32."""
    out = []
    for place, phase, n, bound in TARGETS:
        row = next((r for r in rows if place == where and r["phase"] == phase and r["patches"] == n
                    and r["patch_mode"] == "sequential" and r["fast"] and r["precision"] == "fp32"), None)
        if row is not None:
            out.append({"target": f"{phase} N={n} sequential / batched, fast path", "bound": bound,
                        "value": row["x_batched"], "ok": row["x_batched"] <= bound})
    return out


def format_rows(rows: list[dict]) -> str:
    head = f"{'phase':<7}{'N':>3}  {'mode':<11}{'precision':<13}{'path':<9}{'peak MiB':>10}{'step s':>10}" \
           f"{'x batched':>10}{'compile s':>10}"
    lines = [head]
    for r in rows:
        compiled = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        lines.append(f"{r['phase']:<7}{r['patches']:>3}  {str(r['patch_mode']):<11}{r['precision']:<13}"
                     f"{r['fast'] or 'plain':<9}{r['peak_bytes'] / 2**20:>10.1f}{r['step_seconds']:>10.4f}"
                     f"{r['x_batched']:>10.2f}{compiled:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                        help="cpu: 32 px, dim 32, mults 1,2,4,8, batch 8; paper: 128 px, dim 128, train batch 32, "
                             "sample batch 16")
    parser.add_argument("--patches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--phases", nargs="+", choices=("train", "sample"), default=["train", "sample"])
    parser.add_argument("--no-fast", action="store_true", help="plain rows only")
    parser.add_argument("--bf16", action="store_true", help="also bf16 rows (autocast training, bf16-weight sampling)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write the rows, targets and machine here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset == "paper":
        cfg = patchlab.config.from_params(**patchlab.config.PAPER_PARAMS, device=args.device)
        batches = {"train": 32, "sample": 16}
    else:
        cfg = patchlab.config.from_params(**CPU_CONFIG, device=args.device)
        batches = {"train": 8, "sample": 8}
    start = time.perf_counter()
    rows = measure(cfg, device=args.device, patches=args.patches, phases=args.phases, batches=batches,
                   fast=not args.no_fast, bf16=args.bf16, repeats=args.repeats,
                   progress=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    targets = check_targets(rows, torch.device(args.device).type)
    print(format_rows(rows))
    for t in targets:
        print(f"{'ok  ' if t['ok'] else 'MISS'} {t['target']}: {t['value']:.2f} (target <= {t['bound']})")
    if args.json:
        name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
        result = {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "rows": rows, "targets": targets,
                  "seconds": time.perf_counter() - start}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
