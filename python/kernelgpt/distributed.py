"""Data parallelism: N processes train one model, each on its share of every batch.

    mpiexec -n 2 kernelgpt train --data shakespeare --out runs/dp    # one machine, two ranks
    kernelgpt train --nproc 2 ...                                    # the same, mpiexec started for you
    mpiexec -n 4 -f hosts kernelgpt train ...                        # several machines (MPICH)

Every rank holds the whole model. Each step, every rank draws the same global batch of
N x batch_size windows from the one shared generator and computes the loss and gradients of its
own slice (rank r: rows r*B .. r*B+B-1); the ranks then sum their gradients (each scaled by 1/N
already, so the sum is the mean) with an all-reduce, and every rank takes the same AdamW step.
N ranks with batch B are therefore the same computation as one process with batch N*B, up to
the order of the floating-point sums.

The all-reduce runs on the engines clusters already have, never on anything home-made: MPI
through mpi4py for CPU processes (`pip install "kernelgpt[mpi]"` brings mpi4py and MPICH as
wheels), NCCL through CuPy for GPUs (one GPU per rank). Gradients travel in buckets of the flat
gradient buffer (GradReducer): a bucket is launched, non-blocking, as soon as the backward pass
has finished every parameter in it, while the layers below are still being differentiated,
the way PyTorch's DistributedDataParallel overlaps communication with computation.

ZeRO stage 1 (`--zero1`): each rank keeps AdamW's two moments only for its 1/N of the
parameters, updates that shard, and the updated shards are all-gathered, so the optimizer state
per rank shrinks N-fold (the log reports it). The result is the same step.

A communicator here is a small object with the collectives the loop needs. `Communicator` is
one process (every collective is the identity); MPIComm and NcclComm do the real thing.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["Communicator", "MPIComm", "NcclComm", "GradReducer", "DistributedSetupError",
           "one_fails_all_stop", "launched_by_mpi", "communicator_for", "shard_bounds", "find_mpiexec"]

# Environment variables the common MPI launchers give each process they start.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCHER_VARS = _LAUNCHER_SIZE_VARS + ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")

MPI_INSTALL_HINT = 'pip install "kernelgpt[mpi]" (mpi4py and the MPICH wheel)'


class DistributedSetupError(ValueError):
    """The ranks were started with different settings (model, data, vocabulary, options).
    Every rank raises the same one; `quiet` is True except on rank 0, so that a command line
    prints it once."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpiexec / mpirun / srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _launcher_size() -> int:
    for v in _LAUNCHER_SIZE_VARS:
        try:
            return int(os.environ[v])
        except (KeyError, ValueError):
            continue
    return 1


def find_mpiexec() -> str:
    """The mpiexec beside this Python (a virtual environment's, from the mpich wheel) or on
    PATH; FileNotFoundError naming the fix otherwise."""
    import shutil
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise FileNotFoundError(f"--nproc needs mpiexec, and none was found: {MPI_INSTALL_HINT}")
    return found


def shard_bounds(n: int, parts: int) -> List[int]:
    """parts + 1 offsets cutting range(n) into parts near-equal contiguous shards (the first
    n % parts shards one longer): rank r owns [bounds[r], bounds[r + 1])."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for r in range(parts):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


# ---- communicators ----------------------------------------------------------------------------

class Communicator:
    """One process: every collective is the identity. The interface the training loop uses;
    arrays are float32 and contiguous (numpy on the CPU; device arrays for NcclComm)."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1       # ranks on this machine (to share its cores)
    description = "one process"

    def start_allreduce(self, buf):
        """Starts summing `buf` in place across the ranks; returns a request for wait()."""
        return None

    def test(self, requests: Sequence) -> None:
        """Lets the started collectives progress (MPI moves non-blocking ones inside its calls)."""

    def wait(self, requests: Sequence) -> None:
        """Returns once every request has completed."""

    def sum_scalars(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def allgather_object(self, obj) -> list:
        return [obj]

    def bcast_object(self, obj, root: int = 0):
        return obj

    def bcast_array(self, arr, root: int = 0):
        """arr (same shape and dtype on every rank) made equal to root's, in place."""
        return arr

    def allgather_shards(self, buf, bounds: Sequence[int]) -> None:
        """buf[bounds[r]:bounds[r + 1]] of each rank r copied into every rank's buf, in place."""

    def gather_shards(self, shard, bounds: Sequence[int], root: int = 0):
        """The full array on `root` (None elsewhere) from each rank's shard."""
        return shard

    def scatter_shards(self, full, bounds: Sequence[int], root: int = 0):
        """This rank's shard of root's `full` array (full is ignored on other ranks)."""
        return full[bounds[self.rank]: bounds[self.rank + 1]].copy()

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        os._exit(code)


class MPIComm(Communicator):
    """The collectives on MPI (mpi4py), for numpy arrays: CPU processes on one or many machines."""

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise RuntimeError(f"this process was started by an MPI launcher, but mpi4py cannot be "
                               f"imported ({err}): {MPI_INSTALL_HINT}") from None
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        library = MPI.Get_library_version().strip().splitlines()[0].strip()
        self.description = f"{self.size} MPI ranks ({library})"

    def start_allreduce(self, buf):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def test(self, requests):
        if requests:
            self.MPI.Request.Testall(list(requests))

    def wait(self, requests):
        if requests:
            self.MPI.Request.Waitall(list(requests))

    def sum_scalars(self, values):
        arr = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return [float(v) for v in arr]

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def bcast_array(self, arr, root=0):
        self.comm.Bcast(arr, root=root)
        return arr

    def _counts(self, bounds):
        counts = [bounds[r + 1] - bounds[r] for r in range(self.size)]
        return counts, list(bounds[:-1])

    def allgather_shards(self, buf, bounds):
        counts, displs = self._counts(bounds)
        self.comm.Allgatherv(self.MPI.IN_PLACE, [buf, counts, displs, self.MPI.FLOAT])

    def gather_shards(self, shard, bounds, root=0):
        counts, displs = self._counts(bounds)
        full = np.empty(bounds[-1], np.float32) if self.rank == root else None
        self.comm.Gatherv(np.ascontiguousarray(shard, np.float32),
                          [full, counts, displs, self.MPI.FLOAT] if full is not None else None,
                          root=root)
        return full

    def scatter_shards(self, full, bounds, root=0):
        counts, displs = self._counts(bounds)
        shard = np.empty(counts[self.rank], np.float32)
        send = [np.ascontiguousarray(full, np.float32), counts, displs, self.MPI.FLOAT] \
            if self.rank == root else None
        self.comm.Scatterv(send, shard, root=root)
        return shard

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


class NcclComm(Communicator):
    """Gradients and parameters all-reduced / broadcast by NCCL (CuPy's cupy.cuda.nccl) on the
    current CUDA stream, one GPU per rank; the host-side collectives (scalars, objects, the
    start-up checks) go through `host` (MPIComm under mpiexec, else one process).

    NCCL calls are stream-ordered: start_allreduce enqueues the sum behind the backward kernels
    already queued and returns; the optimizer's kernels, queued after it on the same stream,
    see the result, so wait() has nothing to do."""

    def __init__(self, host: Optional[Communicator] = None):
        import cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        self.host = host or Communicator()
        self.rank, self.size = self.host.rank, self.host.size
        self.local_rank, self.local_size = self.host.local_rank, self.host.local_size
        n_gpu = cupy.cuda.runtime.getDeviceCount()
        if self.local_size > n_gpu:
            raise RuntimeError(f"{self.local_size} ranks on this machine but {n_gpu} GPU(s): "
                               "NCCL training uses one GPU per rank")
        cupy.cuda.Device(self.local_rank).use()
        uid = self.host.bcast_object(nccl.get_unique_id() if self.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.description = f"{self.size} rank(s) on NCCL {nccl.get_version()}, one GPU each"

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def start_allreduce(self, buf):
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self.nccl.NCCL_FLOAT32,
                            self.nccl.NCCL_SUM, self._stream())
        return None

    def allgather_shards(self, buf, bounds):
        for r in range(self.size):  # each rank broadcasts its shard into everyone's buffer
            part = buf[bounds[r]: bounds[r + 1]]
            if part.size:
                self.comm.broadcast(part.data.ptr, part.data.ptr, part.size,
                                    self.nccl.NCCL_FLOAT32, r, self._stream())

    def bcast_array(self, arr, root=0):
        if getattr(arr, "data", None) is not None and hasattr(arr.data, "ptr"):
            self.comm.broadcast(arr.data.ptr, arr.data.ptr, arr.size, self.nccl.NCCL_FLOAT32,
                                root, self._stream())
            return arr
        return self.host.bcast_array(arr, root)

    def gather_shards(self, shard, bounds, root=0):
        return self.host.gather_shards(self.cupy.asnumpy(shard), bounds, root)

    def scatter_shards(self, full, bounds, root=0):
        return self.cupy.asarray(self.host.scatter_shards(full, bounds, root))

    def sum_scalars(self, values):
        return self.host.sum_scalars(values)

    def allgather_object(self, obj):
        return self.host.allgather_object(obj)

    def bcast_object(self, obj, root=0):
        return self.host.bcast_object(obj, root)

    def barrier(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.host.barrier()

    def abort(self, code=1):
        self.host.abort(code)


def communicator_for(device: str = "cpu") -> Communicator:
    """The communicator of this process: MPIComm under an MPI launcher with more than one rank
    (NcclComm on top of it for device "cuda"), else one process. A plain run never imports
    mpi4py."""
    host = MPIComm() if launched_by_mpi() and _launcher_size() > 1 else Communicator()
    if device == "cuda" and host.size > 1:
        return NcclComm(host)
    if device == "emu" and host.size > 1:
        raise ValueError("the CUDA emulator (--device emu) runs one rank; use --device cpu or "
                         "cuda for several")
    return host


@contextlib.contextmanager
def one_fails_all_stop(comm: Communicator, what: str = "kernelgpt train"):
    """Around work that every rank does in step: an exception on one rank (not a
    DistributedSetupError, which every rank raises alike) is printed with that rank's number
    and aborts the whole job (MPI_Abort), so the other ranks never wait forever in a
    collective."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except DistributedSetupError:
        raise
    except BaseException as err:
        try:
            sys.stderr.write(f"{what}: rank {comm.rank} of {comm.size} failed: "
                             f"{type(err).__name__}: {err}; stopping every rank\n")
            sys.stderr.flush()
        finally:
            comm.abort(1)
            os._exit(1)  # (MPI_Abort returns on some launchers before the kill arrives)


# ---- gradient buckets ---------------------------------------------------------------------------

class GradReducer:
    """All-reduces a flat gradient buffer in buckets, each launched as soon as the backward pass
    has finished every gradient in it.

    stages[name] is the backward stage after which parameter `name`'s gradient is final
    (GPT.grad_stages: 0 for the head, then one per layer from the top, last the embeddings).
    Buckets are runs of parameters adjacent in the buffer with the same stage, cut at
    `bucket_elems` floats. Every rank launches them in the same order (collectives must match)."""

    def __init__(self, comm: Communicator, grads, stages: Dict[str, int],
                 bucket_elems: int = 1 << 20):
        if bucket_elems < 1:
            raise ValueError(f"bucket_elems must be >= 1, got {bucket_elems}")
        self.comm, self.grads = comm, grads
        buckets = []  # (stage, lo, hi)
        for name in grads.names():
            lo, shape = grads.offsets[name]
            hi = lo + int(np.prod(shape))
            stage = stages[name]
            if buckets and buckets[-1][0] == stage and buckets[-1][2] == lo \
                    and buckets[-1][2] - buckets[-1][1] < bucket_elems:
                buckets[-1][2] = hi
            else:
                buckets.append([stage, lo, hi])
        self.buckets = []
        for stage, lo, hi in buckets:  # cut long runs
            for a in range(lo, hi, bucket_elems):
                self.buckets.append((stage, a, min(hi, a + bucket_elems)))
        # launch order: by stage, then by position (the same on every rank)
        self.buckets.sort(key=lambda b: (b[0], b[1]))
        self._next = 0
        self._pending: list = []
        self.wait_seconds = 0.0  # time finish() spent waiting, summed over steps

    def begin(self) -> None:
        """Call before the backward pass of the step's last micro-batch."""
        self._next = 0
        self._pending = []

    def on_stage(self, stage: int) -> None:
        """The backward pass finished `stage`: launch every bucket now complete."""
        data = self.grads.data
        while self._next < len(self.buckets) and self.buckets[self._next][0] <= stage:
            _, lo, hi = self.buckets[self._next]
            self._pending.append(self.comm.start_allreduce(data[lo:hi]))
            self._next += 1
        self.comm.test([r for r in self._pending if r is not None])

    def finish(self) -> float:
        """Launches what is left, waits for every bucket; returns the seconds spent waiting."""
        self.on_stage(1 << 30)
        t0 = time.perf_counter()
        self.comm.wait([r for r in self._pending if r is not None])
        self._pending = []
        waited = time.perf_counter() - t0
        self.wait_seconds += waited
        return waited
