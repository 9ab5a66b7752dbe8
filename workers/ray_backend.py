"""The Ray backend: the same jobs, run by actors on the nodes of a Ray cluster.

The service is the cluster's driver. Each worker slot is an actor (workers.ray_slot.SlotWorker)
pinned to one node: `threads` CPUs for a CPU slot, 1/jobs_per_gpu of a GPU for a GPU slot. A
thread of the backend looks at the cluster every second and keeps one actor per slot that its
nodes have room for: slots appear when a node joins and go when it leaves.

The queue stays here, in the service (FIFO; one job per actor at a time). Each slot has a thread
that takes the next job for its kind of device, calls the actor's streaming `run`, and passes the
items (`Started`, `LossBatch`es, `Finished`) on to the consumer's bounded queue: a consumer that
falls behind blocks these threads, the streams' back-pressure pauses the actors, and training
waits, as with the local pool.

A job whose actor or node is lost (the stream raises, or stays silent past the watchdog and the
actor does not answer a ping) goes back to the front of the queue and runs again from step 0;
its `Started` comes again, and the consumer keeps only the steps the store does not have. After
`attempts` lost runs it fails with `worker_lost`. Ray's own retries are off: they would replay a
stream whose batches, cut by time, are not the same the second time.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from trainwire.jobs import ErrorCode, Finished, JobSpec, LossBatch, RunOutcome, Started
from trainwire.jobs import WorkerMessage as Message
from workers.backend import Backend, CancelResult, DeviceUnavailable, MessageQueue

log = logging.getLogger(__name__)

MAX_PENDING_MESSAGES = 4096  # as the local pool: seconds of training before the actors wait
RECONCILE_SECONDS = 1.0  # how often the cluster's nodes are looked at
POLL_SECONDS = 0.5  # a slot thread's wait for its stream's next item, between checks
PING_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 30.0
# The driver spends ~0.15-0.4 ms of CPU on each streamed item (0.34 ms measured, docs/ray.md): with
# many jobs running, batches are cut less often so that receiving them takes at most this share
# of one core.
DRIVER_SECONDS_PER_ITEM = 0.0004
DRIVER_CORE_SHARE = 0.25


class RayUnavailable(Exception):
    """No Ray cluster could be joined; the message names Ray and the address."""


class _Driver:
    """This process's connection to Ray, held by a thread of its own for the process's life.

    Ray is connected once per process (`ray.init` is global), so this is module state. The
    thread matters: a Ray instance that `ray.init` starts on this host runs processes that get
    SIGKILL when the thread that started them ends (Linux's parent-death signal is per thread),
    so the thread that connects waits until `disconnect`, and shuts Ray down itself.
    """

    lock = threading.Lock()
    thread: threading.Thread | None = None
    release = threading.Event()


def connect(address: str | None, namespace: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Join the Ray cluster at `address` as its driver (None: start a Ray instance on this
    host); at once if this process is connected already. Raises RayUnavailable instead of
    waiting for a cluster that does not answer."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            "Ray: TRAINWIRE_BACKEND=ray needs Ray: pip install 'trainwire[ray]'"
        ) from None

    with _Driver.lock:
        if ray.is_initialized():
            return
        where = address or "a local Ray instance"
        if address and address not in ("auto", "local") and "://" not in address:
            _probe(address)
        connected = threading.Event()
        failure: list[BaseException] = []

        def hold() -> None:
            try:
                ray.init(
                    address=address or "local",
                    namespace=namespace,
                    include_dashboard=False if not address else None,
                    log_to_driver=False,  # the actors' logs stay in the cluster's log files
                    logging_level=logging.WARNING,
                )
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                connected.set()
            _Driver.release.wait()
            ray.shutdown()  # a Ray instance this process started goes with it

        # ray.init retries an address it cannot reach for minutes: wait for it with a limit.
        # (Off the main thread it leaves the SIGTERM handler alone, as the service wants, and
        # says so: that notice is dropped.)
        notice = _DropRecords("SIGTERM handler is not set")
        ray_log = logging.getLogger("ray._private.worker")
        ray_log.addFilter(notice)
        _Driver.release.clear()
        thread = threading.Thread(target=hold, name="ray-driver", daemon=True)
        thread.start()
        in_time = connected.wait(timeout)
        ray_log.removeFilter(notice)
        if not in_time:
            raise RayUnavailable(f"Ray: the cluster at {where} did not answer within {timeout:g} s")
        if failure:
            reason = str(failure[0]).strip().splitlines()
            raise RayUnavailable(
                f"Ray: cannot join the cluster at {where}: {type(failure[0]).__name__}: "
                f"{reason[0] if reason else ''}"
            )
        _Driver.thread = thread


def disconnect(timeout: float = 10.0) -> None:
    """Leave the cluster (and stop a Ray instance this process started)."""
    with _Driver.lock:
        thread, _Driver.thread = _Driver.thread, None
        _Driver.release.set()
        if thread is not None:
            thread.join(timeout)


class _DropRecords(logging.Filter):
    """Drops the log records whose message contains `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _probe(address: str) -> None:
    """Fail at once when nothing listens at the cluster's address."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except ValueError:
        raise RayUnavailable(f"Ray: RAY_ADDRESS={address!r} is not host:port") from None
    except OSError as exc:
        raise RayUnavailable(
            f"Ray: no cluster answers at {address} ({exc.strerror or exc})"
        ) from None


@dataclass(eq=False)
class _Queued:
    spec: JobSpec  # spec.device: "cpu" or "cuda"
    lost: int = 0  # runs lost with their worker so far
    last_loss: str = ""  # why the last one was lost
    cancelled: bool = False
    slot: _Slot | None = None  # the slot running it
    dispatched: bool = False  # its run was handed to the slot's actor

    @property
    def job_id(self) -> str:
        return self.spec.job_id


@dataclass(eq=False)
class _Slot:
    node_id: str
    kind: str  # "cpu" or "cuda"
    index: int
    actor: Any
    ready: bool = False
    gone: bool = False  # its node left, or its actor died: it takes no more jobs
    thread: threading.Thread | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return self.node_id, self.kind, self.index


class _Lost(Exception):
    """The run's actor or node was lost."""


class _Failed(Exception):
    """The run failed inside the actor's own code (a rerun would fail the same way)."""


@dataclass
class _Node:
    node_id: str
    cpus: float
    gpus: float
    host: str = ""


class RayBackend(Backend):
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None,
        namespace: str = "trainwire",
        cpu_threads: int = 1,
        max_cpu_slots: int | None = None,
        jobs_per_gpu: int = 1,
        timeout_s: float | None = None,
        flush_seconds: float = 0.25,
        attempts: int = 3,
        watchdog_s: float = 30.0,
        max_pending_messages: int = MAX_PENDING_MESSAGES,
    ):
        self.address = address
        self.namespace = namespace
        self.cpu_threads = max(1, cpu_threads)
        self.max_cpu_slots = max_cpu_slots  # None: as many as the nodes' CPUs allow
        self.jobs_per_gpu = jobs_per_gpu
        self.attempts = attempts
        self.watchdog_s = watchdog_s
        self._timeout_s = timeout_s
        self._flush_seconds = flush_seconds
        self.messages = MessageQueue(max_pending_messages)
        self._queue: list[_Queued] = []  # FIFO; a slot takes the first job for its kind
        self._running: dict[str, _Queued] = {}
        self._slots: dict[tuple[str, str, int], _Slot] = {}
        self._nodes: dict[str, _Node] = {}
        self._retry_at: dict[tuple[str, str, int], float] = {}  # slots whose actor just died
        self._cond = threading.Condition()
        self._started = False
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._connect_lock = threading.Lock()
        self._seen_nodes = False

    # -- the cluster ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster (once) and look at its nodes."""
        with self._connect_lock:
            connect(self.address, self.namespace)
            if not self._seen_nodes:
                self._look_at_nodes()
                self._seen_nodes = True

    def _look_at_nodes(self) -> list[_Node]:
        import ray

        nodes = [
            _Node(
                n["NodeID"],
                float(n["Resources"].get("CPU", 0)),
                float(n["Resources"].get("GPU", 0)),
                str(n.get("NodeManagerHostname", "")),
            )
            for n in ray.nodes()
            if n.get("Alive")
        ]
        nodes.sort(key=lambda n: n.node_id)
        with self._cond:
            self._nodes = {n.node_id: n for n in nodes}
        return nodes

    def _plan(self, nodes: list[_Node]) -> list[tuple[str, str, int]]:
        """The slots the nodes have room for: every GPU's, and the CPUs' (at most
        max_cpu_slots, the slots already up kept first, the rest spread over the nodes)."""
        keys: list[tuple[str, str, int]] = []
        for node in nodes:
            keys += [(node.node_id, "cuda", i) for i in range(int(node.gpus) * self.jobs_per_gpu)]
        per_node = {n.node_id: int(n.cpus // self.cpu_threads) for n in nodes}
        # round robin: the first slot of every node, then the second, ...
        spread = [
            (node.node_id, "cpu", i)
            for i in range(max(per_node.values(), default=0))
            for node in nodes
            if i < per_node[node.node_id]
        ]
        if self.max_cpu_slots is None:
            return keys + spread
        with self._cond:
            up = [k for k in spread if k in self._slots and not self._slots[k].gone]
        chosen = up[: self.max_cpu_slots]
        chosen += [k for k in spread if k not in chosen][: self.max_cpu_slots - len(chosen)]
        return keys + chosen

    def _reconcile(self) -> None:
        """Keep one actor per slot that the live nodes have room for."""
        nodes = self._look_at_nodes()
        wanted = self._plan(nodes)
        alive = {n.node_id for n in nodes}
        now = time.monotonic()
        with self._cond:
            if self._stopping.is_set():
                return
            for slot in self._slots.values():
                if slot.node_id not in alive or slot.key not in wanted:
                    slot.gone = True  # an idle thread leaves at once; a busy one after its job
            self._cond.notify_all()
            new = [
                key
                for key in wanted
                if key not in self._slots and self._retry_at.get(key, 0.0) <= now
            ]
        for key in new:
            self._add_slot(*key)

    def _add_slot(self, node_id: str, kind: str, index: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from workers.ray_slot import SlotWorker

        if kind == "cpu":
            resources: dict[str, Any] = {"num_cpus": self.cpu_threads}
        else:  # the GPU job's Python thread is not counted against the node's CPUs
            resources = {"num_cpus": 0, "num_gpus": 1 / self.jobs_per_gpu}
        actor = SlotWorker.options(  # type: ignore[attr-defined]
            **resources,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            name=None,
        ).remote(kind, self.cpu_threads)
        slot = _Slot(node_id, kind, index, actor)
        slot.thread = threading.Thread(
            target=self._slot_main, args=(slot,), name=f"ray-{kind}-{node_id[:8]}-{index}"
        )
        slot.thread.daemon = True
        with self._cond:
            self._slots[slot.key] = slot
        slot.thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(RECONCILE_SECONDS):
            try:
                self._reconcile()
            except Exception:  # the cluster may be briefly unreachable: look again later
                log.exception("looking at the Ray cluster's nodes failed")

    # -- Backend --------------------------------------------------------------------------------
    def start(self) -> None:
        self.connect()
        self._reconcile()
        with self._cond:
            self._started = True
        self._watcher = threading.Thread(target=self._watch, name="ray-nodes", daemon=True)
        self._watcher.start()

    @property
    def devices(self) -> list[str]:
        with self._cond:
            kinds = {slot.kind for slot in self._slots.values() if not slot.gone}
        return [kind for kind in ("cpu", "cuda") if kind in kinds]

    @property
    def slots(self) -> int:
        with self._cond:
            return sum(not slot.gone for slot in self._slots.values())

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes: resources, slots, and the slots whose worker is up."""
        with self._cond:
            live = [s for s in self._slots.values() if not s.gone]
            return [
                {
                    "node": node.node_id,
                    "host": node.host,
                    "cpus": node.cpus,
                    "gpus": node.gpus,
                    "slots": sum(s.node_id == node.node_id for s in live),
                    "ready": sum(s.node_id == node.node_id and s.ready for s in live),
                }
                for node in self._nodes.values()
            ]

    def resolve_device(self, asked: str, supported: tuple[str, ...]) -> str:
        if not self._seen_nodes:
            self.connect()  # jobs recovered at start-up are placed before start()
        with self._cond:
            nodes = list(self._nodes.values())
        gpus = self.jobs_per_gpu > 0 and any(n.gpus >= 1 for n in nodes)
        cpus = any(n.cpus >= self.cpu_threads for n in nodes) and self.max_cpu_slots != 0
        if asked.startswith("cuda:"):
            raise DeviceUnavailable(
                f"with the Ray backend a job asks for 'cuda' (a GPU of any node): {asked!r} "
                "names a device of one host"
            )
        if asked == "auto" and gpus and "cuda" in supported:
            return "cuda"
        if asked in ("auto", "cpu"):
            if not cpus:
                raise DeviceUnavailable(
                    f"no node of the Ray cluster has {self.cpu_threads} CPU(s) free for a job"
                )
            return "cpu"
        if "cuda" not in supported:
            raise DeviceUnavailable("this variant runs on the CPU only")
        if not gpus:
            raise DeviceUnavailable("the Ray cluster has no node with a GPU")
        return "cuda"

    @property
    def ready(self) -> bool:
        """Started, and some worker can take a job now."""
        with self._cond:
            return (
                self._started
                and not self._stopping.is_set()
                and any(s.ready and not s.gone for s in self._slots.values())
            )

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every slot's actor is up (a node that joins later adds slots that come
        up on their own)."""

        def all_up() -> bool:
            live = [s for s in self._slots.values() if not s.gone]
            return self._started and bool(live) and all(s.ready for s in live)

        with self._cond:
            return self._cond.wait_for(all_up, timeout)

    def submit(self, spec: JobSpec) -> None:
        # no checkpoints on a cluster yet: its nodes need a shared folder (docs/checkpoints.md)
        spec = replace(spec, checkpoint=None)
        with self._cond:
            self._queue.append(_Queued(spec))
            self._cond.notify_all()

    def cancel(self, job_id: str) -> CancelResult:
        with self._cond:
            for i, item in enumerate(self._queue):
                if item.job_id == job_id:  # also one put back after a lost run
                    del self._queue[i]
                    return "queued"
            running = self._running.get(job_id)
            if running is None:
                return None
            running.cancelled = True
            slot = running.slot if running.dispatched else None
        if slot is not None:
            _tell(slot.actor.cancel, job_id)
        return "running"

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def queued_specs(self) -> list[JobSpec]:
        with self._cond:
            return [item.spec for item in self._queue]

    def stop(self, timeout: float = 5.0) -> list[str]:
        with self._cond:
            self._stopping.set()
            interrupted = list(self._running)
            asked = [item for item in self._running.values() if item.dispatched]
            self._cond.notify_all()
        for item in asked:
            if item.slot is not None:
                _tell(item.slot.actor.cancel, item.job_id)
        deadline = time.monotonic() + timeout
        if self._watcher is not None:
            self._watcher.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        self._disconnect(slots)
        return interrupted

    def _disconnect(self, slots: list[_Slot]) -> None:
        import ray

        for slot in slots:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        disconnect()

    # -- slot threads ---------------------------------------------------------------------------
    def _emit(self, message: Message) -> None:
        self.messages.put(message)  # blocks while the consumer is behind: back-pressure

    def _flush_for_running(self) -> float:
        with self._cond:
            running = len(self._running)
        return max(self._flush_seconds, running * DRIVER_SECONDS_PER_ITEM / DRIVER_CORE_SHARE)

    def _slot_main(self, slot: _Slot) -> None:
        try:
            if not self._wait_actor(slot):
                return
            while True:
                item = self._take(slot)
                if item is None:
                    return
                if not self._run(slot, item):
                    return
        except Exception:
            log.exception("the slot %s of node %s failed", slot.kind, slot.node_id)
        finally:
            self._retire(slot)

    def _wait_actor(self, slot: _Slot) -> bool:
        """Wait until the slot's actor has started (torch imported, warmed up)."""
        import ray
        from ray.exceptions import GetTimeoutError

        ref = slot.actor.ready.remote()
        began = time.monotonic()
        while True:
            with self._cond:
                if self._stopping.is_set() or slot.gone:
                    return False
            try:
                ray.get(ref, timeout=POLL_SECONDS)
            except GetTimeoutError:
                continue
            except Exception as exc:
                log.warning(
                    "the %s worker on node %s did not start: %s", slot.kind, slot.node_id, exc
                )
                with self._cond:
                    self._retry_at[slot.key] = time.monotonic() + 5.0
                return False
            with self._cond:
                slot.ready = True
                self._cond.notify_all()
            log.info(
                "a %s worker on node %s is up (%.1f s)",
                slot.kind,
                slot.node_id,
                time.monotonic() - began,
            )
            return True

    def _take(self, slot: _Slot) -> _Queued | None:
        with self._cond:
            while not (self._stopping.is_set() or slot.gone):
                for i, item in enumerate(self._queue):
                    if item.spec.device == slot.kind:
                        del self._queue[i]
                        item.slot, item.dispatched = slot, False
                        self._running[item.job_id] = item
                        return item
                self._cond.wait()
            return None

    def _retire(self, slot: _Slot) -> None:
        import ray

        with self._cond:
            slot.gone = True
            if self._slots.get(slot.key) is slot:
                del self._slots[slot.key]
            self._cond.notify_all()
        if not self._stopping.is_set():
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)

    def _run(self, slot: _Slot, item: _Queued) -> bool:
        """Run one job on the slot's actor; False if the actor was lost with it."""
        if self._stopping.is_set():
            self._end(item, Finished(item.job_id, RunOutcome.interrupted, 0))
            return False
        stream = slot.actor.run.remote(item.spec, self._timeout_s, self._flush_for_running())
        with self._cond:
            item.dispatched = True
            cancel_now = item.cancelled or self._stopping.is_set()
        if cancel_now:
            _tell(slot.actor.cancel, item.job_id)
        delivered = 0
        try:
            for message in self._read(slot, item.job_id, stream):
                if isinstance(message, LossBatch):
                    delivered = message.end_step
                    self._emit(message)
                elif isinstance(message, Started):
                    self._emit(message)
                else:
                    if self._stopping.is_set() and message.status == RunOutcome.cancelled:
                        message = Finished(item.job_id, RunOutcome.interrupted, message.steps_done)
                    self._end(item, message)
                    return True
            raise _Lost("its stream ended without the job's end")
        except _Failed as exc:
            code = ErrorCode.internal
            self._end(item, Finished(item.job_id, RunOutcome.failed, delivered, code, str(exc)))
            return True
        except _Lost as exc:
            self._lost(item, slot, str(exc), delivered)
            return False

    def _read(self, slot: _Slot, job_id: str, stream: Any) -> Any:
        """The stream's messages; raises _Lost when its actor or node is lost."""
        import ray
        from ray.exceptions import RayTaskError

        silent_since = time.monotonic()
        received = 0  # steps
        while True:
            try:
                ref = stream._next_sync(timeout_s=POLL_SECONDS)
            except StopIteration:
                return
            except Exception as exc:
                raise _Lost(_describe(exc)) from None
            if ref.is_nil():
                if time.monotonic() - silent_since > self.watchdog_s:
                    self._check_alive(slot, job_id, received)
                    silent_since = time.monotonic()
                continue
            try:
                message = ray.get(ref)
            except RayTaskError as exc:  # our own code failed in the actor: a rerun would too
                raise _Failed(_describe(exc)) from None
            except Exception as exc:  # the actor, its worker process or its node is gone
                raise _Lost(_describe(exc)) from None
            if isinstance(message, LossBatch):
                received = message.end_step
            yield message  # may wait long for a consumer behind a store that cannot write
            silent_since = time.monotonic()

    def _check_alive(self, slot: _Slot, job_id: str, received: int) -> None:
        """A stream silent for watchdog_s: its actor must answer a ping and still be on the job,
        with no steps made that the stream did not bring (a stream can hang: ray#43914)."""
        import ray

        silent = f"its stream was silent for {self.watchdog_s:g} s"
        try:
            current, delivered = ray.get(
                slot.actor.ping.remote(), timeout=min(PING_TIMEOUT_S, self.watchdog_s)
            )
        except Exception as exc:
            raise _Lost(f"{silent} and its worker did not answer ({_describe(exc)})") from None
        if current != job_id:
            raise _Lost(f"{silent} and its worker is no longer running it")
        if delivered > received:
            raise _Lost(f"{silent} with steps {received}-{delivered - 1} made but not received")

    def _end(self, item: _Queued, finished: Finished) -> None:
        self._emit(finished)
        with self._cond:
            self._running.pop(item.job_id, None)

    def _lost(self, item: _Queued, slot: _Slot, why: str, delivered: int) -> None:
        """The run died with its actor or node: rerun it from step 0, or give up."""
        where = f"node {slot.node_id}"
        log.warning("job %s lost its %s worker on %s: %s", item.job_id, slot.kind, where, why)
        item.lost += 1
        item.last_loss = f"{where}: {why}"
        with self._cond:
            slot.gone = True
            self._running.pop(item.job_id, None)
            if self._stopping.is_set():
                finished: Finished | None = Finished(item.job_id, RunOutcome.interrupted, delivered)
            elif item.cancelled:
                finished = Finished(item.job_id, RunOutcome.cancelled, delivered)
            elif item.lost >= self.attempts:
                finished = Finished(
                    item.job_id,
                    RunOutcome.failed,
                    delivered,
                    ErrorCode.worker_lost,
                    f"its worker was lost {item.lost} times; the last on {item.last_loss}"[:500],
                )
            else:
                finished = None
                item.slot, item.dispatched = None, False
                self._queue.insert(0, item)  # it was first before: it runs next
                self._cond.notify_all()
        if finished is not None:
            self._emit(finished)


def _tell(method: Any, *args: Any) -> None:
    """Call an actor method without waiting for its answer."""
    with contextlib.suppress(Exception):
        method.remote(*args)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
