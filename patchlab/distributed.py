"""Data parallelism on ``torch.distributed``: one process per device, launched by ``torchrun``.

``torchrun --nproc-per-node W -m patchlab train ...`` starts W processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous in their environment. :func:`join` then joins the process group: NCCL
on CUDA (each process on GPU ``LOCAL_RANK``), gloo on the CPU. Started any other way, a process is a
world of one and nothing here communicates.

The division of labour (see :func:`patchlab.training.train`): every process draws the same batch
order, timesteps and noise as one process would for the global batch and keeps its own rows
(:meth:`World.rows`); DistributedDataParallel averages the gradients once per step; rank 0 alone writes
files (:func:`on_main` runs the run directory's preparation there and hands its outcome, or its error,
to the others).
"""

import contextlib
import datetime
import os
import re
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runtime import resolve_device

TIMEOUT_ENV = "PATCHLAB_DIST_TIMEOUT"  # seconds a collective may wait for a peer (default 600)
JOIN_TIMEOUT_ENV = "PATCHLAB_JOIN_TIMEOUT"  # seconds the start waits for every process to join (default 120)


class PeerError(RuntimeError):
    """Raised on ranks other than 0 when rank 0 failed and has reported the error itself."""


class PeerLostError(RuntimeError):
    """Another process of the job stopped or cannot be reached while this one trained."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, on its machine ``local_rank``.
    ``joined``: a process group is running (torchrun, even with one process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    joined: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def rows(self, batch: int) -> int:
        """Rows of a global batch of ``batch`` per process; refuses a batch that does not divide."""
        if batch % self.size:
            raise ValueError(f"batch_size={batch} does not divide over {self.size} processes (WORLD_SIZE): "
                             f"the global batch is split evenly, so use a multiple of {self.size}, e.g. "
                             f"{max(self.size, batch - batch % self.size)}")
        return batch // self.size


LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun gives each process


def launched() -> bool:
    """Whether torchrun (or another launcher of ``torch.distributed``) started this process (refusing an
    environment that sets only part of what a launcher sets, :func:`check_environment`)."""
    check_environment()
    return all(k in os.environ for k in LAUNCH_KEYS)


def check_environment(environ=None) -> None:
    """Refuse, in one line, a process environment that says this process is part of a data-parallel job (a
    ``WORLD_SIZE`` above 1 or a ``RANK`` above 0) without all of :data:`LAUNCH_KEYS`, or with a rank that
    does not fit the world: such a process would otherwise train alone, silently."""
    env = os.environ if environ is None else environ
    present = [k for k in LAUNCH_KEYS if k in env]
    if not present:
        return
    try:
        rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError(f"RANK and WORLD_SIZE must be integers, got RANK={env.get('RANK')!r}, "
                         f"WORLD_SIZE={env.get('WORLD_SIZE')!r}") from None
    missing = [k for k in LAUNCH_KEYS if k not in env]
    if missing and (size > 1 or rank > 0):
        raise ValueError("this process's environment names a data-parallel job (" +
                         ", ".join(f"{k}={env[k]}" for k in present) + f") but lacks {', '.join(missing)}: "
                         f"start the job with torchrun (python -m torch.distributed.run ...), or unset "
                         f"{', '.join(present)} to train in one process")
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is not a rank of WORLD_SIZE={size} processes (0 to {size - 1})")


def main_process() -> bool:
    """Rank 0 of a torchrun job, or a process started any other way (reads the environment, so it holds
    before and after the process group exists)."""
    return int(os.environ.get("RANK", 0)) == 0


def current() -> World:
    """The world of a process group already joined, else a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)), joined=True)


@contextlib.contextmanager
def join(device: str = "auto"):
    """Yield ``(world, device)`` for this process: under torchrun, the process group joined (and left
    again on exit if this call joined it) and, on CUDA, GPU ``LOCAL_RANK``; otherwise a world of one on
    ``resolve_device(device)``."""
    dev = resolve_device(device)
    if not launched() or (dist.is_available() and dist.is_initialized()):
        world = current()
        yield world, _local_device(dev, world)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                               f"start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    _join_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        world = current()
        yield world, _local_device(dev, world)
    finally:
        dist.destroy_process_group()


def _join_group(backend: str) -> None:
    """Join the job's process group, waiting at most ``PATCHLAB_JOIN_TIMEOUT`` seconds (120) for the other
    processes to start; the collectives then wait up to ``PATCHLAB_DIST_TIMEOUT`` (600), as long because
    the other ranks wait in the next all-reduce while rank 0 writes a checkpoint, a sample grid or a
    learning-curve point. A job whose other processes never start ends with one line saying so."""
    collectives = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 600)))
    settable = hasattr(dist, "set_timeout")  # (older torch: the join waits as long as a collective)
    join = float(os.environ.get(JOIN_TIMEOUT_ENV, 120)) if settable else collectives.total_seconds()
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    rank, size = os.environ["RANK"], os.environ["WORLD_SIZE"]
    print(f"[rank {rank} of {size}] joining the job at {where}: waiting for its other processes (at most "
          f"{join:.0f} s, {JOIN_TIMEOUT_ENV})", file=sys.stderr, flush=True)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=join))
    except (RuntimeError, TimeoutError) as exc:  # DistStoreError (a RuntimeError) or a socket timeout
        raise JoinTimeoutError(
            f"rank {rank} of {size}: the job's other processes did not join at {where} within {join:.0f} s "
            f"({short_reason(exc)}); start all {size} of them (torchrun --nproc-per-node {size} ...), or "
            f"raise {JOIN_TIMEOUT_ENV}") from exc
    if settable:
        dist.set_timeout(collectives)


class JoinTimeoutError(RuntimeError):
    """The other processes of a torchrun job did not start within ``PATCHLAB_JOIN_TIMEOUT`` seconds."""


def _local_device(dev: torch.device, world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if dev.type == "cuda" and world.joined else dev


def on_main(world: World, fn):
    """Run ``fn()`` on rank 0 only and return its result on every rank (it must pickle). If it raises,
    rank 0 re-raises the error and the other ranks raise :class:`PeerError` (which the command line
    does not print again)."""
    if not world.joined:
        return fn()
    box = [None]
    if world.main:
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:
            dist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}")], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise PeerError(f"rank 0 stopped: {value}")
    return value


def mean_and_any(world: World, value: float, flag: bool, device) -> tuple[float, bool]:
    """``value`` averaged over the ranks and whether ``flag`` is set on any rank: one all-reduce."""
    if not world.joined:
        return value, flag
    both = torch.tensor([value, float(flag)], dtype=torch.float64, device=device)
    dist.all_reduce(both)
    return float(both[0]) / world.size, bool(both[1] > 0)


def gather_to_main(world: World, part: dict) -> dict | None:
    """Merge every rank's ``part`` (a dict, e.g. batch index -> CPU tensor) on rank 0; other ranks get
    None. A world of one returns ``part``."""
    if not world.joined:
        return part
    parts = [None] * world.size if world.main else None
    dist.gather_object(part, parts, dst=0)
    if not world.main:
        return None
    return {k: v for p in parts for k, v in p.items()}


def shards_optimizer(train_cfg, world_size: int) -> bool:
    """Whether Adam's state is split over the processes: ``shard_optimizer`` asked for and more than one
    process (``train_cfg``: a :class:`patchlab.config.TrainConfig`)."""
    return bool(train_cfg.shard_optimizer) and world_size > 1


def zero_shards(numels: list[int], world_size: int) -> list[list[int]]:
    """Which parameters (indices into ``numels``, their element counts) each rank's share of Adam's state
    holds under ``ZeroRedundancyOptimizer``: its partition, largest parameter first, each to the rank
    with the fewest elements so far (the first such rank). For memory estimates: a rank needs the state
    of its share only."""
    shards: list[list[int]] = [[] for _ in range(world_size)]
    sizes = [0] * world_size
    for i in sorted(range(len(numels)), key=lambda i: numels[i], reverse=True):  # stable, as sorted() there
        rank = sizes.index(min(sizes))
        shards[rank].append(i)
        sizes[rank] += numels[i]
    return shards


PEER_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport",
                 "NCCL communicator was aborted", "Timed out", "timed out")


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says that another process of the job died or cannot be reached (what gloo and NCCL
    raise in a collective when a peer is gone)."""
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError)
                                               and any(s in str(exc) for s in PEER_FAILURES))


def short_reason(exc: BaseException) -> str:
    """The first sentence of a backend's error, without its source location: e.g. "Connection closed by
    peer [127.0.0.1]:4503"."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]


def barrier(world: World) -> None:
    """Wait for every rank (nothing for a world of one)."""
    if world.joined:
        dist.barrier()
