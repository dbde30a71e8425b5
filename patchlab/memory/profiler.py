"""Tensor-level memory profiler: the peak bytes of any computation, broken down by role, on CPU and CUDA.

Wrap a computation and read its report::

    with MemoryProfiler(modules=[model], optimizer=opt) as prof:
        loss = model(x).sum(); loss.backward(); opt.step()
    print(prof.report.format())          # peak, and the peak split into weights, gradients, ...

    out, report = profile(fn, *args, modules=[model])       # the same as a function

    with estimating():                    # fake tensors: nothing is allocated, nothing is computed
        model = Net(); x = torch.randn(32, 3, 128, 128)
        _, report = profile(lambda: model(x).sum().backward(), modules=[model])

How bytes are counted (``method="measure"`` on real tensors, ``"estimate"`` on fake or meta tensors):

- A ``TorchDispatchMode`` sees every ATen operator below autograd, forward and backward (the autograd
  engine carries the mode into its worker threads). Each tensor an operator takes or returns leads to
  its *untyped storage*; every storage is counted once, however many views share it, with its
  ``nbytes()``. A weak reference on the storage object reports when the storage is deallocated
  (PyTorch keeps one Python object per storage for as long as the storage lives), so frees are exact.
- Storages that were alive before profiling began count from the start: the parameters, buffers,
  ``.grad`` and optimizer state of the ``modules`` / ``optimizer`` given, and any other tensor the
  computation reads (its inputs) when first seen.
- The peak is the largest sum of live storages after any operator. At the peak every live storage is
  put in one category, the first that applies: **weights** (parameters and buffers of ``modules``, or
  any ``nn.Parameter``), **gradients** (``.grad`` of those parameters), **optimizer_state** (tensors in
  ``optimizer.state``), **activations** (tensors autograd holds for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``), **temporaries** (everything else: inputs, outputs,
  intermediate results; all of a no-grad computation's intermediates are temporaries).
- Not seen: memory that kernels allocate and free inside one operator (convolution workspaces, cuBLAS
  workspaces), allocator rounding and fragmentation, CUDA-graph pools. On CUDA the report therefore
  also gives the caching allocator's own peak (``max_memory_allocated`` after a reset), which includes
  them; the difference between the two figures is exactly that overhead.

Under :func:`estimating` tensors are ``FakeTensor`` s: operators only compute shapes, so the same
accounting runs in seconds for models that would need gigabytes; it agrees with the measurement of the
same computation on real tensors (tests check 2%). Python scalars read from fake tensors (``.item()``,
``float(t)``, ``bool(t)``) cannot be known: they are stand-ins (``False`` for booleans, ``1`` for
numbers), so data-dependent branches take that path.

Why not PyTorch's own tools: ``torch.cuda.max_memory_allocated`` and ``torch.cuda.memory._record_memory_history``
exist only on CUDA; ``torch.profiler(profile_memory=True)`` records allocations per operator but
neither roles nor frees of tensors that outlive it; ``torch.distributed._tools.mem_tracker`` is
private, tied to ``torch.distributed`` and classifies by module hooks rather than by what autograd
saves. This module needs only the public dispatch-mode and saved-tensor-hook APIs, and FakeTensor.
"""

import collections
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "temporaries")
MIB = 2 ** 20

_FREE, _UNSAVE = 0, 1
_STACK: list["MemoryProfiler"] = []  # active profilers, outermost first
_STACK_LOCK = threading.Lock()


@dataclass(frozen=True)
class MemoryReport:
    """What :class:`MemoryProfiler` saw. All sizes in bytes.

    ``breakdown`` splits ``peak_bytes`` into :data:`CATEGORIES` (it sums to ``peak_bytes``).
    ``start_bytes`` / ``end_bytes``: tracked bytes alive when profiling began / ended.
    ``allocator_peak_bytes`` / ``allocator_start_bytes``: the CUDA caching allocator's peak and its
    allocated bytes at the start (None off CUDA). ``seconds``: wall time of the profiled block
    (tracking included; for an estimate, the time the estimate took). ``method``: ``"measure"`` or
    ``"estimate"``. ``peak_op``: the operator after which the peak was reached.
    """

    peak_bytes: int
    breakdown: dict[str, int]
    start_bytes: int
    end_bytes: int
    seconds: float
    device: str
    method: str
    ops: int
    peak_op: str | None = None
    allocator_peak_bytes: int | None = None
    allocator_start_bytes: int | None = None

    @property
    def weights_bytes(self) -> int:
        return self.breakdown["weights"]

    @property
    def gradients_bytes(self) -> int:
        return self.breakdown["gradients"]

    @property
    def optimizer_state_bytes(self) -> int:
        return self.breakdown["optimizer_state"]

    @property
    def activations_bytes(self) -> int:
        return self.breakdown["activations"]

    @property
    def temporaries_bytes(self) -> int:
        return self.breakdown["temporaries"]

    @property
    def allocator_step_peak_bytes(self) -> int | None:
        """The CUDA allocator's peak on the tensor-level baseline: its rise during the block plus
        ``start_bytes``. What the allocator held at the start but no tracked tensor explains (cuBLAS
        workspaces of earlier streams, memory of other objects) drops out, so this is the figure to
        compare with ``peak_bytes`` and with an estimate. None off CUDA."""
        if self.allocator_peak_bytes is None or self.allocator_start_bytes is None:
            return None
        return self.allocator_peak_bytes - self.allocator_start_bytes + self.start_bytes

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready form: every field, ``<category>_bytes`` for each category and
        ``allocator_step_peak_bytes``."""
        out = asdict(self)
        out.update({f"{c}_bytes": v for c, v in self.breakdown.items()})
        out["allocator_step_peak_bytes"] = self.allocator_step_peak_bytes
        return out

    def format(self) -> str:
        """A short human-readable table."""
        lines = [f"peak {format_bytes(self.peak_bytes)} ({self.method}, {self.device}, {self.ops} ops, "
                 f"{self.seconds:.2f} s; peak after {self.peak_op})"]
        for cat in CATEGORIES:
            share = self.breakdown[cat] / self.peak_bytes if self.peak_bytes else 0.0
            lines.append(f"  {cat:<16}{format_bytes(self.breakdown[cat]):>12}{share:>8.1%}")
        if self.allocator_peak_bytes is not None:
            lines.append(f"  CUDA allocator peak {format_bytes(self.allocator_peak_bytes)} "
                         f"(start {format_bytes(self.allocator_start_bytes or 0)}; on the tensor-level "
                         f"baseline {format_bytes(self.allocator_step_peak_bytes)})")
        return "\n".join(lines)


def format_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; sizes in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


class _Ref(weakref.ref):
    """Weak reference to a storage that remembers the storage's serial number."""

    __slots__ = ("serial",)


@dataclass
class _Info:
    ref: _Ref
    sid: int  # id() of the storage object (stable while it lives)
    nbytes: int
    param: bool = False
    saved: int = 0  # how many saved-for-backward slots hold it


class _Saved:
    """What the pack hook returns: holds the tensor, and says when autograd lets go of it."""

    __slots__ = ("tensor", "handles")

    def __init__(self, tensor: torch.Tensor, handles: list):
        self.tensor, self.handles = tensor, handles

    def __del__(self):
        for prof, serial in self.handles:
            prof._events.append((_UNSAVE, serial))


@dataclass(eq=False)  # identity semantics: nested profilers with equal settings are different objects
class MemoryProfiler:
    """Context manager that records the tensor-level peak of the computation it wraps.

    modules: whose parameters/buffers count as weights and whose ``.grad`` as gradients.
    optimizer: whose ``state`` counts as optimizer state.
    device: count only storages of tensors on this device (``"cuda"``, ``"cpu"``, ...); None = all.
    After the block, ``report`` holds the :class:`MemoryReport`. A profiler is used once; nested
    profilers each see the whole computation inside them.
    """

    modules: Iterable[nn.Module] = ()
    optimizer: torch.optim.Optimizer | None = None
    device: str | torch.device | None = None
    report: MemoryReport | None = field(default=None, init=False)

    def __post_init__(self):
        if isinstance(self.modules, nn.Module):
            self.modules = [self.modules]
        self.modules = list(self.modules)
        if self.device is not None:
            self.device = torch.device(self.device)
        self._entered = False

    # --- context manager --------------------------------------------------------------------------

    def __enter__(self) -> "MemoryProfiler":
        if self._entered:
            raise RuntimeError("a MemoryProfiler is used once; create a new one for each measurement")
        self._entered = True
        self._live: dict[int, _Info] = {}
        self._by_id: dict[int, int] = {}
        self._events: collections.deque = collections.deque()
        self._serial = self._current = self._start = self._peak = self._ops = 0
        self._snapshot: dict[str, int] | None = None
        self._peak_pending, self._peak_op = True, None
        self._devices: set[str] = set()
        self._fake = False
        for t in self._role_tensors():
            self._see(t, existing=True)
        self._cuda = _CudaPeak.start()
        with _STACK_LOCK:
            _STACK.append(self)
        self._mode = _TrackingMode(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
        self._t0 = time.perf_counter()
        self._mode.__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._hooks.__exit__(*exc)
        finally:
            self._mode.__exit__(*exc)
            with _STACK_LOCK:
                _STACK.remove(self)
        allocator = self._cuda.stop() if self._cuda else None
        seconds = time.perf_counter() - self._t0
        self._drain()
        if self._peak_pending:
            self._take_snapshot()
        self.report = MemoryReport(
            peak_bytes=self._peak, breakdown=dict(self._snapshot), start_bytes=self._start,
            end_bytes=self._current, seconds=seconds, device="+".join(sorted(self._devices)) or "none",
            method="estimate" if self._fake else "measure", ops=self._ops, peak_op=self._peak_op,
            allocator_peak_bytes=allocator[0] if allocator and "cuda" in "".join(self._devices) else None,
            allocator_start_bytes=allocator[1] if allocator and "cuda" in "".join(self._devices) else None)
        self._live.clear()  # drops the weak references: no callbacks after this
        self._by_id.clear()

    # --- bookkeeping ------------------------------------------------------------------------------

    def _params(self) -> list[torch.Tensor]:
        return [p for m in self.modules for p in m.parameters()]

    def _role_tensors(self) -> list[torch.Tensor]:
        """Tensors with a known role that exist now: weights, gradients, optimizer state."""
        out = [t for m in self.modules for t in (*m.parameters(), *m.buffers())]
        out += [p.grad for p in self._params() if p.grad is not None]
        return out + self._optimizer_tensors()

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        return [v for state in self.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]

    def _counts(self, t: torch.Tensor) -> bool:
        return self.device is None or (t.device.type == self.device.type and
                                       (self.device.index is None or t.device.index == self.device.index))

    def _see(self, t: torch.Tensor, *, existing: bool, op=None) -> int | None:
        """Track ``t``'s storage; ``existing``: it was alive before it was first seen. Returns its serial."""
        if not isinstance(t, torch.Tensor) or not self._counts(t):
            return None
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse or wrapper subclasses: no storage
            return None
        serial = self._by_id.get(id(storage))
        if serial is not None:
            info = self._live[serial]
            if info.ref() is storage:
                if storage.nbytes() != info.nbytes:  # resized in place (resize_, set_, out= ops)
                    self._change(storage.nbytes() - info.nbytes, op)
                    info.nbytes = storage.nbytes()
                return serial
            self._free(serial)  # a dead storage's id reused before its callback was processed
        self._serial += 1
        serial = self._serial
        nbytes = storage.nbytes()
        self._live[serial] = _Info(_Ref(storage, self._on_free), id(storage), nbytes,
                                   param=isinstance(t, nn.Parameter))
        self._live[serial].ref.serial = serial
        self._by_id[id(storage)] = serial
        self._devices.add(str(t.device))
        if not self._fake and (t.is_meta or _is_fake(t)):
            self._fake = True
        if existing:  # alive since the start: raise every figure recorded so far
            self._current += nbytes
            self._start += nbytes
            self._peak += nbytes
            if self._snapshot is not None and not self._peak_pending:
                self._snapshot[self._category(self._live[serial], self._roles())] += nbytes
        else:
            self._change(nbytes, op)
        return serial

    def _change(self, delta: int, op) -> None:
        if delta < 0 and self._peak_pending:
            self._take_snapshot()
        self._current += delta
        if self._current > self._peak:
            self._peak, self._peak_pending, self._peak_op = self._current, True, _op_name(op)

    def _on_free(self, ref: _Ref) -> None:  # weakref callback: may run at any time, so only queue
        self._events.append((_FREE, ref.serial))

    def _free(self, serial: int) -> None:
        info = self._live.pop(serial, None)
        if info is None:
            return
        if self._by_id.get(info.sid) == serial:
            del self._by_id[info.sid]
        self._change(-info.nbytes, None)

    def _drain(self) -> None:
        """Apply the frees and unsaves queued since the last operator (the state before them may be the peak)."""
        if self._events and self._peak_pending:
            self._take_snapshot()
        while self._events:
            kind, serial = self._events.popleft()
            if kind == _FREE:
                self._free(serial)
            elif serial in self._live:
                self._live[serial].saved -= 1

    def _saved(self, t: torch.Tensor) -> int | None:
        serial = self._see(t, existing=True)
        if serial is not None:
            self._live[serial].saved += 1
        return serial

    def _roles(self) -> dict[int, str]:
        roles: dict[int, str] = {}
        for t in self._optimizer_tensors():
            roles[id(t.untyped_storage())] = "optimizer_state"
        for p in self._params():
            if p.grad is not None:
                roles[id(p.grad.untyped_storage())] = "gradients"
        for m in self.modules:
            for t in (*m.parameters(), *m.buffers()):
                roles[id(t.untyped_storage())] = "weights"
        return roles

    @staticmethod
    def _category(info: _Info, roles: dict[int, str]) -> str:
        role = roles.get(info.sid)
        if role is not None:
            return role
        if info.param:
            return "weights"
        return "activations" if info.saved > 0 else "temporaries"

    def _take_snapshot(self) -> None:
        roles = self._roles()
        snap = dict.fromkeys(CATEGORIES, 0)
        for info in list(self._live.values()):
            snap[self._category(info, roles)] += info.nbytes
        self._snapshot, self._peak_pending = snap, False


_METADATA_OPS = {torch.ops.prim.device.default}  # fake tensors ask for their device through the dispatcher


class _TrackingMode(TorchDispatchMode):
    """Sees every operator: registers the storages it reads and the ones it creates."""

    def __init__(self, prof: MemoryProfiler):
        super().__init__()
        self.prof = prof

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return func(*args, **kwargs)
        prof = self.prof
        prof._drain()
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                prof._see(t, existing=True)
        out = func(*args, **kwargs)
        prof._ops += 1
        prof._drain()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                prof._see(t, existing=False, op=func)
        return out


def _pack(t: torch.Tensor) -> _Saved:
    with _STACK_LOCK:
        active = list(_STACK)
    handles = [(prof, serial) for prof in active if (serial := prof._saved(t)) is not None]
    return _Saved(t, handles)


def _unpack(saved: _Saved) -> torch.Tensor:
    return saved.tensor


def _op_name(op) -> str | None:
    return None if op is None else str(getattr(op, "__name__", op))


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)


class _CudaPeak:
    """The caching allocator's peak over a block, kept right when profilers nest."""

    def __init__(self, index: int):
        self.index, self.carry, self.begin = index, 0, 0

    @classmethod
    def start(cls) -> "_CudaPeak | None":
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None
        peak = cls(torch.cuda.current_device())
        torch.cuda.synchronize(peak.index)
        with _STACK_LOCK:
            for outer in _STACK:  # a reset below would lose the outer profiler's peak so far
                if outer._cuda is not None and outer._cuda.index == peak.index:
                    outer._cuda.carry = max(outer._cuda.carry, torch.cuda.max_memory_allocated(peak.index))
        peak.begin = torch.cuda.memory_allocated(peak.index)
        torch.cuda.reset_peak_memory_stats(peak.index)
        return peak

    def stop(self) -> tuple[int, int]:
        torch.cuda.synchronize(self.index)
        return max(self.carry, torch.cuda.max_memory_allocated(self.index)), self.begin


def profile(fn: Callable, *args, modules: Iterable[nn.Module] = (), optimizer=None, device=None,
            **kwargs) -> tuple[Any, MemoryReport]:
    """Run ``fn(*args, **kwargs)`` under a :class:`MemoryProfiler`; returns (its result, the report)."""
    with MemoryProfiler(modules, optimizer, device) as prof:
        out = fn(*args, **kwargs)
    return out, prof.report


class _ScalarStandIn(TorchDispatchMode):
    """Answers Python-scalar reads of fake tensors with stand-ins (False / 1) instead of failing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            if dtype == torch.bool:
                return False
            return 1.0 if dtype.is_floating_point or dtype.is_complex else 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def estimating():
    """Inside, new tensors are fake (``FakeTensorMode``): shapes, dtypes and storage sizes without memory.

    Build the model, the inputs and the optimizer inside, then profile as usual; the report's method
    is ``"estimate"``. Yields the ``FakeTensorMode`` (e.g. for ``mode.from_tensor(real)``).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode, _ScalarStandIn():
        yield mode
