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
import socket
import sys

log = logging.getLogger("fashionnet")

#: How long `check_address` waits for a Ray head to accept a connection.
CONNECT_TIMEOUT = 10.0

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
    if not sys.stderr.isatty():  # a log file gets no colour escapes around worker prefixes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING,
                    "runtime_env": {"worker_process_setup_hook":
                                    "fashionnet.cluster.quiet_worker_logs"}}
    if address:
        check_address(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


#: Loggers of Ray's own that repeat a line many times a minute in every run here: without the
#: dashboard (we start none) Ray Train's placement-group cleaner cannot reach the state API
#: and says so every few seconds, forever; nothing is wrong and nobody can act on it.
NOISY_RAY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    """Ray's worker-process setup hook: silence `NOISY_RAY_LOGGERS`, and TensorFlow's C++
    start-up lines (the `fashionnet` logger's lines still come through)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in NOISY_RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # per-report lines, per worker


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a malformed or unreachable ``--address`` in one line, within ``timeout`` seconds.

    Ray itself retries an address where nothing listens for ever, without a word; a TCP
    connection to the head's port tells within seconds. ``auto`` (Ray's own discovery) passes.
    """
    from fashionnet.errors import FashionNetError

    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    if address.startswith("://") or ("://" in address and not address.startswith("ray://")):
        raise FashionNetError(f"--address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    host, _, port_text = hostport.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise FashionNetError(f"--address {address!r}: expected HOST:PORT (a port from 1 to "
                              f"65535) or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise FashionNetError(f"--address {address}: no Ray cluster answers there ({reason} "
                              f"after at most {timeout:g} s); start one with `ray start "
                              f"--head` or leave --address out to run Ray here") from None


def __getattr__(name: str):
    # Lazy: `fashionnet.cluster.label` without importing Ray or TensorFlow up front.
    if name == "label":
        from fashionnet.cluster.labelling import label

        return label
    if name == "train_on_ray":
        from fashionnet.cluster.training import train_on_ray

        return train_on_ray
    raise AttributeError(name)
