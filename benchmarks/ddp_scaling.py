"""Data parallelism: step time on 1 and 2 CPU processes, per-GPU memory with and without a sharded Adam,
and how long the `paper` profile takes on 1, 4 and 8 GPUs (an estimate).

    python benchmarks/ddp_scaling.py [--steps 40] [--repeats 2] [--json reports/ddp_scaling_cpu.json]

1. Speed, measured side by side in one run: the same training (32 px, dim 32, mults 1,2,4, global batch
   16, sequential N = 2) with ``python -m patchlab train`` in one process and with ``torchrun
   --nproc-per-node 2`` (gloo), one PyTorch thread per process, alternating, ``--repeats`` times each;
   the seconds per step come from metrics.csv (after the first 5 steps). The ratio is 2-process / 1-process
   time per global step (0.5 = perfect scaling on 2 cores). Then ``evaluate`` of the trained run in 1 and
   2 processes (the seconds it reports, start-up excluded).
2. Memory per GPU at the paper's configuration (128 px, dim 128, mults 1,2,4,8, batch 32 global, Adam),
   estimated with fake tensors (``profile_step(..., world_size=W)``): batched N = 1 and sequential N = 2,
   without and with ``--shard-optimizer``, W = 1, 2, 4, 8.
3. The `paper` profile's time on W GPUs: six runs of 100k steps at the measured H100 step time of the
   N = 1 batched step (reports/gpu/) divided by W (each GPU steps 32/W images; optimistic at small
   per-GPU batches), plus a ring all-reduce of the fp32 gradients (2 (W-1)/W x 507 MB per step at an
   assumed 300 GB/s NVLink bus bandwidth, not overlapped with backward: pessimistic), plus the 5000-sample
   evaluations (15 min per model on one GPU, shared by the W ranks). An estimate, labelled so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchlab.config import from_params  # noqa: E402
from patchlab.execution import Execution  # noqa: E402
from patchlab.memory import format_bytes, profile_step  # noqa: E402
from patchlab.runs import read_metrics  # noqa: E402

SPEED = ["--image-size", "32", "--dim", "32", "--dim-mults", "1,2,4", "--patches", "2", "--batch-size", "16",
         "--patch-mode", "sequential", "--device", "cpu", "--log-every", "1", "--checkpoint-every", "1000",
         "--sample-count", "4", "--sample-steps", "2", "--dataset-size", "512", "--no-progress"]
GPU_CHECK = ROOT / "reports" / "gpu" / "gpu_check_nvidia_h100_80gb_hbm3.txt"
BUS_GB_S = 300.0  # assumed NCCL all-reduce bus bandwidth between GPUs of one NVLink node
EVAL_MIN_PER_MODEL = 15.0  # 5000 samples, DDIM 100, one H100 (README: the `paper` profile)
PAPER_RUNS, PAPER_STEPS = 6, 100_000


def _patchlab(world: int) -> list[str]:
    return [sys.executable, "-m", "patchlab"] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m", "patchlab"]


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, capture_output=True,
                   text=True)


def seconds_per_step(world: int, steps: int, run: Path) -> float:
    _run([*_patchlab(world), "train", "--run-dir", str(run), "--steps", str(steps), *SPEED])
    rows = read_metrics(run / "metrics.csv")
    first = next(r for r in rows if r["step"] == 5)
    return (rows[-1]["elapsed_s"] - first["elapsed_s"]) / (rows[-1]["step"] - first["step"])


def evaluation_seconds(world: int, run: Path, out: Path) -> float:
    """``evaluate`` of 64 samples (8 batches, DDIM 20 steps), as the command itself times it (after start-up)."""
    _run([*_patchlab(world), "evaluate", str(run), "--samples", "64", "--batch-size", "8", "--steps", "20",
          "--features", "offline", "--device", "cpu", "--no-progress", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())["seconds"]


def speed(steps: int, repeats: int) -> dict:
    times = {1: [], 2: []}
    evals = {1: [], 2: []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for world in (1, 2):
                times[world].append(seconds_per_step(world, steps, Path(tmp) / f"w{world}"))
            for world in (1, 2):
                evals[world].append(evaluation_seconds(world, Path(tmp) / "w1", Path(tmp) / f"eval{world}"))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    e1, e2 = statistics.median(evals[1]), statistics.median(evals[2])
    return {"s_per_step_1_process": one, "s_per_step_2_processes": two, "ratio": two / one, "runs": times,
            "evaluate_s_1_process": e1, "evaluate_s_2_processes": e2, "evaluate_ratio": e2 / e1,
            "evaluate_runs": evals}


def memory() -> list[dict]:
    cfg = from_params(image_size=128, dim=128, dim_mults=(1, 2, 4, 8), batch_size=32)
    rows = []
    for n, mode in ((1, "batched"), (2, "sequential")):
        for world in (1, 2, 4, 8):
            row = {"N": n, "patch_mode": mode, "world_size": world}
            for shard in (False, True):
                prof = profile_step(cfg.replace(patches=n, shard_optimizer=shard), "train",
                                    execution=Execution(patch_mode=mode), optimizer="adam", estimate=True,
                                    world_size=world)
                row["sharded" if shard else "plain"] = prof.report.peak_bytes
            rows.append(row)
    return rows


def h100_step_seconds() -> float:
    """The N = 1 batched training step (batch 32) measured on the H100, from the committed GPU check."""
    for line in GPU_CHECK.read_text().splitlines():
        cells = line.split()
        if cells[:3] == ["train", "1", "batched"]:
            return float(cells[-3])
    raise ValueError(f"no 'train 1 batched' row in {GPU_CHECK}")


def paper_time(step_s: float) -> list[dict]:
    grads_gb = 126.78e6 * 4 / 1e9
    out = []
    for world in (1, 4, 8):
        allreduce = 2 * (world - 1) / world * grads_gb / BUS_GB_S
        train_h = PAPER_RUNS * PAPER_STEPS * (step_s / world + allreduce) / 3600
        eval_h = PAPER_RUNS * EVAL_MIN_PER_MODEL / 60 / world
        out.append({"gpus": world, "step_s": step_s / world + allreduce, "allreduce_ms": allreduce * 1e3,
                    "train_h": train_h, "eval_h": eval_h, "total_h": train_h + eval_h})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    fast = speed(args.steps, args.repeats)
    print(f"1. training step, global batch 16 (32 px, dim 32, N = 2 sequential), gloo on the CPU, one thread per "
          f"process:\n   1 process {fast['s_per_step_1_process']:.3f} s/step, 2 processes "
          f"{fast['s_per_step_2_processes']:.3f} s/step: ratio {fast['ratio']:.2f} (0.50 = perfect scaling)")
    print(f"   evaluate, 64 samples (8 batches, DDIM 20): 1 process {fast['evaluate_s_1_process']:.1f} s, 2 processes "
          f"{fast['evaluate_s_2_processes']:.1f} s: ratio {fast['evaluate_ratio']:.2f}")
    mem = memory()
    print("\n2. per-GPU training peak at the paper's configuration (batch 32 global, Adam), estimated:")
    print("   N  mode        W   Adam whole   Adam sharded")
    for r in mem:
        print(f"   {r['N']}  {r['patch_mode']:<10} {r['world_size']:>2}   {format_bytes(r['plain']):>10}   "
              f"{format_bytes(r['sharded']):>12}")
    step_s = h100_step_seconds()
    times = paper_time(step_s)
    print(f"\n3. the `paper` profile on W H100s, ESTIMATED from the measured step ({step_s:.3f} s at batch 32, N = 1 "
          f"batched) / W + all-reduce at {BUS_GB_S:.0f} GB/s + evaluation / W:")
    for t in times:
        print(f"   {t['gpus']} GPU(s): {t['step_s'] * 1e3:.0f} ms/step (all-reduce {t['allreduce_ms']:.1f} ms), "
              f"training {t['train_h']:.1f} h + evaluation {t['eval_h']:.1f} h = about {t['total_h']:.0f} h")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"speed": fast, "memory": mem, "paper_time_estimate": times}, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
