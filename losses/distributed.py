"""The one place where a local statistic becomes a global one.

Everything here is a no-op without an initialised process group (or with a group of
one), so the loss math in ``losses.similarity`` never needs to know whether it runs
distributed. The autograd-aware gather uses ``torch.distributed._functional_collectives``,
a private API that moves between torch releases: it is called only here, behind the
pinned torch, and ``tests/test_distributed_helpers.py`` checks its gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fcol
import torch.nn.functional as F

ProcessGroup = dist.ProcessGroup


def world_size(group: ProcessGroup | None) -> int:
    """Number of ranks in ``group`` (the default group when None); 1 without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _default(group: ProcessGroup | None) -> ProcessGroup:
    return group if group is not None else dist.group.WORLD


def gather_rows(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order; ranks may differ in rows.

    Differentiable: the gradient of every gathered row is summed over ranks and handed
    back to the rank that owns the row (the backward of an all-gather is a reduce-scatter
    sum). Summing, not averaging, is what makes DDP's later average come out exact.
    Needs every rank of ``group`` to call it, even one with zero rows.
    """
    ws = world_size(group)
    if ws == 1:
        return x
    group = _default(group)
    # gloo's all-gather needs equal sizes: share the row counts, pad to the largest,
    # gather, then keep the real rows.
    counts = fcol.all_gather_tensor(
        torch.tensor([x.shape[0]], device=x.device), gather_dim=0, group=group
    ).tolist()
    padded = F.pad(x, (0,) * (2 * (x.dim() - 1)) + (0, max(counts) - x.shape[0]))
    gathered = fcol.all_gather_tensor_autograd(padded, gather_dim=0, group=group)
    gathered = fcol.wait_tensor(gathered)
    keep = torch.cat(
        [torch.arange(n, device=x.device) + r * max(counts) for r, n in enumerate(counts)]
    )
    return gathered.index_select(0, keep)


def all_reduce_sum(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Sum of ``x`` over the ranks of ``group``, detached (used for values, never gradients)."""
    x = x.detach()
    if world_size(group) == 1:
        return x
    return fcol.all_reduce(x, "sum", _default(group))
