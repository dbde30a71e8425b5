"""What the tests share besides the tiny configuration (tests/tiny.py): how they start patchlab in another
process, alone or under torchrun, the environment of those processes, and a free local port."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    """The environment of the processes the tests start: one thread each, unbuffered output, and a short
    wait for a missing data-parallel peer."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATCHLAB_DIST_TIMEOUT": "60", **extra}


def standalone(processes: int) -> tuple[str, ...]:
    """torchrun's options for ``processes`` processes on this machine."""
    return ("--standalone", f"--nproc-per-node={processes}")


def command(*args: str, torchrun: tuple[str, ...] | None = None) -> list[str]:
    """``python -m patchlab ARGS``, or the same under ``torchrun`` with its options (e.g. :func:`standalone`)."""
    if torchrun is None:
        return [sys.executable, "-m", "patchlab", *args]
    return [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "patchlab", *args]


def run(*args: str, torchrun=None, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``patchlab ARGS`` (see :func:`command`) to its end from the repository root; with ``check`` a
    failure raises with what it printed."""
    proc = subprocess.run(command(*args, torchrun=torchrun), capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


def start(*args: str, torchrun=None, **kwargs) -> subprocess.Popen:
    """Start ``patchlab ARGS`` (see :func:`command`) in the background, its output piped."""
    return subprocess.Popen(command(*args, torchrun=torchrun), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), cwd=ROOT, **kwargs)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
