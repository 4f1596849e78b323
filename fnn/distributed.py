"""Devices: sweep members or mini-batches sharded over a mesh with ``jax.sharding``."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def member_sharding(devices, members: int):
    """A NamedSharding of a sweep's member axis over ``devices`` (a 1-D mesh "members").

    Args:
      devices: a list of devices, or None for all local devices.
      members: members per chunk (for the error message only).
    Returns:
      the sharding, or None when there is a single device (nothing to shard).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) <= 1:
        return None
    return NamedSharding(Mesh(devices, ("members",)), PartitionSpec("members"))
