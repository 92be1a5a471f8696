"""``make eval``: lm-evaluation-harness (``lm_eval[api]``, its own venv) against the
worker on two small tasks that ship here as local JSON, nothing downloaded:

  capitals_mc   multiple choice scored by log-likelihood through ``local-completions``
                (the worker's remote tokenizer, token-id prompts, echo, max_tokens 0)
  capitals_gen  a generation task through ``local-chat-completions``

Then the multiple-choice task scored in this process with llama-cpp-python (every
position's logits kept, the same file): its answers must be the harness's. Prints the
accuracies, the time each took and the agreement. Loopback only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import EXAMPLES, make_repo, running_worker  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = "smollm2"


def out(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def harness(lm_eval: str, url: str, task: str, results: Path) -> tuple[float, float]:
    """(the task's metric, seconds) from one lm_eval run, its samples kept."""
    if task == "capitals_mc":
        model = ["--model", "local-completions", "--model_args",
                 f"model={MODEL},base_url={url}/v1/completions,tokenizer_backend=remote,"
                 "tokenized_requests=True,num_concurrent=1,max_retries=1"]
    else:
        model = ["--model", "local-chat-completions", "--model_args",
                 f"model={MODEL},base_url={url}/v1/chat/completions,num_concurrent=1,"
                 "max_retries=1", "--apply_chat_template"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run([lm_eval, *model, "--tasks", task, "--include_path", "tasks",
                    "--output_path", str(results / task), "--log_samples"],
                   cwd=HERE, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    [found] = glob.glob(str(results / task / "**" / "results_*.json"), recursive=True)
    metrics = json.loads(Path(found).read_text())["results"][task]
    value = next(v for k, v in metrics.items() if k.split(",")[0] in ("acc", "exact_match"))
    return float(value), seconds


def harness_choices(results: Path) -> list[int]:
    [found] = glob.glob(str(results / "capitals_mc" / "**" / "samples_capitals_mc_*.jsonl"),
                        recursive=True)
    samples = sorted((json.loads(line) for line in Path(found).read_text().splitlines()),
                     key=lambda s: s["doc_id"])
    # each choice's (log-likelihood, is greedy), written as strings
    return [max(range(len(s["filtered_resps"])),
                key=lambda i, s=s: float(s["filtered_resps"][i][0])) for s in samples]


def in_process_choices() -> tuple[list[int], float, float]:
    """The multiple-choice task scored with llama-cpp-python: context and continuation
    tokenised apart, as the harness does, the continuation's log-likelihood summed."""
    import numpy as np
    from llama_cpp import Llama

    threads = len(os.sched_getaffinity(0))
    llm = Llama(str(EXAMPLES / MODEL / "model.gguf"), n_ctx=2048, n_threads=threads,
                n_threads_batch=threads, n_batch=512, flash_attn=True, logits_all=True,
                verbose=False)
    docs = [json.loads(line) for line in (HERE / "tasks" / "capitals.jsonl").read_text()
            .splitlines()]
    started = time.perf_counter()
    picks = []
    for doc in docs:
        context = llm.tokenize(f"Question: What is the capital of {doc['country']}?\n"
                               "Answer:".encode(), add_bos=False, special=True)
        scores = []
        for choice in doc["choices"]:
            continuation = llm.tokenize(f" {choice}".encode(), add_bos=False, special=True)
            tokens = context + continuation
            llm.reset()
            llm.eval(tokens)
            logits = np.array(llm.scores[:len(tokens)], dtype=np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            scores.append(sum(logp[i - 1][tokens[i]] for i in range(len(context), len(tokens))))
        picks.append(int(np.argmax(scores)))
    accuracy = sum(p == d["answer"] for p, d in zip(picks, docs, strict=True)) / len(docs)
    return picks, accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lm-eval", required=True, help="the lm_eval command of its venv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp) / "repo", {MODEL: MODEL})
        results = Path(tmp) / "results"
        with running_worker(repo, Path(tmp) / "w.log", preload=[MODEL]) as worker:
            report: dict[str, Any] = {}
            for task in ("capitals_mc", "capitals_gen"):
                report[task] = harness(str(Path(args.lm_eval).resolve()), worker.url,
                                       task, results)
        theirs = harness_choices(results)
    ours, accuracy, seconds = in_process_choices()
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    for task, (value, took) in report.items():
        out(f"{task}: {value:.3f} through the worker ({took:.1f} s with lm_eval's start)")
    out(f"capitals_mc in process (llama-cpp-python, logits_all): {accuracy:.3f} "
        f"({seconds:.1f} s); the same answer on {same} of {len(ours)} questions")
    if same != len(ours):
        sys.exit(1)


if __name__ == "__main__":
    main()
