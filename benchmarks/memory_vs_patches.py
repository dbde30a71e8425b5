"""The paper's memory table, measured: peak memory and step time for N = 1, 2, 4, batched vs sequential.

    python benchmarks/memory_vs_patches.py                   # paper config, CPU (~10 min on 2 cores)
    python benchmarks/memory_vs_patches.py --device cuda --measure-train --json out.json
    python benchmarks/memory_vs_patches.py --preset tiny     # seconds: checks that the script runs

Rows: ``sample`` (one denoising step, batch 16) and ``train`` (one forward+backward with exact
gradients, batch 32) at N = 1, 2, 4, each ``batched`` (all patches in one UNet pass, as the official
code runs) and ``sequential`` (one patch per pass). Every row has the tensor-level *estimate* (fake
tensors on the CPU: nothing allocated, seconds even at 128 px) and, where it is measured on the
device (sampling always; training with ``--measure-train``, since one CPU training step at batch 32
takes minutes and ~18 GiB), the tensor-level *measurement*, the CUDA allocator's peak on a GPU, and
the median step time. Ratios are to N = 1 of the same phase. The targets of the memory issue are
checked at the end (tensor-level peaks; time at N=2 sequential vs N=1 for sampling).

On CUDA, 'allocator' is the caching allocator's peak on the tensor-level baseline (its rise during
the step plus the tracked bytes at the start; see MemoryReport.allocator_step_peak_bytes) and
'alloc raw' its absolute peak, which also holds what earlier rows left behind (cuBLAS workspaces).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from patchlab import memory as MP
from patchlab.config import PAPER_PARAMS, from_params
from patchlab.execution import Execution
from patchlab.memory import format_bytes, with_ratios

PRESETS = {
    "paper": dict(PAPER_PARAMS),
    "tiny": dict(image_size=16, channels=3, patches=2, dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8,
                 timesteps=100),
}
# Upper bounds of peak(N) / peak(N=1) (tensor-level), and of the sequential N=2 sampling step time
# relative to N=1, per device type. Meaningful at the paper's configuration.
MEMORY_TARGETS = {("sample", 2): 0.45, ("sample", 4): 0.31, ("train", 2): 0.30, ("train", 4): 0.12}
TIME_TARGETS = {"cpu": 1.2, "cuda": 1.5}


def run_table(params: dict, *, device: str, sample_batch: int, train_batch: int, measure_train: bool,
              repeats: int, patches=(1, 2, 4), cuda_graphs: bool = False, progress: bool = True) -> list[dict]:
    """One dict per (phase, N, mode): estimate, and measurement on ``device`` where it is taken.

    Memory is profiled row by row; step times are then taken round-robin over all measured rows
    (:func:`patchlab.memory.time_interleaved`), so that load drifts on a shared machine hit
    every row alike and the time ratios stay fair.
    """
    from tqdm.auto import tqdm

    cfg = from_params(**{**params, "device": device})
    jobs = [(phase, n, mode) for phase in ("sample", "train") for n in patches
            for mode in (("batched",) if n == 1 else ("batched", "sequential"))]
    rows = []
    for phase, n, mode in tqdm(jobs, desc="memory", disable=not progress):
        batch = sample_batch if phase == "sample" else train_batch
        ncfg = cfg.replace(patches=n, patch_mode="batched")
        est = MP.profile_step(ncfg, phase, batch=batch, execution=Execution(patch_mode=mode), estimate=True)
        row = {"phase": phase, "patches": n, "patch_mode": mode, "batch": batch, "passes": est.passes,
               "parameters": est.parameters, "estimate": est.to_dict(), "measure": None, "cuda_graphs": None}
        if phase == "sample" or measure_train:
            MP.release_memory()
            row["measure"] = MP.profile_step(ncfg, phase, batch=batch, execution=Execution(patch_mode=mode),
                                             device=device, repeats=0).to_dict()
            MP.release_memory()
        rows.append(row)
    if repeats > 0:
        _time_rows(rows, cfg, device=device, cuda_graphs=cuda_graphs, repeats=repeats, progress=progress)
    _add_ratios(rows)
    return rows


def _time_rows(rows, cfg, *, device, cuda_graphs, repeats, progress) -> None:
    """Fill in ``step_seconds`` of the measured rows (and of their CUDA-graph variants), round-robin."""
    graphs = cuda_graphs and torch.device(device).type == "cuda"
    targets, steps = [], []
    for row in rows:
        if row["measure"] is None:
            continue
        variants = [("measure", "off")]
        if graphs and row["phase"] == "sample":
            variants.append(("cuda_graphs", "graphs"))
            row["cuda_graphs"] = {"step_seconds": None}
        for key, fast in variants:
            step = MP.build_step(cfg.replace(patches=row["patches"], patch_mode="batched"), row["phase"],
                                 batch=row["batch"], execution=Execution(patch_mode=row["patch_mode"], fast_path=fast),
                                 device=device)
            step.run_fast()  # warm-up (and graph capture)
            targets.append((row, key))
            steps.append(step)
    if progress:
        print(f"timing {len(steps)} steps round-robin, {repeats} rounds", file=sys.stderr)
    for (row, key), seconds in zip(targets, MP.time_interleaved(steps, repeats, device)):
        row[key]["step_seconds"] = seconds
    del steps
    MP.release_memory()


def _add_ratios(rows: list[dict]) -> None:
    """Ratios to N = 1 of the same phase (:func:`patchlab.memory.with_ratios`) of the estimates and of the
    measurements, and how the estimate compares with the measurement and the CUDA allocator."""
    for row, est in zip(rows, with_ratios([r["estimate"] for r in rows])):
        row.update(estimate_ratio=est["peak_ratio"], measure_ratio=None, time_ratio=None,
                   cuda_graphs_time_ratio=None, estimate_vs_measure=None, estimate_vs_allocator_raw=None,
                   estimate_vs_allocator=None)
    measured = [r for r in rows if r["measure"]]
    for row, m in zip(measured, with_ratios([r["measure"] for r in measured])):
        base = next(r for r in measured if r["phase"] == row["phase"] and r["patches"] == m["baseline_patches"])
        graphs, base_s = row["cuda_graphs"], base["measure"]["step_seconds"]
        row.update(measure_ratio=m["peak_ratio"], time_ratio=m["time_ratio"],
                   estimate_vs_measure=row["estimate"]["peak_bytes"] / m["peak_bytes"])
        if graphs and graphs["step_seconds"] and base_s:
            row["cuda_graphs_time_ratio"] = graphs["step_seconds"] / base_s
        if m["allocator_peak_bytes"]:
            row["estimate_vs_allocator_raw"] = row["estimate"]["peak_bytes"] / m["allocator_peak_bytes"]
        if m["allocator_step_peak_bytes"]:
            row["estimate_vs_allocator"] = row["estimate"]["peak_bytes"] / m["allocator_step_peak_bytes"]


def check_targets(rows: list[dict], device_type: str) -> list[dict]:
    """The issue's targets: one dict per target with the value, the bound and whether it holds."""
    out = []
    for (phase, n), bound in MEMORY_TARGETS.items():
        row = _find(rows, phase, n, "sequential")
        if row:
            value = row["measure_ratio"] if row["measure_ratio"] is not None else row["estimate_ratio"]
            out.append({"target": f"{phase} peak N={n} sequential / N=1", "value": value, "bound": bound,
                        "ok": value <= bound})
    row = _find(rows, "sample", 2, "sequential")
    if row and row["time_ratio"] is not None:
        bound = TIME_TARGETS.get(device_type, TIME_TARGETS["cuda"])
        best = min(v for v in (row["time_ratio"], row["cuda_graphs_time_ratio"]) if v is not None)
        out.append({"target": "sample step time N=2 sequential / N=1", "value": best, "bound": bound,
                    "ok": best <= bound, "plain": row["time_ratio"], "cuda_graphs": row["cuda_graphs_time_ratio"]})
    return out


def _find(rows, phase, n, mode):
    return next((r for r in rows if (r["phase"], r["patches"], r["patch_mode"]) == (phase, n, mode)), None)


def format_rows(rows: list[dict]) -> str:
    head = ["phase", "N", "mode", "batch", "estimate", "x N=1", "measured", "x N=1", "est/meas", "allocator",
            "est/alloc", "alloc raw", "step s", "time x", "graphs x"]
    lines = []
    for r in rows:
        m = r["measure"] or {}
        lines.append([r["phase"], r["patches"], r["patch_mode"], r["batch"],
                      format_bytes(r["estimate"]["peak_bytes"]), f"{r['estimate_ratio']:.3f}",
                      format_bytes(m["peak_bytes"]) if m else "-", _f(r["measure_ratio"], 3),
                      _f(r["estimate_vs_measure"], 4),
                      format_bytes(m["allocator_step_peak_bytes"]) if m.get("allocator_step_peak_bytes") else "-",
                      _f(r["estimate_vs_allocator"], 3),
                      format_bytes(m["allocator_peak_bytes"]) if m.get("allocator_peak_bytes") else "-",
                      _f(m.get("step_seconds"), 3), _f(r["time_ratio"], 2),
                      _f(r["cuda_graphs_time_ratio"], 2)])
    lines = [[str(c) for c in line] for line in lines]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def format_markdown(rows: list[dict]) -> str:
    """The table as Markdown (the README's form): estimate, measurement, allocator, time, ratios."""
    cuda = any((r["measure"] or {}).get("allocator_step_peak_bytes") for r in rows)
    graphs = any(r["cuda_graphs_time_ratio"] for r in rows)
    head = ["phase", "N", "mode", "estimate", "x N=1", "measured"] + (["allocator", "est / alloc"] if cuda else []) \
        + ["step s", "time x N=1"] + (["CUDA graphs x N=1"] if graphs else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["measure"] or {}
        cells = [f"{r['phase']} (batch {r['batch']})", r["patches"], r["patch_mode"],
                 format_bytes(r["estimate"]["peak_bytes"]), f"{r['estimate_ratio']:.3f}",
                 format_bytes(m["peak_bytes"]) if m else "-"]
        if cuda:
            cells += [format_bytes(m["allocator_step_peak_bytes"]) if m.get("allocator_step_peak_bytes") else "-",
                      _f(r["estimate_vs_allocator"], 3)]
        cells += [_f(m.get("step_seconds"), 3), _f(r["time_ratio"], 2)]
        if graphs:
            cells.append(_f(r["cuda_graphs_time_ratio"], 2))
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _f(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--measure-train", action="store_true", help="also run the training rows for real")
    parser.add_argument("--cuda-graphs", action="store_true", help="CUDA: also time sampling with CUDA graphs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measured row (median)")
    parser.add_argument("--json", type=Path, help="write the rows and target checks here")
    parser.add_argument("--markdown-from", type=Path, metavar="JSON",
                        help="print the Markdown table of a JSON written by --json (or by gpu_check) and exit")
    args = parser.parse_args(argv)
    if args.markdown_from:
        print(format_markdown(json.loads(args.markdown_from.read_text())["rows"]))
        return 0

    device = torch.device(args.device)
    rows = run_table(PRESETS[args.preset], device=str(device), sample_batch=args.sample_batch,
                     train_batch=args.train_batch, measure_train=args.measure_train, repeats=args.repeats,
                     cuda_graphs=args.cuda_graphs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.preset} configuration, {rows[0]['parameters'] / 1e6:.2f} M parameters, device {name}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(format_rows(rows))
    targets = check_targets(rows, device.type)
    if args.preset == "paper":
        for t in targets:
            print(f"{'ok  ' if t['ok'] else 'MISS'} {t['target']}: {t['value']:.3f} (target <= {t['bound']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, "device": name, "torch": torch.__version__,
                                         "rows": rows, "targets": targets}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
