"""Several processes training one model, on PyTorch's own engine (torch.distributed).

torchrun (or `gptkit run --nproc N`, which starts torchrun's elastic launcher) starts one process
per device and tells each its place in environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). `Processes.from_env` reads them, `start` joins the process group (gloo
on CPU, NCCL on CUDA, with a timeout so that a rank that died does not hang the others forever),
and `wrap` puts the model under the strategy: `ddp` (DistributedDataParallel: a full replica per
process, gradients all-reduced) or `fsdp` (FSDP2 `fully_shard`: parameters, gradients and optimizer
state sharded per transformer block). The helpers below are the only collectives the engine uses:
sums, agreement on a stop (the largest signal number), and gathering full weights and optimizer state for a checkpoint.
"""

from __future__ import annotations

import datetime
import functools
import os
import sys
from typing import Any

import attrs
import torch
import torch.distributed as dist

from gptkit.errors import GptkitError

# The launcher, FSDP and the state-dict helpers are imported where they are used: together they take
# about a second to import, which every command that loads a model would pay otherwise.

TIMEOUT = datetime.timedelta(minutes=10)  # a collective waiting longer means a rank died or hangs


@attrs.frozen
class Processes:
    """This process's place in the run: `rank` of `world_size`, `local_rank` on its node;
    `launched` when a launcher (torchrun) started it as part of a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def from_env(cls) -> "Processes":
        """Read torchrun's variables; one plain process (0 of 1) when they are absent."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), launched=True)
        except ValueError as exc:
            raise GptkitError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {exc}") from None


def check_batch(batch_size: int, grad_accum: int, world_size: int) -> None:
    """train.batch_size is the global batch: several processes need it to split evenly."""
    if world_size > 1 and batch_size % (world_size * grad_accum):
        raise GptkitError(
            f"train.batch_size = {batch_size} is the global batch: it must split evenly over "
            f"{world_size} processes x train.grad_accum = {grad_accum}"
        )


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m gptkit ARGS` in `nproc` processes on this machine with torchrun's own elastic
    launcher (as `torchrun --standalone --nproc-per-node N -m gptkit ARGS`); returns the exit status:
    0, or the first failed rank's (a rank killed by a signal: 128 + its number)."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    parsed = torchrun.get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "gptkit", *args])
    try:
        torchrun.run(parsed)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        print(f"gptkit run --nproc {nproc}: rank {rank} exited with status {code}", file=sys.stderr)
        return code
    except SignalException as exc:  # Ctrl-C or SIGTERM to the launcher: it passed the signal on to every rank
        return 128 + int(exc.sigval)
    return 0


def resolve_strategy(strategy: str, processes: Processes) -> str:
    """`train.strategy` for this world: auto is single for one process, ddp for several."""
    n = processes.world_size
    if strategy == "auto":
        return "ddp" if n > 1 else "single"
    if strategy == "single" and n > 1:
        raise GptkitError(f"train.strategy = \"single\" trains in one process, but {n} were launched; use auto, ddp or fsdp")
    if strategy in ("ddp", "fsdp") and not processes.launched:
        raise GptkitError(f"train.strategy = \"{strategy}\" needs processes started by torchrun: gptkit run --nproc N ..., or torchrun ... -m gptkit run ...")
    if strategy == "fsdp" and not has_fsdp2():
        raise GptkitError(f"train.strategy = \"fsdp\" needs torch.distributed.fsdp.fully_shard (torch >= 2.6); this is torch {torch.__version__}")
    return strategy


def has_fsdp2() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:  # pragma: no cover - torch < 2.6
        return False
    return True


def device_for(name: str, processes: Processes, resolved: torch.device) -> torch.device:
    """The device of this process: with several processes on CUDA, the GPU of its local rank."""
    if not processes.launched or resolved.type != "cuda":
        return resolved
    if processes.local_rank >= torch.cuda.device_count():
        raise GptkitError(f"run.device: local rank {processes.local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); start at most that many processes per node")
    if name not in ("auto", "cuda"):
        raise GptkitError(f"run.device = {name!r}: with several processes each takes the GPU of its local rank; set run.device = \"cuda\" or \"auto\"")
    torch.cuda.set_device(processes.local_rank)
    return torch.device("cuda", processes.local_rank)


def start(processes: Processes, device: torch.device) -> None:
    """Join the process group of a launched run (gloo on CPU, NCCL on CUDA); nothing for one plain process."""
    if processes.launched and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if backend == "nccl" else {}))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over every process (the values themselves with one), in float64."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every process's `value` (a signal number, 0 for none), on every process."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, by rank (on every process)."""
    if not active():
        return [obj]
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, obj)
    return found


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj`, on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- the model under a strategy -------------------------------------------------------------------


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass instead of keeping them
    (train.activation_checkpointing): memory for activations drops to about one block's, for about
    a third more compute. Parameter names stay as they are."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def wrap(model: torch.nn.Module, strategy: str, device: torch.device, precision_dtype: torch.dtype | None, cpu_offload: bool) -> torch.nn.Module:
    """The module that computes the training loss under `strategy`. ddp returns a wrapper around
    `model`; fsdp shards `model` in place (per block, then the rest) and returns it."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        policy = {"mp_policy": MixedPrecisionPolicy(param_dtype=precision_dtype, reduce_dtype=torch.float32)} if precision_dtype else {}
        if cpu_offload:
            policy["offload_policy"] = CPUOffloadPolicy()
        for block in model.blocks:
            fully_shard(block, **policy)
        fully_shard(model, **policy)
    return model


def resharded(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its parameters back to their shards: FSDP leaves the root's gathered after a
    forward with no backward (evaluation, sampling), where the optimizer does not know them."""
    if hasattr(model, "reshard"):
        model.reshard()
    return model


def state_dict_api():
    """torch.distributed.checkpoint.state_dict: full state dicts of models and optimizers under any strategy."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def full_options(**extra: Any):
    return state_dict_api().StateDictOptions(full_state_dict=True, **extra)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of a sharded model, on CPU, on rank 0 (empty elsewhere); every rank takes part."""
    return state_dict_api().get_model_state_dict(resharded(model), options=full_options(cpu_offload=True))


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put full weights (as a model folder holds them) into a sharded model, each rank its shard."""
    state_dict_api().set_model_state_dict(model, state, options=full_options(strict=False))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter names, whole, on CPU: the same for every strategy
    and world size, so a checkpoint of N processes resumes on M. Every rank takes part."""
    return state_dict_api().get_optimizer_state_dict(resharded(model), optimizer, options=full_options(cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    state_dict_api().set_optimizer_state_dict(resharded(model), optimizer, state, options=full_options())
