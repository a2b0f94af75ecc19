"""Communicators for data-parallel training: one process, MPI between processes, NCCL between GPUs.

``fit(..., distributed=comm)`` splits every batch between the ranks of ``comm``: each
rank computes the gradient of its rows, and one allreduce of the flat gradient buffer
(plus one of a three-number buffer: the loss sum, the rows or sample weight, the correct
answers) gives every rank the gradient of the whole batch, so every rank applies the
same update. The transport is MPI's (mpi4py, started by ``mpiexec`` or ``srun``) or
NCCL's (CuPy's bindings) — gpubp writes none of its own.

* :class:`Communicator` — one process: every collective is the identity. :func:`init`
  returns it when the process was not started by an MPI launcher; it needs neither
  mpi4py nor an MPI library.
* :class:`MPICommunicator` — host (NumPy) arrays through ``MPI_Allreduce``; CuPy
  arrays directly when the MPI library is CUDA-aware, else through a pinned host
  buffer (a device→host copy, the allreduce, a host→device copy).
* :class:`NCCLCommunicator` — CuPy arrays through NCCL (the unique id broadcast over
  the host communicator), host arrays and Python objects through the host communicator.

A rank that fails in the middle of training calls :meth:`Communicator.abort` (NCCL's
``ncclCommAbort`` and ``MPI_Abort``), which ends every rank: none waits forever in a
collective.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable, NoReturn, TypeVar

import numpy as np

from .backends import cupy_status
from .errors import GpubpTypeError, GpubpValueError, OptionalDependencyError

LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                           "SLURM_STEP_NUM_TASKS")
"""Environment variables by which MPI launchers (Open MPI, MPICH/Intel MPI's hydra, PMIx, MVAPICH,
Slurm's srun) tell a process how many ranks were started."""

T = TypeVar("T")
ABORT_GRACE_S = 0.5
"""How long a failing rank waits, its messages flushed, before ``MPI_Abort`` ends every rank."""
BACKENDS = ("auto", "mpi", "nccl")
INSTALL_HINT = 'pip install "gpubp[mpi]" (mpi4py and MPICH from PyPI), or mpi4py built against your system MPI'


def launched_size(environ: Any = None) -> int:
    """How many ranks a launcher started this process among (1 when there is no launcher)."""
    variables = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = variables.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


class Communicator:
    """One process: rank 0 of 1. Every collective leaves its argument as it is."""

    kind = "single"

    def __init__(self) -> None:
        self.rank, self.size, self.local_rank = 0, 1, 0
        self.local_size = 1
        """Ranks on this machine."""
        self.overlap = False
        """Whether ``fit`` sends each layer's gradient during the backward pass (:meth:`start_allreduce`)
        rather than the whole buffer after it."""
        self.exchange_agreed = False
        """Whether ``train_step`` has checked that every rank exchanges gradients the same way."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    def allreduce(self, array: Any) -> None:
        """``array`` ← the sum of every rank's ``array``, in place (a NumPy or CuPy array)."""

    def broadcast(self, array: Any, root: int = 0) -> None:
        """``array`` ← root's ``array``, in place."""

    def start_allreduce(self, array: Any, bucket: int = 0) -> Pending:
        """:meth:`allreduce` started without waiting for it; ``array`` holds the sum after ``.wait()``
        (and must not be read or written before). ``bucket`` tells apart the allreduces in flight together
        (a layer's number). Here: done at once."""
        self.allreduce(array)
        return Pending()

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
        return [value]

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """Root's ``value`` on every rank."""
        return value

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def abort(self, code: int = 1) -> NoReturn:
        """End every rank of the job now, with exit code ``code``."""
        sys.stderr.flush()
        os._exit(code)


class Pending:
    """An allreduce in flight; :meth:`wait` returns when its result is in place."""

    def __init__(self, wait: Callable[[], None] | None = None) -> None:
        self._wait = wait

    def wait(self) -> None:
        if self._wait is not None:
            self._wait()
            self._wait = None


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (``MPI.COMM_WORLD`` from :func:`init`)."""

    kind = "mpi"

    def __init__(self, comm: Any, mpi: Any) -> None:
        super().__init__()
        self.comm, self.mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.cuda_aware = _cuda_aware(mpi)
        self._pinned: dict[tuple[int, str, int], Any] = {}

    def allreduce(self, array: Any) -> None:
        self._through_host_if_needed(array, lambda buffer: self.comm.Allreduce(self.mpi.IN_PLACE, buffer,
                                                                               op=self.mpi.SUM))

    def _through_host_if_needed(self, array: Any, collective: Callable[[Any], None]) -> None:
        """``collective(buffer)`` on ``array`` itself (NumPy, or CuPy with a CUDA-aware MPI, after the stream
        has finished writing it) or on a pinned host copy that is then copied back."""
        if isinstance(array, np.ndarray):
            collective(array)
        elif self.cuda_aware:
            _current_stream(array).synchronize()  # the MPI library reads the device memory outside the stream
            collective(array)
        else:
            host = self._host(array)
            array.get(out=host)
            collective(host)
            array.set(host)

    def start_allreduce(self, array: Any, bucket: int = 0) -> Pending:
        """``MPI_Iallreduce``. MPI makes progress on it inside MPI calls, unless the library runs a progress
        thread (MPICH: ``MPIR_CVAR_ASYNC_PROGRESS=1``) or the network offloads it."""
        if isinstance(array, np.ndarray) or self.cuda_aware:
            if not isinstance(array, np.ndarray):
                _current_stream(array).synchronize()
            request = self.comm.Iallreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)
            return Pending(request.Wait)
        host = self._host(array, tag=1 + bucket)  # a pinned buffer per bucket: several are in flight
        array.get(out=host)
        request = self.comm.Iallreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)

        def finish() -> None:
            request.Wait()
            array.set(host)

        return Pending(finish)

    def broadcast(self, array: Any, root: int = 0) -> None:
        self._through_host_if_needed(array, lambda buffer: self.comm.Bcast(buffer, root=root))

    def _host(self, array: Any, tag: int = 0) -> np.ndarray:
        """A pinned host buffer shaped like ``array`` (kept per size, dtype and ``tag``), for the staged
        copies."""
        key = (array.size, array.dtype.str, tag)
        buffer = self._pinned.get(key)
        if buffer is None:
            cupy = sys.modules["cupy"]
            memory = cupy.cuda.alloc_pinned_memory(array.nbytes)
            buffer = self._pinned[key] = np.frombuffer(memory, array.dtype, array.size)
        return buffer.reshape(array.shape)

    def allgather(self, value: Any) -> list[Any]:
        return list(self.comm.allgather(value))

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.comm.bcast(value, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> NoReturn:
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(ABORT_GRACE_S)  # the launcher forwards this rank's last words before it ends the job
        self.comm.Abort(code)
        os._exit(code)  # Abort does not return; should an MPI library let it, end this rank anyway


class NCCLCommunicator(Communicator):
    """CuPy arrays through NCCL, everything else through ``host`` (one process, or MPI)."""

    kind = "nccl"

    def __init__(self, host: Communicator, nccl: Any) -> None:
        super().__init__()
        self.host, self.nccl_module = host, nccl
        self.rank, self.size, self.local_rank, self.local_size = host.rank, host.size, host.local_rank, host.local_size
        unique_id = host.broadcast_object(nccl.get_unique_id() if host.rank == 0 else None)
        self.nccl = nccl.NcclCommunicator(host.size, unique_id, host.rank)
        self.overlap = True
        self._stream: Any = None  # NCCL's own stream, for the allreduces that overlap the backward pass

    def _collective(self, array: Any) -> tuple[int, int, int]:
        types = {np.dtype(np.float32): self.nccl_module.NCCL_FLOAT32,
                 np.dtype(np.float64): self.nccl_module.NCCL_FLOAT64}
        if array.dtype not in types:
            raise GpubpValueError(f"NCCL collectives of gpubp take float32 or float64 arrays, got {array.dtype}")
        return array.data.ptr, array.size, types[array.dtype]

    def allreduce(self, array: Any) -> None:
        if isinstance(array, np.ndarray):
            return self.host.allreduce(array)
        pointer, count, dtype = self._collective(array)
        self.nccl.allReduce(pointer, pointer, count, dtype, self.nccl_module.NCCL_SUM, _current_stream(array).ptr)

    def start_allreduce(self, array: Any, bucket: int = 0) -> Pending:
        """The allreduce on NCCL's own stream, after the work queued so far on the current one; ``wait``
        makes the current stream wait for it (no host synchronisation)."""
        if isinstance(array, np.ndarray):
            return self.host.start_allreduce(array, bucket)
        cupy = sys.modules["cupy"]
        compute = _current_stream(array)
        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._stream.wait_event(compute.record())
        pointer, count, dtype = self._collective(array)
        self.nccl.allReduce(pointer, pointer, count, dtype, self.nccl_module.NCCL_SUM, self._stream.ptr)
        done = self._stream.record()
        return Pending(lambda: compute.wait_event(done))

    def broadcast(self, array: Any, root: int = 0) -> None:
        if isinstance(array, np.ndarray):
            return self.host.broadcast(array, root)
        pointer, count, dtype = self._collective(array)
        self.nccl.bcast(pointer, count, dtype, root, _current_stream(array).ptr)

    def allgather(self, value: Any) -> list[Any]:
        return self.host.allgather(value)

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.host.broadcast_object(value, root)

    def barrier(self) -> None:
        self.host.barrier()

    def abort(self, code: int = 1) -> NoReturn:
        try:
            self.nccl.abort()  # ncclCommAbort: other ranks' pending NCCL calls return instead of hanging
        finally:
            self.host.abort(code)


def _current_stream(array: Any) -> Any:
    return sys.modules["cupy"].cuda.get_current_stream()


def _cuda_aware(mpi: Any) -> bool:
    """Whether the MPI library can read CuPy arrays directly (MPIX_Query_cuda_support, where it is known)."""
    query = getattr(mpi, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # an MPI without the MPIX extension raises NotImplementedError
        return False


def mpi_module() -> Any:
    """``mpi4py.MPI`` (which initialises MPI), or an error naming the extra to install."""
    try:
        return importlib.import_module("mpi4py.MPI")
    except ImportError as error:
        raise OptionalDependencyError(f"distributed training needs mpi4py and an MPI library ({error}); install "
                                      f"them with: {INSTALL_HINT}") from None


def init(backend: str = "auto", overlap: bool | None = None) -> Communicator:
    """The communicator of this process's job.

    Started by ``mpiexec``/``srun`` with several ranks: an :class:`MPICommunicator` over
    ``MPI.COMM_WORLD`` — or, with ``backend="nccl"`` (or ``"auto"`` where CuPy is usable, has
    NCCL, and every rank on a machine has a GPU of its own, as NCCL requires), an
    :class:`NCCLCommunicator` on top of it. Where CuPy is usable, each rank
    first makes GPU ``local_rank % device_count`` its current device, so that networks with
    ``backend="auto"``/``"cupy"`` built afterwards live there. Started without a launcher:
    a :class:`Communicator` of size 1 (for ``"nccl"``, NCCL with one rank), without mpi4py.

    ``overlap``: send each layer's gradient as soon as the backward pass has it (DDP's buckets), so the
    allreduces run while the layers below are computed. Default: on for NCCL (its own stream
    really overlaps), off for MPI (whose non-blocking collectives progress only inside MPI calls
    unless the library has a progress thread), where it costs one allreduce per layer.
    """
    if backend not in BACKENDS:
        raise GpubpValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    host: Communicator = Communicator()
    if launched_size() > 1:
        host = MPICommunicator(mpi_module().COMM_WORLD, mpi_module())
    devices = _use_local_gpu(host.local_rank)  # before CuPy's probe, so no rank opens a context on GPU 0
    gpu, _ = cupy_status()
    nccl = _nccl_module() if gpu else None
    if backend == "nccl":
        if nccl is None:
            raise GpubpValueError("backend='nccl' needs CuPy with NCCL on a usable GPU: "
                                  + ("CuPy has no NCCL (cupy.cuda.nccl)" if gpu else "there is no usable GPU"))
        if host.local_size > devices:
            raise GpubpValueError(f"backend='nccl' needs a GPU of its own for every rank: {host.local_size} ranks "
                                  f"share {devices} GPU(s) on this machine; start fewer ranks or use backend='mpi'")
    comm: Communicator = host
    if nccl is not None and (backend == "nccl" or (backend == "auto" and 1 < host.size
                                                   and host.local_size <= devices)):
        comm = NCCLCommunicator(host, nccl)
    if overlap is not None:
        comm.overlap = bool(overlap)
    return comm


def _use_local_gpu(local_rank: int) -> int:
    """Make GPU ``local_rank % count`` this process's current device; the number of GPUs (0 without CuPy
    or a device; counting them opens no CUDA context)."""
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        cupy = importlib.import_module("cupy")
        count = int(cupy.cuda.runtime.getDeviceCount())
        if count:
            cupy.cuda.Device(local_rank % count).use()
        return count
    except Exception:  # a broken CUDA set-up: cupy_status says why
        return 0


def _nccl_module() -> Any:
    try:
        nccl = importlib.import_module("cupy.cuda.nccl")
        return nccl if getattr(nccl, "available", True) else None
    except ImportError:
        return None


def library_versions() -> dict[str, str]:
    """What ``gpubp info`` shows of the distributed stack: mpi4py, the MPI library, NCCL (where present).
    Reading the MPI library's version initialises MPI (as a one-rank job when there is no launcher)."""
    found: dict[str, str] = {}
    try:
        mpi4py = importlib.import_module("mpi4py")
        found["mpi4py"] = str(mpi4py.__version__)
        found["MPI library"] = " ".join(mpi_module().Get_library_version().split()[:3])
    except (ImportError, RuntimeError) as error:
        found.setdefault("mpi4py", f"not usable ({error})")
    if cupy_status()[0]:
        nccl = _nccl_module()
        found["NCCL"] = str(nccl.get_version()) if nccl is not None else "not in this CuPy"
    return found


# --- what fit needs of a communicator ----------------------------------------------------------------------
SHARDS = ("replicated", "local")
"""``fit(shard=…)``: every rank passes the whole training set (``"replicated"``) or its own part (``"local"``)."""


def check_communicator(distributed: Any, shard: str) -> Communicator | None:
    """``fit``'s ``distributed`` and ``shard`` arguments, checked."""
    if distributed is not None and not isinstance(distributed, Communicator):
        raise GpubpTypeError(f"distributed must be a communicator from gpubp.distributed.init(), got "
                             f"{type(distributed).__name__} {distributed!r}")
    if shard not in SHARDS:
        raise GpubpValueError(f"shard must be one of {list(SHARDS)}, got {shard!r}")
    if shard == "local" and distributed is None:
        raise GpubpValueError("shard='local' needs distributed=COMMUNICATOR (each rank passes its own rows)")
    return distributed


def overlaps(comm: Communicator, on_gpu: bool) -> bool:
    """Whether a step sends each layer's gradient during the backward pass: ``comm.overlap``, except
    for host arrays on an NCCL communicator (they go through MPI, where it gains nothing)."""
    return comm.overlap and (comm.kind != "nccl" or on_gpu)


def agree(comm: Communicator, error: BaseException | None, what: str) -> None:
    """Tell every rank whether any rank failed ``what``; if one did, every rank raises (the failing
    rank its own error, the others one that names the rank and its error) — none is left waiting."""
    failures = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(failures) if message]
    if failed:
        rank, message = failed[0]
        more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise GpubpValueError(f"rank {rank}{more} could not {what}: {message}")


def agreed(comm: Communicator, function: Callable[[], T], what: str) -> T:
    """``function()`` on every rank, then :func:`agree` on how it went: its result where every rank
    succeeded, else the failure raised on every rank."""
    result, error = None, None
    try:
        result = function()
    except Exception as failure:  # whatever it is, every rank must hear of it
        error = failure
    agree(comm, error, what)
    return result  # type: ignore[return-value]


def check_identical(comm: Communicator, settings: dict[str, Any]) -> None:
    """Raise on every rank, naming the setting and each rank's value, where the ranks' ``settings`` differ."""
    everyone = comm.allgather(_canonical(settings))
    for key in sorted({key for ranks in everyone for key in ranks}):
        values = [ranks.get(key) for ranks in everyone]
        if any(value != values[0] for value in values[1:]):
            listed = ", ".join(f"rank {rank}: {json.loads(value) if value else None!r}"
                               for rank, value in enumerate(values))
            raise GpubpValueError(f"the ranks differ in {key} ({listed}); every rank must call fit with the same "
                                  f"network, data shape and settings")


def _canonical(settings: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value, sort_keys=True, default=str) for key, value in settings.items()}


class Partition:
    """Which rows of each batch this rank trains on.

    ``replicated``: every rank holds the same ``n`` rows and draws the same permutation; batch b is
    rows ``[b·B, (b+1)·B)`` of it, and rank r takes the r-th of ``size`` near-equal contiguous parts
    of that batch. ``local``: rank r holds its own ``n_r`` rows and takes ``B_r`` of them per step
    (``B`` split between the ranks, the first ``B mod size`` ranks one more); an epoch is as many
    steps as the longest shard needs, and a rank whose shard is used up takes none. A process without
    ``comm`` (or with one of size 1) takes every row of every batch.
    """

    def __init__(self, comm: Communicator, n: int, batch_size: int, sharded: bool) -> None:
        self.rank, self.size, self.n, self.sharded = comm.rank, comm.size, n, sharded
        self.batch_size = batch_size
        if sharded:
            if batch_size < comm.size:  # decided alike on every rank, before the collective below
                raise GpubpValueError(f"batch_size={batch_size} is smaller than the {comm.size} ranks; with "
                                      f"shard='local' every rank needs at least one row per step")
            self.local_batch = batch_size // comm.size + (1 if comm.rank < batch_size % comm.size else 0)
            shards = comm.allgather((n, self.local_batch))
            self.n_global = sum(rows for rows, _ in shards)
            self.n_batches = max(-(-rows // local) for rows, local in shards)
        else:
            self.local_batch, self.n_global, self.n_batches = batch_size, n, -(-n // batch_size)

    def rows(self, batch: int) -> tuple[int, int]:
        """``[start, stop)`` in this rank's order of batch ``batch`` (empty when it has no rows in it)."""
        if self.sharded:
            start = min(batch * self.local_batch, self.n)
            return start, min(start + self.local_batch, self.n)
        start = batch * self.batch_size
        length = min(self.batch_size, self.n - start)
        return start + self.rank * length // self.size, start + (self.rank + 1) * length // self.size

    def validation_rows(self, n: int) -> tuple[int, int]:
        """The part of ``n`` validation rows this rank evaluates (all of its own, with ``local``)."""
        if self.sharded:
            return 0, n
        return self.rank * n // self.size, (self.rank + 1) * n // self.size
