"""Fast per-pass execution of the UNet: CUDA graphs, ``torch.compile`` and bf16 weights.

Every function here returns a ``unet(inputs, t, pos)`` callable with the signature and result of the
model's own forward; an :class:`patchlab.execution.Execution` with ``fast_path="compile"`` or ``"graphs"``
builds one per model (:func:`fast_unet`) and runs every pass of a step through it (``unet=`` of an
execution takes any such callable); the patch modes, their memory and their exact gradients stay those of
the plain model.

CUDA graphs for patch-by-patch inference: replay one captured UNet pass instead of launching its kernels.

Running the UNet one patch at a time multiplies the number of kernel launches by N*N while each
kernel gets N*N times less work; at sampling batch sizes the GPU then waits on the CPU that launches
the kernels. A CUDA graph records one pass once and replays it with a single launch, so the per-pass
cost is the kernels' own time again. Use it for sampling (no autograd)::

    unet = cuda_graph_unet(model)
    eps = predict_noise(model, x_t, t, Execution(patch_mode="sequential", unet=unet))

The graph reads its inputs from static buffers and writes its output into a static buffer that the
next replay overwrites, so the caller must consume the output before the next call (``predict_noise``
scatters it into the image at once). One graph is captured per input shape (the last chunk of a
chunked mode may be smaller). The graphs keep their own memory pool: one pass's activations, which is
what the sequential mode needs anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


FAST_PATHS = ("compile", "graphs")  # torch.compile of each pass; CUDA graphs of each pass


class CudaGraphUNet:
    """Callable with the signature of ``model(x, t, pos)`` that replays captured CUDA graphs.

    x: [B x in_channels x h x w], t: [B], pos: [B x N*N] or None -> noise [B x C x h x w] (a view of a
    static buffer, valid until the next call). The model's weights must not be replaced afterwards
    (in-place updates of the same tensors are seen by the replays). Inference only.
    """

    def __init__(self, model: nn.Module, *, warmup: int = 2):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {device}")
        self.model, self.warmup = model, warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("CUDA-graph UNet replays are for inference: call it under torch.no_grad()")
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (tuple(x.shape), x.dtype, t.dtype, None if pos is None else pos.dtype, dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, pos)
        graph, static, out = self.graphs[key]
        for buffer, value in zip(static, (x, t, pos)):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        return out

    def _capture(self, x, t, pos):
        static = tuple(None if v is None else v.clone() for v in (x, t, pos))
        stream = _warmup_stream(x.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (cuDNN/cuBLAS choose their kernels)
            for _ in range(self.warmup):
                self.model(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model(*static)
        return graph, static, out


_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for all warm-ups: cuBLAS keeps a workspace per stream for good,
    so a new stream per graph would leak tens of MiB each time."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


def cuda_graph_unet(model: nn.Module) -> Callable:
    """A :class:`CudaGraphUNet` for ``model`` (on CUDA), to run the passes of sampling (``Execution(unet=...)``)."""
    return CudaGraphUNet(model)


class GraphedTrainUNet:
    """Training passes (forward *and* backward) replayed as CUDA graphs, one pair per input shape.

    Same signature and result as ``model(x, t, pos)``; built with ``torch.cuda.make_graphed_callables``,
    whose backward graph returns the parameters' gradients to autograd, which adds them into ``.grad``
    as for the plain model (so patch-by-patch accumulation stays exact). Needs the model on CUDA in
    training mode; inputs are copied into static buffers; the output is valid until the next call.
    Under autocast the graphs are captured with autocast's weight cache off (as PyTorch requires).
    """

    def __init__(self, model: nn.Module, *, warmup: int = 3):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {device}")
        self.model, self.warmup = model, warmup
        self.graphed: dict[tuple, nn.Module] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            raise RuntimeError("GraphedTrainUNet replays training passes: call it with gradients enabled")
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (tuple(x.shape), x.dtype, t.dtype, None if pos is None else tuple(pos.shape), dtype)  # a global
        # view's pass has the shapes of a window pass but fractional timesteps
        if key not in self.graphed:
            wrapper = _Pass(self.model, with_pos=pos is not None)
            args = (x.detach().clone(), t.clone()) + (() if pos is None else (pos.detach().clone(),))
            held = [p.grad for p in self.model.parameters()]  # the step's gradients so far, kept out of the warm-up
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
                self.graphed[key] = torch.cuda.make_graphed_callables(wrapper, args, num_warmup_iters=self.warmup)
            for p, grad in zip(self.model.parameters(), held):
                p.grad = grad
        call = self.graphed[key]
        return call(x, t) if pos is None else call(x, t, pos)


class _Pass(nn.Module):
    """The model's forward as a module without optional arguments (what ``make_graphed_callables`` takes)."""

    def __init__(self, model: nn.Module, *, with_pos: bool):
        super().__init__()
        self.model, self.with_pos = model, with_pos

    def forward(self, x, t, pos=None):
        return self.model(x, t, pos if self.with_pos else None)


class CompiledUNet:
    """``torch.compile`` of the per-pass UNet: one compiled graph per input shape, kept across passes and steps.

    Same signature and result as ``model(x, t, pos)``. ``dynamic=False``: each chunk shape of a patch mode
    (the last chunk may be smaller) is compiled once, for its own shape, and reused. Compilation happens
    in the first call of each shape (and the first backward for training); ``patchlab profile --fast``
    reports it separately from the step time. ``freeze=True`` (inference only): inductor treats the
    weights as constants and prepacks them for the CPU's convolutions (a sampling step of N=4 one patch at
    a time: 0.28 s plain -> 0.19 s, reports/speed_cpu.json); the weights must not change afterwards.
    """

    def __init__(self, model: nn.Module, *, backend: str = "inductor", mode: str | None = None,
                 freeze: bool = False):
        self.model, self.freeze = model, freeze
        self.compiled = torch.compile(model, backend=backend, mode=mode, dynamic=False)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if not self.freeze:
            return self.compiled(x, t, pos)
        if torch.is_grad_enabled():
            raise RuntimeError("a frozen compiled UNet is for inference: call it under torch.no_grad()")
        import torch._inductor.config as inductor

        with inductor.patch(freezing=True):
            return self.compiled(x, t, pos)


def compiled_unet(model: nn.Module, **kwargs) -> Callable:
    """A :class:`CompiledUNet` for ``model`` (CPU or CUDA), to run the passes of a step (``Execution(unet=...)``)."""
    return CompiledUNet(model, **kwargs)


def graphed_train_unet(model: nn.Module) -> Callable:
    """A :class:`GraphedTrainUNet` for ``model`` (on CUDA), to run the passes of training (``Execution(unet=...)``)."""
    return GraphedTrainUNet(model)


COMPILE_BACKEND = "inductor"  # the backend of fast_unet's "compile" path (tests use a quicker one)


def fast_unet(model: nn.Module, phase: str, *, path: str | None = None) -> Callable:
    """The fast per-pass execution of ``phase`` (``"sample"`` or ``"train"``) for ``model`` where it is.

    ``path``: ``"graphs"`` (CUDA only: :class:`CudaGraphUNet` for sampling, :class:`GraphedTrainUNet`
    for training) or ``"compile"`` (:class:`CompiledUNet`, CPU or CUDA; for sampling on the CPU with
    the weights frozen in); default: graphs on CUDA, compile on the CPU.
    """
    device = next(model.parameters()).device
    path = ("graphs" if device.type == "cuda" else "compile") if path is None else path
    if path not in FAST_PATHS:
        raise ValueError(f"fast path must be one of {', '.join(map(repr, FAST_PATHS))}, got {path!r}")
    if phase not in ("sample", "train"):
        raise ValueError(f"phase must be 'sample' or 'train', got {phase!r}")
    if path == "compile":  # sampling's weights stay fixed: frozen into the compiled graph on the CPU
        return compiled_unet(model, backend=COMPILE_BACKEND, freeze=phase == "sample" and device.type == "cpu")
    return cuda_graph_unet(model) if phase == "sample" else graphed_train_unet(model)


def cast_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store ``model``'s parameters in ``dtype`` (in place; for sampling), keeping its buffers (e.g. the
    timestep frequencies, which bf16 would round badly) in float32. Run it under bf16 autocast
    (``precision="bf16-weights"``): the weights are then used as they are, without a per-pass copy."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(dtype)
    return model

