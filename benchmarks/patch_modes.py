"""Time and process peak memory of each patch mode, side by side in one run, as ratios to N=1.

    python benchmarks/patch_modes.py                 # CPU, 64 px, a few minutes on 2 cores
    python benchmarks/patch_modes.py --json out.json --image-size 128 --dim 64
    python benchmarks/patch_modes.py --fast          # also every row with the fast path (torch.compile on
                                                     # the CPU: minutes of compilation per row)

Every (phase, N, mode) row runs in a fresh Python process, because a process's peak resident memory
(ru_maxrss) only ever grows: the child builds the model and the inputs, reads its peak RSS, runs the
step, and reports how far the peak rose (the memory the step itself needed) and the median step time.
Phases: ``sample`` (one denoising step under no_grad, as in sampling) and ``train`` (one
forward+backward with exact-gradient patch accumulation). The memory profiler of patchlab.memory
gives the tensor-level breakdown; this benchmark measures what the operating system sees.

``--fast`` adds each row once more with the fast per-pass execution (:func:`patchlab.accel.fast_unet`):
its first step (compilation) is reported apart (``compile_s``), and ``x batched`` is the ratio to the
batched step of the same N run the same way (plain to plain, fast to fast). Fast rows have no memory
column: compiling already raised the process's peak before the step.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROWS = [(1, "batched"), (2, "batched"), (2, 2), (2, "sequential"), (4, "batched"), (4, 4), (4, "sequential")]


def _row(text: str) -> tuple:
    n, _, mode = text.partition(":")
    return int(n), int(mode) if mode.isdigit() else mode


def child(args: argparse.Namespace) -> None:
    import torch

    import patchlab
    from patchlab.execution import Execution
    from patchlab.model import predict_noise
    from patchlab.runtime import make_generator
    from patchlab.training import accumulate_gradients

    torch.set_num_threads(args.threads)
    mode = int(args.mode) if args.mode.isdigit() else args.mode
    cfg = patchlab.config.from_params(image_size=args.image_size, patches=args.n, dim=args.dim,
                                      dim_mults=tuple(args.dim_mults), timesteps=1000)
    model, schedule = patchlab.build(cfg)
    g = make_generator(0)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (args.batch,), generator=g)

    execution = Execution(patch_mode=mode, fast_path="compile" if args.fast else "off")  # (the model is on the CPU)

    def step():
        if args.phase == "sample":
            with torch.no_grad():
                predict_noise(model, x, t, execution)
        else:
            model.zero_grad(set_to_none=False)
            accumulate_gradients(model, schedule, x, execution, generator=make_generator(1))

    if args.phase == "train":  # allocate the .grad buffers before the baseline, like a real run
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    compile_s = None
    if args.fast:  # compile every pass shape first: its memory is not the step's
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    step_s = times[len(times) // 2]
    rise = None if args.fast else (peak - base) / 1024  # compiling first already raised the peak: not the step's
    print(json.dumps({"step_rise_mib": rise, "peak_rss_mib": peak / 1024, "step_s": step_s,
                      "compile_s": None if compile_s is None else max(compile_s - step_s, 0.0)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--dim-mults", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--fast", action="store_true", help="also run every row with the fast per-pass execution")
    parser.add_argument("--rows", nargs="+", default=None, metavar="N:MODE",
                        help="rows to run, e.g. 2:batched 2:sequential (default: all of N = 1, 2, 4)")
    parser.add_argument("--phases", nargs="+", choices=("sample", "train"), default=["sample", "train"])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    table = ROWS if args.rows is None else [_row(text) for text in args.rows]
    rows = []
    for phase in args.phases:
        batch = args.sample_batch if phase == "sample" else args.train_batch
        for fast in (False, True) if args.fast else (False,):
            for n, mode in table:
                cmd = [sys.executable, __file__, "--child", "--phase", phase, "--n", str(n), "--mode", str(mode),
                       "--batch", str(batch), "--image-size", str(args.image_size), "--dim", str(args.dim),
                       "--dim-mults", *map(str, args.dim_mults), "--repeats", str(args.repeats),
                       "--threads", str(args.threads)] + (["--fast"] if fast else [])
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append({"phase": phase, "batch": batch, "N": n, "mode": mode, "fast": fast,
                             **json.loads(out.splitlines()[-1])})
                print(f"  measured {phase} N={n} {mode}{' fast' if fast else ''}", file=sys.stderr)

    print(f"\npatch modes on CPU ({args.threads} threads): {args.image_size} px, dim {args.dim}, "
          f"mults {tuple(args.dim_mults)}; 'x N=1': ratio to the smallest N of the same phase and path; "
          f"'x batched': ratio to the batched step of the same N, phase and path\n")
    print(f"{'phase':<7}{'batch':>6}{'N':>3}  {'mode':<11}{'path':<8}{'step MiB':>10}{'x N=1':>7}{'step ms':>10}"
          f"{'x N=1':>7}{'x batched':>10}{'compile s':>10}")
    for row in rows:
        same = [r for r in rows if r["phase"] == row["phase"] and r["fast"] == row["fast"]]
        ref = min(same, key=lambda r: r["N"])
        batched = next((r for r in same if r["N"] == row["N"] and r["mode"] == "batched"), None)
        measured = row["step_rise_mib"] is not None
        row["memory_ratio"] = row["step_rise_mib"] / max(ref["step_rise_mib"], 1e-9) if measured else None
        row["time_ratio"] = row["step_s"] / ref["step_s"]
        row["batched_time_ratio"] = row["step_s"] / batched["step_s"] if batched else None
        compiled = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        versus = "-" if batched is None else f"{row['batched_time_ratio']:.2f}"
        rise, ratio = (f"{row['step_rise_mib']:.1f}", f"{row['memory_ratio']:.2f}") if measured else ("-", "-")
        print(f"{row['phase']:<7}{row['batch']:>6}{row['N']:>3}  {str(row['mode']):<11}"
              f"{'fast' if row['fast'] else 'plain':<8}{rise:>10}{ratio:>7}"
              f"{row['step_s'] * 1000:>10.1f}{row['time_ratio']:>7.2f}{versus:>10}{compiled:>10}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": vars(args) | {"child": None}, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
