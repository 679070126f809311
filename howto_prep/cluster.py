"""Ray orchestration shared by download and extract: init, a bounded in-flight map, and what a failed
task's exception means."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterable, Iterator

from howto_prep.errors import FailureKind, SystemFault


LOCAL = "local"  # Ray's address for "start a new local instance", whatever else is running


def ray_target(address: str | None) -> tuple[str, str]:
    """(the address to init Ray with, where it came from).

    `--address` wins; else RAY_ADDRESS (set by Ray jobs and KubeRay pods: the cluster the command was
    sent to); else a new local Ray. Plain `ray.init()` would also join whatever a `ray start` left in
    its current-cluster file, live or stale after a crash, and then refuse our num_cpus/num_gpus.
    """
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return LOCAL, "local"


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> str:
    """Join a cluster (--address, else RAY_ADDRESS) or start a quiet local Ray; idempotent.

    Returns where it runs. A cluster that cannot be reached is a SystemFault naming the address and
    where it came from; the local sizes (num_cpus, num_gpus) apply only to a local Ray.
    """
    import ray

    target, source = ray_target(address)
    if ray.is_initialized():
        return target
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Every task result we wait for is read and classified; what is never read is the rest of a run we
    # stopped on purpose (a system fault), whose errors Ray would print as tracebacks after our one line.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False,
                              "log_to_driver": True, "logging_level": "ERROR"}
    if target == LOCAL:
        ray.init(address=LOCAL, num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        return target
    try:
        check_reachable(target)
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError, OSError) as err:
        first_line = " ".join(str(err).split())[:300]
        raise SystemFault(f"cannot join the Ray cluster at {target} (from {source}): {first_line}; "
                          "start it, or unset RAY_ADDRESS for a local Ray") from None
    return target


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a host:port with nothing listening: Ray itself retries such an address for minutes."""
    if "://" in address or ":" not in address:
        return  # "auto" or a Ray Client URL: Ray resolves those itself
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise ValueError(f"{address!r} is not host:port") from None
    except OSError as err:
        raise ConnectionError(f"nothing answers at {address} ({err.strerror or err})") from None


def bounded_map(submit: Callable[[Any], Any], items: Iterable[Any], max_in_flight: int) -> Iterator[tuple[Any, Any]]:
    """Submit `submit(item)` (which returns an ObjectRef) with at most `max_in_flight` pending.

    Yields (item, result) as results complete, in completion order; a task's exception is yielded
    as the result (never raised), so one bad item cannot stop the batch. Closing the generator early
    cancels the tasks still in flight.
    """
    import ray

    pending: dict[Any, Any] = {}
    iterator = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < max(1, max_in_flight):
                try:
                    item = next(iterator)
                except StopIteration:
                    exhausted = True
                    break
                pending[submit(item)] = item
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            item = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # a task's failure belongs to its item, not to the run
                result = err
            yield item, result
    finally:  # the consumer stopped early (an error, a break): do not leave tasks running unobserved
        for ref in pending:
            ray.cancel(ref)


def task_failure(err: BaseException) -> tuple[FailureKind, str]:
    """(kind, one-line text) for an exception raised by a Ray task or actor.

    An error that carries its own kind (a MediaError from decoding) keeps it; otherwise Ray's own
    exception types say whether the memory monitor killed the worker, the process died, or the code
    raised.
    """
    cause = getattr(err, "cause", None) or err
    kind = getattr(cause, "kind", None)
    text = " ".join(str(cause).split())
    if not isinstance(kind, FailureKind):
        name = type(cause).__name__
        if "OutOfMemory" in name or "running low on memory" in text:
            kind = FailureKind.OUT_OF_MEMORY  # retry with --retry-failed
        elif "WorkerCrashed" in name or "ActorDied" in name:
            kind = FailureKind.WORKER_DIED
        else:
            kind = FailureKind.ERROR
    return kind, text[:800]
