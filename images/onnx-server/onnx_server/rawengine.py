"""The raw engine the server is measured against: onnxruntime-genai's Generator loop in this
process, with as many intra-op threads as the server would use. A static batch is the fastest raw
way to serve N requests together on CPU; one request at a time is the raw single stream."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_server.cpus import available_cpus
from onnx_server.genai import genai
from onnx_server.loadgen import BenchRequest, LoadRun, Outcome


class RawEngine:
    def __init__(self, model_dir: Path) -> None:
        self._og = genai()
        config = self._og.Config(str(model_dir))
        session = {"intra_op_num_threads": available_cpus()}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
        self._model: Any = self._og.Model(config)
        self._tokenizer: Any = self._og.Tokenizer(self._model)
        self._eos = set(json.loads((model_dir / "genai_config.json").read_text())["model"]["eos_token_id"])

    def batch(self, prompts: Sequence[str], max_tokens: int) -> list[Outcome]:
        """One static batch: every row decodes until it ends or has `max_tokens` tokens; times from
        before tokenizing, the prefill included. A token is timed when it adds text, as the
        server's client times a streamed chunk: a token that decodes to nothing yet (part of a
        character) arrives with the next one, so the two sides' latencies count the same gaps."""
        started = time.perf_counter()
        ids = [self._tokenizer.encode(p) for p in prompts]
        params = self._og.GeneratorParams(self._model)
        longest = max(len(i) for i in ids)
        params.set_search_options(max_length=longest + max_tokens, do_sample=False, batch_size=len(prompts))
        generator = self._og.Generator(self._model, params)
        generator.append_tokens(ids[0] if len(prompts) == 1 else self._tokenizer.encode_batch(list(prompts)))
        outcomes = [Outcome() for _ in prompts]
        texts = [self._tokenizer.create_stream() for _ in prompts]
        last = [started] * len(prompts)  # each row's last text
        now = started
        running = set(range(len(prompts)))
        while running and not generator.is_done():
            generator.generate_next_token()
            now = time.perf_counter()
            for row, token in enumerate(generator.get_next_tokens()):
                if row not in running:
                    continue
                outcome = outcomes[row]
                if int(token) not in self._eos:
                    outcome.tokens += 1
                    if texts[row].decode(int(token)):
                        if outcome.ttft is None:
                            outcome.ttft = now - started
                        else:
                            outcome.itl.append(now - last[row])
                        last[row] = now
                if int(token) in self._eos or outcome.tokens >= max_tokens:
                    outcome.e2e = now - started
                    running.discard(row)
        for row in running:  # the generator ended them (max_length) at its last step
            outcomes[row].e2e = now - started
        return outcomes

    def single_stream(self, requests: Sequence[BenchRequest]) -> LoadRun:
        """The requests one after another, each alone."""
        started = time.perf_counter()
        outcomes = [self.batch([r.prompt], r.max_tokens)[0] for r in requests]
        return LoadRun(outcomes, time.perf_counter() - started)

    def static_batches(self, requests: Sequence[BenchRequest], size: int) -> LoadRun:
        """Consecutive batches of `size` requests, each batch to its longest max_tokens."""
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        for first in range(0, len(requests), size):
            group = requests[first : first + size]
            outcomes += self.batch([r.prompt for r in group], max(r.max_tokens for r in group))
        return LoadRun(outcomes, time.perf_counter() - started)
