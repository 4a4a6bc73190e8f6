"""A run's subjects split over the ranks of a ``torch.distributed`` process group, and its results gathered.

What the sharded bundle configs (``sharded_inference.json``, ``sharded_evaluate.json``, run with ``torchrun``) call:
every rank processes its shard of the subjects and rank 0 gathers what must be written once. Without a process group
(a plain ``python -m monai.bundle run``) a run is the world-size-1 case: the shard is every subject, gathering returns
the rank's own result, and this process is the main one.

* :func:`partition` -- subjects split into ``num_partitions`` shards (``monai.data.partition_dataset``), each subject in
  exactly one shard, some shards empty when there are fewer subjects than ranks.
* :func:`shard` -- this rank's shard.
* :func:`gather_tables` -- pandas tables of every rank concatenated, in rank order, on rank 0.
* :func:`all_gather_lists` -- lists of every rank concatenated, in rank order, on every rank.
* :func:`validate_shard` -- the pre-run validation of a study split over the ranks, every rank raising the whole table.
* :func:`is_main_process`, :func:`get_rank`, :func:`get_world_size`, :func:`barrier`.

A rank that raises does not leave the others waiting: ``torchrun`` stops every worker when one fails.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch.distributed as dist
from monai.data import partition_dataset

from pipeline.data.validation import cached_validate_entry, study_error


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (else every function here acts for one process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes of the default process group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes a sharded run's shared outputs); True without a group."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point; nothing without a process group."""
    if is_distributed():
        dist.barrier()


def partition(entries: Sequence, num_partitions: int) -> list[list]:
    """Split ``entries`` into ``num_partitions`` shards, every entry in exactly one shard, none shuffled or repeated.

    Uses ``monai.data.partition_dataset`` (``shuffle=False``; no entry padded in twice).

    Args:
        entries: the run's subjects (e.g. the entries of :func:`pipeline.data.load_datalist`).
        num_partitions: the number of shards (the world size).

    The shards are contiguous in the order of ``entries`` (sizes differ by at most one, the larger ones first), so
    concatenating the shards' results in rank order gives the order of a one-process run.

    Returns:
        ``num_partitions`` lists; with fewer entries than shards the last shards are empty.

    Raises:
        ValueError: when ``num_partitions`` is less than 1.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}.")
    entries = list(entries)
    used = min(num_partitions, len(entries))  # partition_dataset needs at least one entry per partition
    if used == 0:
        return [[] for _ in range(num_partitions)]
    # partition_dataset's ratio split, with ratios that are the shard sizes (exact: no rounding is left)
    sizes = [len(entries) // used + (index < len(entries) % used) for index in range(used)]
    shards = partition_dataset(entries, ratios=sizes, shuffle=False)
    return [list(part) for part in shards] + [[] for _ in range(num_partitions - used)]


def shard(entries: Sequence) -> list:
    """This rank's shard of ``entries`` (:func:`partition` over the world size); every entry without a process group.

    Args:
        entries: the run's subjects, the same list (same order) on every rank.

    Returns:
        The rank's entries, possibly none when there are fewer entries than ranks.
    """
    return partition(entries, get_world_size())[get_rank()]


def gather_tables(frame: pd.DataFrame, dst: int = 0) -> pd.DataFrame | None:
    """Concatenate every rank's table, in rank order, on rank ``dst`` (``torch.distributed.gather_object``).

    Every rank of the group must call it. With the contiguous shards of :func:`shard`, the result holds the rows in the
    order a one-process run computes them. Empty tables (ranks without a subject) are left out of the concatenation,
    so that they cannot change the columns' dtypes.

    Args:
        frame: this rank's table (the same columns on every rank).
        dst: the rank that receives the tables.

    Returns:
        On rank ``dst`` the concatenated table (index ``0..n-1``), on the other ranks ``None``; without a process group
        ``frame`` itself.
    """
    if not is_distributed():
        return frame
    frames: list[Any] | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(frame, frames, dst=dst)
    if frames is None:
        return None
    non_empty = [table for table in frames if len(table)]
    if not non_empty:
        return frames[0].reset_index(drop=True)
    return pd.concat(non_empty, ignore_index=True)


def all_gather_lists(items: Sequence) -> list:
    """Concatenate every rank's list, in rank order, on every rank (``torch.distributed.all_gather_object``).

    Every rank of the group must call it; without a process group it returns ``list(items)``.
    """
    if not is_distributed():
        return list(items)
    lists: list[Any] = [None] * get_world_size()
    dist.all_gather_object(lists, list(items))
    return [item for rank_items in lists for item in rank_items]


def validate_shard(
    entries: Sequence[Mapping],
    manifest: str | os.PathLike = "datalist",
    sections: Sequence[str] = ("testing",),
    **options,
) -> None:
    """The pre-run validation of a study, split over the ranks: every rank checks its shard, all raise the whole table.

    Every rank validates the entries of its :func:`shard` of ``entries``
    (:func:`pipeline.data.validation.cached_validate_entry`, ~5-10 s a subject unless cached, so that a large cohort's check is split like its
    inference), then the problems of every rank are gathered on every rank (:func:`all_gather_lists`) and, if there is
    one, every rank raises the same error listing all of them, in the order of ``entries`` -- the table of
    :func:`pipeline.data.require_valid_study`. No rank goes on to the run while another one has found a problem.

    Args:
        entries: the entries to validate, the same list on every rank (e.g. :func:`pipeline.data.load_datalist`).
        manifest: where the entries come from, for the message.
        sections: the manifest sections of ``entries``, for the message.
        options: keyword arguments of :func:`pipeline.data.validation.validate_entry` (e.g. ``check_registration``).

    Raises:
        InvalidInputError: when any rank finds a problem.
    """
    ours = [problem for entry in shard(entries) for problem in cached_validate_entry(entry, **options)]
    problems = all_gather_lists(ours)
    if problems:
        raise study_error(problems, manifest, sections)
