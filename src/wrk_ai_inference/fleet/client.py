"""FleetClient: inference across the workers that announce a model on the DHT, with no
control plane.

It finds workers by topic (a lookup cached for ``lookup_ttl_s``, refreshed in the
background), keeps pooled connections to them (its sidecar's pool), picks one by
power of two choices on their load (``view.py``), and sends each request with a
``requestId`` and the request's deadline. When a worker refuses (the request did not
run) it tries another; when a call is lost with its channel, it asks that worker
``checkRequest`` and sends the request elsewhere only on ``unknown`` or ``lost`` (no
answer exists there), so no request runs to an answer twice; a worker that cannot be
asked may have run it, and then the request is not resent (at most once).
docs/fleet.md is the protocol this follows.

    async with FleetClient(bootstrap=["127.0.0.1:49737"]) as fleet:
        result = await fleet.run_inference("digits", [[0.0] * 64])
        result["worker"]  # the public key of the worker that answered
"""

from __future__ import annotations

import asyncio
import random
import uuid
import weakref
from collections.abc import Coroutine
from typing import Any, Literal

import orjson

from ..engine.request_ids import DID_NOT_RUN, check_request_id
from ..errors import InferenceError
from ..logs import get_logger
from ..rpc.client import RpcClient
from ..rpc.wire import parse_reply
from .view import UNUSABLE, WorkerView

log = get_logger("fleet")

TOPIC = "ai-inference"
Policy = Literal["p2c", "random"]


class _Lost(Exception):
    """The channel failed with the call on it: it may have run."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason, self.sent = reason, sent


class _Topic:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.fetched = -1e18
        self.refresh: asyncio.Task[None] | None = None


def _short(key: str) -> str:
    return key[:12]


#: the fleet clients open in this process, for the live feed (the web console shows them)
_RUNNING: weakref.WeakSet[FleetClient] = weakref.WeakSet()


def running_clients() -> list[FleetClient]:
    return list(_RUNNING)


class FleetClient:
    """``policy="random"`` picks uniformly, as hp-svc-facs-net does (the bench's baseline);
    failover and at-most-once stay the same."""

    def __init__(self, bootstrap: list[str], *, policy: Policy = "p2c",
                 lookup_ttl_s: float = 2.0, capacity_max_age_s: float = 1.0,
                 probe_timeout_ms: int = 1000, silence_s: float = 0.1,
                 keep_alive_ms: int = 1000, connection_timeout_ms: int = 4000,
                 host: str | None = None, seed: int | None = None) -> None:
        self.policy = policy
        self.lookup_ttl_s = lookup_ttl_s
        self.capacity_max_age_s = capacity_max_age_s
        self.probe_timeout_ms = probe_timeout_ms
        self.silence_s = silence_s
        self._rpc = RpcClient(bootstrap, host=host, keep_alive_ms=keep_alive_ms,
                              connection_timeout_ms=connection_timeout_ms)
        self._rng = random.Random(seed)
        self._views: dict[str, WorkerView] = {}
        self._topics: dict[str, _Topic] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FleetClient:
        await self._rpc.__aenter__()
        _RUNNING.add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        _RUNNING.discard(self)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._rpc.__aexit__(*exc)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per worker: calls sent, answered, refused, failed over to another worker; calls
        in flight now; whether it is taken for down."""
        return {key: {**v.counts, "inFlight": v.in_flight, "down": v.down_since is not None}
                for key, v in self._views.items()}

    def view(self) -> dict[str, Any]:
        """What the client sees: the workers on each topic it looked up, with their last
        capacity answers and its own counts."""
        workers = {key: {"key": key, "capacity": v.capacity, "load": round(v.load(), 3),
                         "inFlight": v.in_flight, "down": v.down_since is not None,
                         **v.counts} for key, v in self._views.items()}
        return {"policy": self.policy,
                "topics": {topic: [workers[k] for k in entry.keys if k in workers]
                           for topic, entry in self._topics.items()},
                "workers": list(workers.values())}

    # ---- one request --------------------------------------------------------------
    async def run_inference(self, model_id: str, input_data: Any, options: Any = None,
                            timeout_ms: float = 30_000, request_id: str | None = None
                            ) -> dict[str, Any]:
        """The worker's ``runInference`` result, plus ``"worker"``: who answered."""
        if options is not None and not isinstance(options, dict):
            raise InferenceError("ERR_INVALID_REQUEST", "options must be an object")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) \
                or timeout_ms <= 0:
            raise InferenceError("ERR_INVALID_REQUEST", "timeout_ms must be positive")
        request_id = check_request_id(request_id) or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        inputs = orjson.Fragment(orjson.dumps(input_data, option=orjson.OPT_SERIALIZE_NUMPY))
        tried: list[tuple[str, str]] = []
        excluded: set[str] = set()
        view: WorkerView | None = None  # set: a worker that holds the call, asked again
        while True:
            if loop.time() >= deadline:
                raise self._give_up("ERR_INFERENCE_TIMEOUT",
                                    f"no answer within {timeout_ms:.0f} ms", model_id,
                                    request_id, tried)
            if view is None:
                view = await self._choose(model_id, excluded, request_id, tried)
            try:
                result = await self._send(view, model_id, inputs, options, request_id,
                                          deadline)
            except InferenceError as exc:  # the worker's answer
                if exc.code not in DID_NOT_RUN:
                    raise InferenceError(exc.code, exc.message,
                                         {**exc.details, "worker": view.key}) from None
                view.counts["refused"] += 1
                view.counts["failedOver"] += 1
                view.probed_at = -1e18  # ask again before choosing it
                tried.append((view.key, f"refused ({exc.code}), did not run"))
                excluded.add(view.key)
                view = None
                continue
            except _Lost as lost:
                view = await self._after_loss(view, lost, model_id, request_id, deadline,
                                              tried, excluded)
                continue
            return {**result, "worker": view.key}

    async def _send(self, view: WorkerView, model_id: str, inputs: orjson.Fragment,
                    options: dict[str, Any] | None, request_id: str, deadline: float
                    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        remaining_ms = max(1.0, (deadline - loop.time()) * 1000)
        # the worker stops the work a little before our deadline, so its ERR_INFERENCE_TIMEOUT
        # arrives before the call itself times out here
        worker_ms = max(1, int(remaining_ms - min(250.0, remaining_ms / 10)))
        opts = dict(options or {})
        asked = opts.get("timeout", worker_ms)
        if isinstance(asked, int | float) and not isinstance(asked, bool):
            opts["timeout"] = min(asked, worker_ms)  # else the worker says what is wrong
        body = orjson.dumps({"modelId": model_id, "inputData": inputs, "options": opts,
                             "requestId": request_id})
        sent = loop.time()
        view.sent(sent)
        try:
            raw = await self._rpc.request_raw(view.key, "runInference", body,
                                              timeout_ms=int(remaining_ms))
        except InferenceError as exc:
            reason = str(exc.details.get("reason") or exc.message)
            raise _Lost(reason, sent=reason != "NOT_CONNECTED") from None
        finally:
            view.done()
        now = loop.time()
        view.replied(now)
        try:
            reply: dict[str, Any] = parse_reply(raw)
        except InferenceError as exc:
            if exc.code not in DID_NOT_RUN:
                view.answered(now - sent)
            raise
        view.answered(now - sent)
        return reply

    async def _after_loss(self, view: WorkerView, lost: _Lost, model_id: str,
                          request_id: str, deadline: float, tried: list[tuple[str, str]],
                          excluded: set[str]) -> WorkerView | None:
        """Where the lost call goes next: None (another worker) only when it cannot have
        run on ``view``; ``view`` again when it runs or ran there (it joins or replays)."""
        view.went_down(asyncio.get_running_loop().time())
        if lost.sent:
            state = await self._confirm(view, request_id, deadline)
            if state is None:  # asked until the deadline, in vain
                tried.append((view.key, f"{lost.reason}, and it could not be asked whether "
                                        "it ran the request: not resent elsewhere"))
                raise self._give_up("ERR_INFERENCE_TIMEOUT", "no answer before the deadline",
                                    model_id, request_id, tried)
            if state not in ("unknown", "lost"):
                tried.append((view.key, f"{lost.reason}; it holds the call ({state}): "
                                        "asked again"))
                return view
            why = f"{lost.reason}; it said it had no answer ({state})"
        else:
            why = "unreachable (the request was not sent)"
        view.counts["failedOver"] += 1
        tried.append((view.key, why))
        excluded.add(view.key)
        return None

    async def _confirm(self, view: WorkerView, request_id: str, deadline: float
                       ) -> str | None:
        """``checkRequest`` on ``view`` until it answers or the deadline passes."""
        loop = asyncio.get_running_loop()
        pause = 0.1
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply = await self._rpc.request(
                    view.key, "checkRequest", {"requestId": request_id},
                    timeout_ms=int(max(1.0, min(self.probe_timeout_ms, remaining * 1000))))
            except InferenceError:
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
                pause = min(pause * 2, 1.0)
                continue
            view.replied(loop.time())
            return str(reply.get("state"))
        return None

    def _give_up(self, code: str, why: str, model_id: str, request_id: str,
                 tried: list[tuple[str, str]]) -> InferenceError:
        attempts = "; ".join(f"{_short(k)}: {outcome}" for k, outcome in tried)
        message = f"{model_id!r} (requestId {request_id}): {why}"
        if attempts:
            message += f"; tried {attempts}"
        return InferenceError(code, message, {
            "requestId": request_id,
            "tried": [{"worker": k, "outcome": outcome} for k, outcome in tried]})

    # ---- choosing a worker --------------------------------------------------------
    async def _choose(self, model_id: str, excluded: set[str], request_id: str,
                      tried: list[tuple[str, str]]) -> WorkerView:
        topic = f"{TOPIC}:{model_id}"
        keys = await self._workers(topic)
        warm = bool(keys)
        if not warm:  # nobody has it loaded: any worker that says it can load it
            keys = await self._workers(TOPIC)
        views = [self._view(k) for k in keys if k not in excluded]
        if self.policy == "random":
            if views:
                return self._rng.choice(views)
        else:
            chosen = await self._two_choices(views, model_id)
            if chosen is not None:
                return chosen
        why = f"none of the {len(keys)} workers on {topic} can take it now" if warm else \
            f"no worker announces {topic}, and none of the {len(keys)} on {TOPIC} can load it"
        code = "ERR_CAPACITY_EXCEEDED" if warm or tried else "ERR_MODEL_NOT_AVAILABLE"
        raise self._give_up(code, why, model_id, request_id,
                            tried + [(v.key, v.unusable_because(model_id)) for v in views])

    async def _two_choices(self, views: list[WorkerView], model_id: str
                           ) -> WorkerView | None:
        """Two workers at random, the one with the better tier and then the lighter load;
        repeated while the pair is unusable.

        A worker that holds our calls and has gone quiet is left out while a probe asks
        it. Stale answers are refreshed: in the background when the other of the pair is
        fresh (its estimate still counts), else before choosing."""
        loop = asyncio.get_running_loop()
        pool = [v for v in views if v.down_since is None] or list(views)
        while pool:
            pair = self._rng.sample(pool, min(2, len(pool)))
            pool = [v for v in pool if v not in pair]
            now = loop.time()
            for v in [v for v in pair if v.quiet(now, self.silence_s)]:
                self._probe_soon(v, model_id)
                pair.remove(v)
            # an answer that rules a worker out is asked again before it is believed
            stale = [v for v in pair if v.stale(now, self.capacity_max_age_s)
                     or v.tier(model_id) == UNUSABLE]
            if stale and len(stale) == len(pair):
                await self._probe_pair(stale, model_id)
                answered = [v for v in pair if not v.stale(loop.time(),
                                                           self.capacity_max_age_s)]
                pair = answered or pair
            else:
                for v in stale:
                    self._probe_soon(v, model_id)
            usable = [v for v in pair if v.tier(model_id) < UNUSABLE]
            if usable:
                return min(usable, key=lambda v: (v.tier(model_id), v.load()))
        return None

    async def _probe_pair(self, views: list[WorkerView], model_id: str) -> None:
        """Probe them together; once one answers, wait for the other only briefly, so a
        dead worker in the pair costs a request little more than the live one's answer
        (its probe runs on and marks it down)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        probes = [asyncio.ensure_future(self._probe(v, model_id)) for v in views]
        pending: set[asyncio.Future[bool]] = set(probes)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(p.result() for p in done):
                break
        if pending:
            grace = max(0.005, 2 * (loop.time() - started))
            await asyncio.wait(pending, timeout=grace)

    def _view(self, key: str) -> WorkerView:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = WorkerView(key)
        return view

    def _probe_soon(self, view: WorkerView, model_id: str) -> None:
        """A probe in the background, unless one is running (not a task per request)."""
        if view.probe is None:
            self._spawn(self._probe(view, model_id))

    async def _probe(self, view: WorkerView, model_id: str | None) -> bool:
        """One ``checkCapacity`` at a time per worker; callers meanwhile share it."""
        if view.probe is None:
            view.probe = asyncio.ensure_future(self._probe_once(view, model_id))
            view.probe.add_done_callback(lambda _: setattr(view, "probe", None))
        return await asyncio.shield(view.probe)

    async def _probe_once(self, view: WorkerView, model_id: str | None) -> bool:
        loop = asyncio.get_running_loop()
        in_flight = view.in_flight
        try:
            capacity = await self._rpc.request(
                view.key, "checkCapacity", {"modelId": model_id} if model_id else {},
                timeout_ms=self.probe_timeout_ms)
        except InferenceError as exc:
            view.went_down(loop.time())
            log.info("worker probe failed", extra={"worker": view.key, "error": exc.message})
            return False
        view.apply(capacity, model_id, in_flight, loop.time())
        return True

    # ---- finding workers ----------------------------------------------------------
    async def _workers(self, topic: str) -> list[str]:
        """The topic's workers: looked up now the first time (or while none was found),
        else from the cache, refreshed in the background once older than the TTL."""
        entry = self._topics.setdefault(topic, _Topic())
        age = asyncio.get_running_loop().time() - entry.fetched
        if not entry.keys and age > min(0.25, self.lookup_ttl_s):
            await self._refresh(entry, topic)
        elif age > self.lookup_ttl_s:
            self._refresh_in_background(entry, topic)
        return entry.keys

    def _refresh_in_background(self, entry: _Topic, topic: str) -> None:
        if entry.refresh is None or entry.refresh.done():
            entry.refresh = self._spawn(self._refresh_and_revive(entry, topic))

    async def _refresh(self, entry: _Topic, topic: str) -> None:
        if entry.refresh is not None and not entry.refresh.done():
            await asyncio.shield(entry.refresh)
            return
        entry.refresh = self._spawn(self._lookup(entry, topic))
        await asyncio.shield(entry.refresh)

    async def _lookup(self, entry: _Topic, topic: str) -> None:
        try:
            keys = await self._rpc.lookup(topic)
        except InferenceError as exc:
            log.warning("topic lookup failed", extra={"topic": topic, "error": exc.message})
            keys = entry.keys
        entry.keys, entry.fetched = keys, asyncio.get_running_loop().time()

    async def _refresh_and_revive(self, entry: _Topic, topic: str) -> None:
        """A fresh lookup, then a probe of each worker taken for down: one restarted
        with the same key takes load again within a TTL of coming back."""
        await self._lookup(entry, topic)
        model_id = topic.split(":", 1)[1] if ":" in topic else None
        down = [self._view(k) for k in entry.keys if self._view(k).down_since is not None]
        await asyncio.gather(*(self._probe(v, model_id) for v in down))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
