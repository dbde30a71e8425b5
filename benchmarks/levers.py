"""Patches against micro-batches and checkpointing: memory and time of one training step, side by side.

    python benchmarks/levers.py --json reports/levers_cpu.json     # the default study's size (16 px, dim 32)
    python benchmarks/levers.py --image-size 64 --dim 64 --dim-mults 1,2,4 --batch 8

At equal memory, which is faster: N = 2 (N = 4) one patch at a time, or N = 1 split into micro-batches down
to that memory? The rows of :func:`patchlab.study.baselines.baseline_rows` (N = 1 in one pass, N = 2 and 4 one
patch at a time, N = 1 micro-batched to their memory, N = 1 checkpointed, every lever at once), measured on the
device with the steps timed round-robin in one run (a drift of the machine's load hits every row alike), with
the ratios that answer the question printed at the end.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from patchlab import config as C
from patchlab.study.baselines import baseline_rows


def parse_mults(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--dim-mults", type=parse_mults, default=(1, 2))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the round-robin timing (median)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and ratios here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = dict(image_size=args.image_size, dim=args.dim, dim_mults=args.dim_mults, device=args.device)
    cfgs = [C.from_params(**base, patches=n) for n in (1, 2, 4)]
    start = time.perf_counter()
    rows = baseline_rows(*cfgs, args.batch, device=args.device, repeats=args.repeats, progress=True)
    by = {r["row"]: r for r in rows}
    for r in rows:
        print(f"{r['row']:<48} {r['images_per_pass']:>3} img/pass {r['passes']:>4} passes "
              f"{r['peak_bytes'] / 2**20:8.1f} MiB ({r['peak_bytes'] / r['floor_bytes']:.2f}x floor) "
              f"{r['step_seconds']:.4f} s")
    ratios = {}
    for n in (2, 4):
        micro, patches = by[f"N=1 micro-batched to N={n}"], by[f"N={n} sequential"]
        ratios[f"N={n}"] = {"memory micro / patches": micro["peak_bytes"] / patches["peak_bytes"],
                            "time micro / patches": micro["step_seconds"] / patches["step_seconds"],
                            "images_per_pass": micro["images_per_pass"]}
        print(f"at the memory of N={n} one patch at a time: N=1 in micro-batches of {micro['images_per_pass']} "
              f"takes {ratios[f'N={n}']['time micro / patches']:.2f}x its time at "
              f"{ratios[f'N={n}']['memory micro / patches']:.2f}x its memory")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {**base, "dim_mults": list(args.dim_mults), "batch": args.batch,
                                                    "threads": args.threads, "repeats": args.repeats},
                                         "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                                     "cpu_count": __import__("os").cpu_count()},
                                         "date": time.strftime("%Y-%m-%d"), "rows": rows, "ratios": ratios,
                                         "seconds": time.perf_counter() - start}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
