"""A short check of the data-parallel path on a device: the same training in one plain process and in a
torchrun world (NCCL on CUDA, gloo on the CPU), compared step by step.

    python benchmarks/ddp_check.py --device cuda --processes 1 --out reports/gpu   # a single-process NCCL world

A world of one process catches device mistakes (ranks on the wrong GPU, tensors left on the CPU in a
collective) on a machine with one GPU; with more GPUs, ``--processes 2`` or more also checks the
all-reduce. Writes ddp_check_<device>.json: per-step losses and gradient norms of both runs, their
largest relative differences, the largest weight difference and the seconds per step of each.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchlab.runs import read_metrics  # noqa: E402

CONFIG = ["--image-size", "32", "--dim", "32", "--dim-mults", "1,2,4", "--patches", "2", "--batch-size", "8",
          "--patch-mode", "sequential", "--log-every", "1", "--checkpoint-every", "1000", "--sample-count", "4",
          "--sample-steps", "2", "--dataset-size", "256", "--no-progress"]


def run(run_dir: Path, device: str, steps: int, processes: int | None) -> dict:
    """Train ``steps`` steps in ``run_dir``: plainly (``processes`` None) or under torchrun."""
    prefix = [sys.executable, "-m", "patchlab"] if processes is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m",
         "patchlab"]
    proc = subprocess.run([*prefix, "train", "--run-dir", str(run_dir), "--device", device, "--steps", str(steps),
                           *CONFIG], capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(prefix[-3:])}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rows = read_metrics(run_dir / "metrics.csv")
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    per_step = (rows[-1]["elapsed_s"] - rows[1]["elapsed_s"]) / max(rows[-1]["step"] - rows[1]["step"], 1)
    return {"loss": [r["loss"] for r in rows], "grad_norm": [r["grad_norm"] for r in rows],
            "s_per_step": per_step, "weights": state["model"]}


def compare(device: str, steps: int, processes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(Path(tmp) / "plain", device, steps, None)
        ddp = run(Path(tmp) / "ddp", device, steps, processes)
    rel = lambda a, b: max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))  # noqa: E731
    weights = max(float((plain["weights"][k] - ddp["weights"][k]).abs().max()) for k in plain["weights"])
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return {"device": name, "processes": processes, "steps": steps,
            "loss_max_rel_diff": rel(plain["loss"], ddp["loss"]),
            "grad_norm_max_rel_diff": rel(plain["grad_norm"], ddp["grad_norm"]),
            "weights_max_abs_diff": weights, "s_per_step_plain": plain["s_per_step"],
            "s_per_step_ddp": ddp["s_per_step"], "loss_plain": plain["loss"], "loss_ddp": ddp["loss"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="folder for ddp_check_<device>.json")
    args = parser.parse_args(argv)
    result = compare(args.device, args.steps, args.processes)
    ok = result["loss_max_rel_diff"] < 1e-4 and result["grad_norm_max_rel_diff"] < 1e-3
    print(f"{result['device']}: {args.processes} process(es) under torchrun vs one plain process, {args.steps} steps: "
          f"loss max rel diff {result['loss_max_rel_diff']:.2e}, gradient norm {result['grad_norm_max_rel_diff']:.2e}, "
          f"weights max abs diff {result['weights_max_abs_diff']:.2e}; {result['s_per_step_ddp']:.3f} s/step vs "
          f"{result['s_per_step_plain']:.3f} s/step -> {'ok' if ok else 'MISMATCH'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
        path = args.out / f"ddp_check_{slug}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
