"""FashionNet on Ray: batch labelling (Ray Data) and data-parallel training (Ray Train).

The only place in the project that imports Ray, and only inside functions: ``import
fashionnet.cluster`` works without the ``cluster`` extra, and nothing else needs it.

    from fashionnet.cluster import label, train_on_ray
    label("runs/a", "photos/", "labels/", workers=2)            # Parquet shards + summary.json
    train_on_ray(config, "runs/b", workers=2)                   # the same bundle as `train`

Both run on ``ray.init()`` on this machine, or on an existing cluster with ``address``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fashionnet")

__all__ = ["connect", "label", "train_on_ray"]


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start Ray on this machine (``address`` None) or join a running cluster, once.

    Already connected (a test, a notebook, a driver that called ``ray.init`` itself): kept as
    it is. ``num_cpus`` caps a local instance only; a cluster has the CPUs its nodes declared.
    """
    import ray

    if ray.is_initialized():
        return
    # Our workers log through the `fashionnet` logger; Ray's own start-up lines are noise.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def __getattr__(name: str):
    # Lazy: `fashionnet.cluster.label` without importing Ray or TensorFlow up front.
    if name == "label":
        from fashionnet.cluster.labelling import label

        return label
    if name == "train_on_ray":
        from fashionnet.cluster.training import train_on_ray

        return train_on_ray
    raise AttributeError(name)
