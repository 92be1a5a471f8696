"""Language models in the core: cancellation, the model's FIFO, templates and load-time
refusals, on the bundled GGUF files in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.runtimes.llama import StopFilter

from .helpers import DIGIT_ZERO, edit_spec, make_repo
from .test_batcher import started_worker

LONG = {"max_tokens": 1500, "temperature": 0}  # greedy: this prompt runs on, no early end


async def test_cancel_stops_exactly_one_generation(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wrk_ai_inference.llama")
    repo = make_repo(tmp_path, {"smollm2": "smollm2"})
    edit_spec(repo / "smollm2", parallel=1)  # one slot: the second generation waits
    worker = await started_worker(repo, preload=["smollm2"])
    try:
        prompt = {"prompt": "Once upon a time"}
        running = asyncio.ensure_future(worker.run_inference(
            "smollm2", prompt, {**LONG, "inferenceId": "gen-a"}))
        # prompts are read on helper threads, so arrival order is the order they are
        # ready in: gen-b is sent once gen-a holds the slot
        while (await worker.check_capacity())["sequences"]["smollm2"]["kvCacheUse"] < 0.004:
            await asyncio.sleep(0.01)  # gen-a holds the slot and has made a few tokens
        queued = asyncio.ensure_future(worker.run_inference(
            "smollm2", prompt, {"max_tokens": 12, "inferenceId": "gen-b"}))
        while (await worker.check_capacity())["sequences"]["smollm2"]["waiting"] == 0:
            await asyncio.sleep(0.01)
        capacity = await worker.check_capacity()
        slots = capacity["sequences"]["smollm2"]
        assert {k: slots[k] for k in ("slots", "running", "waiting")} == {
            "slots": 1, "running": 1, "waiting": 1}
        assert slots["contextLength"] == 2048 and 0 < slots["kvCacheUse"] < 1
        assert (await worker.cancel("gen-a"))["cancelled"] is True
        first = (await asyncio.wait_for(running, 5))["result"]
        assert first["finishReason"] == "cancelled" and first["text"]
        await asyncio.sleep(0.1)  # the thread logs its stop just after its last event
        stops = [r.stopMs for r in caplog.records  # type: ignore[attr-defined]
                 if r.getMessage() == "generation stopped" and r.reason == "cancelled"]  # type: ignore[attr-defined]
        assert len(stops) == 1 and stops[0] < 300, stops
        print(f"cancel (in process): thread stopped {stops[0]} ms after the cancel")  # noqa: T201
        assert 0 < first["usage"]["completionTokens"] < 1500
        second = (await asyncio.wait_for(queued, 30))["result"]
        assert second["finishReason"] == "length" and second["usage"]["completionTokens"] == 12
        gone = await worker.cancel("gen-a")  # it ended: nothing left to stop
        assert gone["cancelled"] is False and "gen-a" in gone["message"]
        assert worker.capacity.running == 0
        with pytest.raises(InferenceError) as same_id:
            await asyncio.gather(*(worker.run_inference("smollm2", prompt, {
                "max_tokens": 30, "inferenceId": "twin"}) for _ in range(2)))
        assert "already running" in same_id.value.message
    finally:
        await worker.stop()


async def test_the_event_loop_never_waits_for_the_model(tmp_path: Path) -> None:
    """While a long prompt is evaluated, other requests (a tensor model) still answer."""
    worker = await started_worker(make_repo(tmp_path, {"smollm2": "smollm2", "digits": "digits"}),
                                  preload=["smollm2", "digits"])
    try:
        long = asyncio.ensure_future(worker.run_inference(
            "smollm2", {"prompt": " ".join(["story"] * 1500)}, {"max_tokens": 2}))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(20):
            await worker.run_inference("digits", [DIGIT_ZERO])
        assert loop.time() - started < 2.0
        assert not long.done()
        await long
    finally:
        await worker.stop()


async def test_a_base_model_answers_through_the_template_model_json_gives(tmp_path: Path
                                                                         ) -> None:
    repo = make_repo(tmp_path, {"gemma3": "gemma3", "bare": "gemma3"})
    manifest = json.loads((repo / "bare" / "model.json").read_text())
    del manifest["chatTemplate"]
    (repo / "bare" / "model.json").write_text(json.dumps(manifest))
    worker = await started_worker(repo, preload=["gemma3"])
    try:
        answer = await worker.run_inference("gemma3", {"messages": [
            {"role": "user", "content": "What is the capital of France?"}]},
            {"temperature": 0, "max_tokens": 24})
        assert "Paris" in answer["result"]["text"]
        assert answer["result"]["message"]["role"] == "assistant"
        with pytest.raises(InferenceError) as refused:
            await worker.load_model("bare")
        assert refused.value.code == "ERR_MODEL_LOAD_FAILED"
        assert "chat template" in refused.value.message
        assert "chatTemplate" in refused.value.message
    finally:
        await worker.stop()


async def test_bad_requests_never_take_a_slot(tmp_path: Path) -> None:
    worker = await started_worker(make_repo(tmp_path, {"smollm2": "smollm2"}),
                                  preload=["smollm2"])
    try:
        for data, options, needle in (
                ({"prompt": ""}, {}, "prompt"),
                ({"prompt": "x", "messages": []}, {}, "inputData"),
                ({"messages": [{"role": "user"}]}, {}, "content"),
                ({"prompt": "x"}, {"topK": 3}, "topK"),
                ({"prompt": "x"}, {"max_tokens": 0}, "max_tokens"),
                ({"prompt": "x"}, {"stop": [""]}, "stop"),
                ({"prompt": "x"}, {"response_format": {"type": "xml"}}, "response_format"),
                ({"prompt": "x"}, {"inferenceId": "../x"}, "inferenceId"),
                ({"prompt": "x"}, {"top_logprobs": 2}, "logprobs")):
            with pytest.raises(InferenceError) as bad:
                await worker.run_inference("smollm2", data, options)
            assert bad.value.code in ("ERR_INVALID_REQUEST", "ERR_INVALID_INPUT")
            assert needle in bad.value.message, bad.value.message
        assert worker.capacity.running == 0
        stats = worker.history.stats()
        assert stats["failed"] >= 9
    finally:
        await worker.stop()


def test_stop_filter_holds_back_what_may_begin_a_stop() -> None:
    f = StopFilter(["END", "\n\n"])
    assert f.feed("ab") == ("ab", False)
    assert f.feed("cE") == ("c", False)  # "E" may begin "END"
    assert f.feed("N") == ("", False)
    assert f.feed("Dzz") == ("", True)
    g = StopFilter(["END"])
    assert g.feed("xE") == ("x", False)
    assert g.flush("") == "E"  # the generation ended: what was held is text after all
    assert StopFilter([]).feed("END") == ("END", False)


def test_example_models_are_in_place() -> None:
    from .helpers import EXAMPLES

    for name in ("smollm2", "gemma3"):
        assert (EXAMPLES / name / "model.gguf").stat().st_size > 50_000_000
    assert shutil.which("node")  # the rack tests' orchestrator, run by make test


async def test_a_tool_call_is_cancelled_and_timed_out_as_text_is(tmp_path: Path) -> None:
    """A forced call runs under the same lifecycle as text: cancel stops it and frees its
    sequence (the call ends as far as it was written), a deadline answers 504 and frees
    it."""
    repo = make_repo(tmp_path, {"smollm2": "smollm2"})
    worker = await started_worker(repo, preload=["smollm2"])
    tool = {"type": "function", "function": {"name": "save_story", "parameters": {
        "type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}}}
    ask = {"messages": [{"role": "user", "content": "Save a very long story about a dragon."}]}
    forced = {**LONG, "tools": [tool], "tool_choice": {
        "type": "function", "function": {"name": "save_story"}}}
    try:
        prompt = await worker.count_tokens("smollm2", ask, forced)
        running = asyncio.ensure_future(worker.run_inference(
            "smollm2", ask, {**forced, "inferenceId": "call-a"}))
        cells = 4 * 2048  # parallel x contextLength
        while (await worker.check_capacity())["sequences"]["smollm2"]["kvCacheUse"] * cells \
                < prompt + 24:  # well into the call's arguments
            assert not running.done(), running.result()
            await asyncio.sleep(0.01)
        assert (await worker.cancel("call-a"))["cancelled"] is True
        result = (await asyncio.wait_for(running, 5))["result"]
        assert result["finishReason"] == "cancelled" and result["text"] == ""
        [call] = result["toolCalls"]  # what was written of it, as its stream sent it
        assert call["function"]["arguments"].startswith('{"story": "')
        with pytest.raises(InferenceError) as late:
            await worker.run_inference("smollm2", ask, {**forced, "timeout": 1500})
        assert late.value.code == "ERR_INFERENCE_TIMEOUT"
        for _ in range(100):
            if (await worker.check_capacity())["sequences"]["smollm2"]["running"] == 0:
                break
            await asyncio.sleep(0.05)
        assert worker.capacity.running == 0
        assert (await worker.check_capacity())["sequences"]["smollm2"]["running"] == 0
    finally:
        await worker.stop()


def test_plain_greedy_picks_off_the_logits_what_the_sampler_chain_picks() -> None:
    """Plain greedy decoding reads the best token off the logits (``GreedyPick``) instead
    of running llama.cpp's chain. On real rows of logits and biases that sink the best
    token, lift others past it, and bring a token exactly level with it from below and
    from above in token order (the chain takes the first best), both pick the same."""
    import llama_cpp as lib
    import numpy as np
    from llama_cpp import Llama

    from wrk_ai_inference.runtimes.llama import Generation, Sampling
    from wrk_ai_inference.runtimes.llama.sequence import GreedyPick, plain_greedy, sampler_chain
    from wrk_ai_inference.runtimes.llama.vocabulary import Vocabulary

    from .helpers import EXAMPLES

    llm = Llama(str(EXAMPLES / "smollm2" / "model.gguf"), n_ctx=256, n_threads=2,
                verbose=False)
    vocab, n_vocab, ctx = lib.llama_model_get_vocab(llm._model.model), llm.n_vocab(), llm._ctx.ctx
    words = Vocabulary(lib, vocab, n_vocab)
    one = np.float32

    def level(row: Any, token: int, with_token: int) -> float | None:
        """A bias that puts ``token``'s logit exactly on ``with_token``'s in float32, if
        one does (float32 sums may step over it)."""
        bias = one(row[with_token]) - one(row[token])
        for _ in range(8):
            total = one(row[token]) + bias
            if total == row[with_token]:
                return float(bias)
            bias = np.nextafter(bias, one(np.inf if total < row[with_token] else -np.inf))
        return None

    def levelled(row: Any, tokens: range, with_token: int) -> tuple[int, float]:
        """The first of ``tokens`` that a bias brings exactly level with ``with_token``."""
        for token in tokens:
            bias = level(row, token, with_token)
            if bias is not None:
                return token, bias
        raise AssertionError(f"no token of {tokens} levels with {with_token}")

    picks = []
    for text in ("Once upon a time", "The capital of France is", "def add(a, b):"):
        llm.reset()
        llm.eval(llm.tokenize(text.encode()))
        logits = lib.llama_get_logits_ith(ctx, -1)
        row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).copy()
        best, second = (int(t) for t in np.argsort(-row, kind="stable")[:2])
        below, above = range(min(best, second) - 1, -1, -1), range(max(best, second) + 1,
                                                                     n_vocab)
        low, high = levelled(row, below, best), levelled(row, above, best)
        low2, high2 = levelled(row, below, second), levelled(row, above, second)
        cases: list[list[tuple[int, float]]] = [
            [], [(best, -100.0)], [(best, -100.0), (second, -100.0)],
            [(low[0], 7.5), (high[0], 3.0)],
            [low],  # level with the best, lower id: it is picked
            [high],  # level with the best, higher id: the best stays
            [(best, -100.0), high2], [(best, -100.0), low2],
            [(high[0], high[1] + 1.0), (low[0], low[1] + 1.0)]]
        for bias in cases:
            sampling = Sampling(temperature=0, logit_bias=bias)
            assert plain_greedy(sampling)
            job = Generation([], sampling, lambda events: None)
            chain = sampler_chain(lib, n_vocab, job, 0)
            try:
                want = lib.llama_sampler_sample(chain, ctx, -1)
            finally:
                lib.llama_sampler_free(chain)
            assert GreedyPick(words, bias).pick(logits) == want, (text, bias)
            picks.append(want)
    assert len(set(picks)) > 6  # the cases made the chain pick many different tokens
    assert not plain_greedy(Sampling(temperature=0, repeat_penalty=1.1))
    assert not plain_greedy(Sampling(temperature=0, logit_bias=[(5, 1.0), (5, 2.0)]))
    assert not plain_greedy(Sampling(temperature=0.7))
