"""Training in several processes, launched by anything that speaks torch.distributed's env://
protocol: ``fakescope train --procs N`` (which spawns N local processes itself) or torchrun,
on one machine or many. ``Ranks`` is the only code that touches torch.distributed; with one
process it is a no-op, so the single-process path has no distributed code at all.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
``--procs`` sets the same variables for its children, so both go through ``Ranks.join``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import torch

from ..errors import FakescopeError
from ..messages import show_messages
from ..model.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # index among the processes on this machine
    local_world: int = 1  # processes on this machine

    @classmethod
    def from_env(cls) -> Ranks:
        """The launcher's view (torchrun or ``--procs``); one process when none is set."""
        env = os.environ
        world = int(env.get("WORLD_SIZE", 1))
        if world <= 1:
            return cls()
        return cls(
            int(env["RANK"]),
            world,
            int(env.get("LOCAL_RANK", env["RANK"])),
            int(env.get("LOCAL_WORLD_SIZE", world)),
        )

    @property
    def lead(self) -> bool:
        """The process that prints, logs and writes the run folder."""
        return self.rank == 0

    def join(self, runtime: Runtime) -> Runtime:
        """Join the process group (env:// rendezvous) and take this process's part of the
        machine: a GPU of its own (by LOCAL_RANK) where there are enough, else a share of the
        device; on a CPU the cores of this machine divided among the processes on it."""
        if self.world == 1:
            return runtime
        own_gpu = runtime.device.type == "cuda" and torch.cuda.device_count() >= self.local_world
        if runtime.device.type == "cpu":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            torch.set_num_threads(max(1, (cores or os.cpu_count() or 1) // self.local_world))
        elif own_gpu:
            runtime = replace(runtime, device=torch.device("cuda", self.local_rank))
            torch.cuda.set_device(runtime.device)
        torch.distributed.init_process_group(
            "nccl" if own_gpu else "gloo",
            init_method="env://",
            rank=self.rank,
            world_size=self.world,
        )
        return runtime

    def leave(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def share_state(self, state: dict) -> dict:
        """The lead's tensors, sent to every process (the best weights, without a shared disk:
        DDP keeps parameters equal, but each process's BatchNorm statistics saw its own
        images)."""
        if self.world == 1:
            return state
        box = [state if self.lead else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model, runtime: Runtime):
        """What the training loop calls forward on: the model, or its DDP wrapper (made after
        each step's freezing, since DDP registers the parameters that train at construction)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index or 0] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def spawn(fn, nprocs: int, args: tuple) -> None:
    """Run ``fn(*args)`` in ``nprocs`` local processes that rendezvous through env://, as
    torchrun's would. A FakescopeError in any of them reaches the caller as the same error."""
    import socket

    import torch.multiprocessing as mp

    addr = os.environ.get("MASTER_ADDR", "localhost")
    with socket.socket() as s:
        s.bind((addr, 0))
        port = s.getsockname()[1]
    errors = mp.get_context("spawn").SimpleQueue()
    # spawned processes start without the caller's logging set-up: pass on whether it shows
    # fakescope's messages
    shown = logging.getLogger("fakescope").isEnabledFor(logging.INFO)
    child_args = (nprocs, addr, port, errors, shown, fn, args)
    try:
        mp.spawn(_child, args=child_args, nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as e:
        if not errors.empty():
            raise FakescopeError(errors.get()) from None
        last = str(e).strip().splitlines()[-1]
        raise FakescopeError(f"a training process failed: {last}") from None
    except mp.ProcessExitedException as e:  # killed (OOM killer, SIGKILL) or exited
        raise FakescopeError(
            f"training process {e.error_index} ended: {e}; `fakescope train --resume` with "
            "the same options continues from the last saved state"
        ) from None


def _child(index, nprocs, addr, port, errors, shown, fn, args) -> None:
    if shown:
        show_messages()
    os.environ.update(
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
        RANK=str(index),
        WORLD_SIZE=str(nprocs),
        LOCAL_RANK=str(index),
        LOCAL_WORLD_SIZE=str(nprocs),
    )
    try:
        fn(*args)
    except FakescopeError as e:
        errors.put(str(e))
        raise
