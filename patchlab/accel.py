"""CUDA graphs for patch-by-patch inference: replay one captured UNet pass instead of launching its kernels.

Running the UNet one patch at a time multiplies the number of kernel launches by N*N while each
kernel gets N*N times less work; at sampling batch sizes the GPU then waits on the CPU that launches
the kernels. A CUDA graph records one pass once and replays it with a single launch, so the per-pass
cost is the kernels' own time again. Use it for sampling (no autograd)::

    unet = cuda_graph_unet(model)
    eps = predict_noise(model, x_t, t, patch_mode="sequential", unet=unet)

The graph reads its inputs from static buffers and writes its output into a static buffer that the
next replay overwrites, so the caller must consume the output before the next call (``predict_noise``
scatters it into the image at once). One graph is captured per input shape (the last chunk of a
chunked mode may be smaller). The graphs keep their own memory pool: one pass's activations, which is
what the sequential mode needs anyway.
"""

from collections.abc import Callable

import torch

from .model import PatchUNet


class CudaGraphUNet:
    """Callable with the signature of ``model(x, t, pos)`` that replays captured CUDA graphs.

    x: [B x in_channels x h x w], t: [B], pos: [B x N*N] or None -> noise [B x C x h x w] (a view of a
    static buffer, valid until the next call). The model's weights must not be replaced afterwards
    (in-place updates of the same tensors are seen by the replays). Inference only.
    """

    def __init__(self, model: PatchUNet, *, warmup: int = 2):
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


def cuda_graph_unet(model: PatchUNet) -> Callable:
    """A :class:`CudaGraphUNet` for ``model`` (on CUDA), to pass as ``unet=`` to ``predict_noise``."""
    return CudaGraphUNet(model)
