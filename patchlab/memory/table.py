"""The memory-table row: one format for the ``profile`` command, the study's tables and the benchmarks.

A row (:meth:`patchlab.memory.steps.StepProfile.row`) has the columns :data:`ROW_FIELDS`: what step
was profiled (phase, N, the conditioning switches, patch mode, images per pass (the batch when it goes
through in one pass), activation checkpointing, batch, UNet passes, precision,
optimizer, parameter count), its tensor-level peak and the peak's breakdown, the CUDA allocator's
peak (None off CUDA), the median step time (None when estimated), the device and the method
(``"measure"`` or ``"estimate"``). :func:`with_ratios` adds the ratios to the smallest N;
:func:`format_table` prints rows for a terminal.
"""

from typing import Any

from .profiler import CATEGORIES, format_bytes

ROW_FIELDS = ("phase", "patches", "position", "gcc", "patch_mode", "images_per_pass", "checkpointing", "batch",
              "passes", "precision", "optimizer",
              "parameters", "peak_bytes", *(f"{c}_bytes" for c in CATEGORIES), "allocator_peak_bytes",
              "allocator_step_peak_bytes", "step_seconds", "device", "method")
SAME_STEP = ("phase", "batch", "precision", "optimizer")  # rows compared by a ratio share these


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``peak_ratio`` and ``time_ratio``: relative to the first row of the same
    :data:`SAME_STEP` with the smallest N (``baseline_patches``); None where a value is missing."""
    out = []
    for row in rows:
        base = min((r for r in rows if all(r[k] == row[k] for k in SAME_STEP)), key=lambda r: r["patches"])
        both = row["step_seconds"] is not None and base["step_seconds"]
        out.append({**row, "peak_ratio": row["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else None,
                    "time_ratio": row["step_seconds"] / base["step_seconds"] if both else None,
                    "baseline_patches": base["patches"]})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """A terminal table of :func:`with_ratios` rows: peak, its ratio, the breakdown, the allocator's peak
    (on CUDA), the step time and its ratio."""
    cuda = any(r["allocator_peak_bytes"] is not None for r in rows)
    fast = any(r.get("fast") for r in rows)
    levers = any(r.get("images_per_pass") not in (None, r["batch"]) or r.get("checkpointing", "none") != "none"
                 for r in rows)
    head = ["phase", "N", "mode"] + (["img/pass", "ckpt"] if levers else []) + \
        ["batch", "passes", "peak", "x N=min", "weights", "grads", "optim", "activ", "temps"] + \
        (["alloc peak"] if cuda else []) + ["step s", "time x"] + (["fast", "compile s"] if fast else [])
    lines = []
    for r in rows:
        cells = [r["phase"], r["patches"], r["patch_mode"]] + \
            ([r.get("images_per_pass") or r["batch"], r.get("checkpointing", "none")] if levers else []) + \
            [r["batch"], r["passes"],
                 format_bytes(r["peak_bytes"]), _num(r["peak_ratio"], 3),
                 *(format_bytes(r[f"{c}_bytes"]) for c in CATEGORIES)]
        if cuda:
            cells.append(format_bytes(r["allocator_peak_bytes"]) if r["allocator_peak_bytes"] is not None else "-")
        cells += [_num(r["step_seconds"], 4), _num(r["time_ratio"], 2)]
        if fast:
            cells += [r.get("fast") or "-", _num(r.get("compile_seconds"), 1)]
        lines.append([str(c) for c in cells])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    first = rows[0] if rows else {}
    title = (f"{first.get('method', '')} on {first.get('device', '')}; {first.get('parameters', 0) / 1e6:.2f} M "
             f"parameters; 'x N=min': peak relative to the smallest N of the same phase")
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*line) for line in lines])


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
