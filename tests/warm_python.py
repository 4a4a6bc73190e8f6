"""``python -m module …`` and ``python script.py …`` for the tests, forked from a warm interpreter.

A bundle command spends ~6 s importing torch, MONAI, Ignite and this package before a test's 3-step training, and
the suite runs ~60 of them (the experiment drivers' among them). :func:`run` is ``subprocess.run`` for such a command
line, but the process is forked from a server that imported those modules once (``multiprocessing``'s
``forkserver``, which forks before any thread or tensor exists). Each command still gets a process of its own, with
its own environment, ``sys.argv``, exit status and output; inside it ``subprocess.run`` is :func:`run` too, so a
driver's own bundle commands are forked warm as well. Any other command (``git``; ``torchrun``,
:data:`COLD_MODULES`) goes to ``subprocess.run`` unchanged. Linux only (the child reopens its caller's standard
streams through ``/proc``).

Written by hand: ``multiprocessing`` forks the process, but nothing runs a command line in it.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import warnings

PRELOAD = ["torch", "monai.bundle", "ignite.engine", "pipeline.engine", "pipeline.losses", "pipeline.data",
           "pipeline.handlers", "pipeline.qc", "pipeline.reports", "pandas", "matplotlib.pyplot"]  # fmt: skip
"""What the server imports once: what the tests' bundle commands and experiment drivers import."""

COLD_MODULES = ("torch.distributed.run",)
"""``python -m`` modules run as they are: ``torchrun`` forked from the server aborted once in 5 suites ("terminate
called without an active exception" in a gloo worker), and its workers are fresh processes anyway."""

_SUBPROCESS_RUN = subprocess.run
_context = None


def _forkserver() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _stream_path(stream, fd: int, folder: str, name: str, capture: bool) -> tuple[str, bool]:
    """Where the child's ``fd`` (1 or 2) writes and whether it appends: a file in ``folder`` when captured, the file of
    a file object, or the caller's own stream (``/proc/<pid>/fd/<fd>``) when ``stream`` is None."""
    if capture or stream == subprocess.PIPE:
        path = os.path.join(folder, name)
        open(path, "w").close()
        return path, False
    if stream is None:
        return f"/proc/{os.getpid()}/fd/{fd}", True
    stream.flush()
    return stream.name, True


def _main(command: list[str], env: dict, streams: list[tuple[str, bool]]) -> None:
    """The child: the environment, standard output and error, thread count and ``sys.argv`` of ``command``, then its
    module (``-m``) or script run as ``__main__`` (its ``SystemExit`` becomes the exit status)."""
    import torch

    os.environ.clear()
    os.environ.update(env)
    for fd, (path, append) in zip((1, 2), streams):
        target = os.open(path, os.O_WRONLY | (os.O_APPEND if append else 0))
        os.dup2(target, fd)  # also what the command's own subprocesses write
        os.close(target)
    if env.get("PYTHONWARNINGS") == "ignore":
        warnings.simplefilter("ignore")
    if "OMP_NUM_THREADS" in env:  # torch read it when the server imported it: set it here
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    subprocess.run = run
    global _context
    _context = None  # a child's own commands go to a server of its own
    if command[1] == "-m":
        sys.argv = [command[2], *command[3:]]
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command[1:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(command[1])))
        runpy.run_path(command[1], run_name="__main__")


def run(command, *, capture_output=False, text=False, stdout=None, stderr=None, env=None, timeout=None, check=False,
        **kwargs) -> subprocess.CompletedProcess:  # fmt: skip
    """``subprocess.run``, forked from the warm server when ``command`` is ``[sys.executable, "-m", module, …]`` or
    ``[sys.executable, script.py, …]`` (no other keyword than these). Returns the ``CompletedProcess``
    (``returncode``: the exit status, negative for a signal).

    Raises:
        subprocess.TimeoutExpired: the command ran past ``timeout`` seconds (it is killed).
        subprocess.CalledProcessError: ``check`` and a non-zero exit status.
    """
    command = [str(part) for part in command] if isinstance(command, (list, tuple)) else command
    warm = isinstance(command, list) and len(command) > 1 and command[0] == sys.executable and not kwargs
    if (
        not warm
        or (command[1].startswith("-") and command[1] != "-m")
        or command[1:3] in (["-m", m] for m in COLD_MODULES)
    ):
        return _SUBPROCESS_RUN(command, capture_output=capture_output, text=text, stdout=stdout, stderr=stderr,
                               env=env, timeout=timeout, check=check, **kwargs)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="warm-python-") as folder:
        out = _stream_path(stdout, 1, folder, "stdout", capture_output)
        err = out if stderr == subprocess.STDOUT else _stream_path(stderr, 2, folder, "stderr", capture_output)
        child = _forkserver().Process(target=_main, args=(command, dict(env or os.environ), [out, err]))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        captured = [_read(path, text) if path.startswith(folder) else None for path, _ in (out, err)]
    if err == out and captured[0] is not None:
        captured[1] = None
    result = subprocess.CompletedProcess(command, child.exitcode, *captured)
    if check:
        result.check_returncode()
    return result


def _read(path: str, text: bool) -> str | bytes:
    with open(path, "r" if text else "rb") as file:
        return file.read()
