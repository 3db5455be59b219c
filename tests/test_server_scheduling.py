"""Iteration-level scheduling in the real ONNX server process: requests join and leave the running
batch at every decode step, a long prompt's prefill is spread over steps, and a request's tokens
are the same whether it runs alone or among others.

The model is the tiny test model with its weights scaled up (the random model's greedy output
repeats one token, which would make a token-for-token comparison meaningless) and no reachable
end-of-sequence token, so every generation runs exactly to its max_tokens. Bounds are generous
(counts of steps and ratios, not timing targets): the machine is shared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server_support import API_KEY, SERVER_PATH, Server

MODEL = "phi3-vary-int4"
WEIGHT_SCALE = 6.0  # makes greedy output vary from token to token
LONG = 3000  # tokens of a stream that outlasts everything else in a test
SLACK = 1.0  # seconds of client, HTTP and shared-machine latency allowed on top of the server's work

# Sampling settings compared alone and batched (each with several prompts).
SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 0},
    {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 11},
    {"temperature": 1.2, "seed": 5},
]


# Guided chat requests (response_format), greedy and seeded, batched with the others.
ANSWER = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "count": {"type": "integer", "maximum": 99}},
    "required": ["name", "count"],
    "additionalProperties": False,
}
GUIDED: list[dict[str, Any]] = [
    {
        "messages": [{"role": "user", "content": f"a name and a count, please ({index})"}],
        "max_tokens": 60,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}},
        **sampling,
    }
    for index, sampling in enumerate([{"temperature": 0}, {"temperature": 0.8, "seed": 2}])
]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converter's default int4 (int8 activations: `--accuracy-level 4`)."""
    return _varied(tmp_path_factory.mktemp("varied"), accuracy_level=4)


@pytest.fixture(scope="module")
def fp32_compute_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights converted with `--accuracy-level 1`: int4 weights, float32 activations.
    onnxruntime's MatMulNBits rounds differently for one row than for several (seen on an AVX2 CPU:
    1e-7 apart); with int8 activations, a value that rounds to the other side of an int8 step
    makes that 1e-2 in the logits, enough to change a sampled token. In float32 the batch's
    rounding stays in the last bits, so a row's tokens must match its tokens alone exactly."""
    return _varied(tmp_path_factory.mktemp("varied-fp32"), accuracy_level=1)


def _varied(root: Path, accuracy_level: int) -> Path:
    import torch
    from transformers import Phi3ForCausalLM

    from convert.tiny_model import TinySpec, build

    source = build(root / "source", TinySpec(context=8192))
    model = Phi3ForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(WEIGHT_SCALE)
    model.save_pretrained(source)
    out = root / MODEL
    command = ["-m", "convert", "--model", str(source), "--method", "builder", "--out", str(out), "--no-compare"]
    command += ["--accuracy-level", str(accuracy_level)]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["eos_token_id"] = [config["model"]["vocab_size"] + 1]  # never produced: runs to max_tokens
    config_path.write_text(json.dumps(config))
    shutil.rmtree(source)
    return out


@pytest.fixture(scope="module")
def server(varied_model: Path) -> Iterator[Server]:
    running = Server(varied_model, "--max-batch", "8")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def exact_server(fp32_compute_model: Path) -> Iterator[Server]:
    """For tests that compare a batched row's tokens with its tokens alone, exactly."""
    running = Server(fp32_compute_model, "--max-batch", "8")
    yield running
    running.stop()


@dataclass
class Stream:
    """One streamed completion, read on its own thread: when each chunk came, and its text."""

    server: Server
    body: dict[str, Any]
    sent: float = 0.0
    chunks: list[tuple[float, str]] = field(default_factory=list)
    ended: float = 0.0
    finish: str = ""
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.sent = time.monotonic()
        self.thread.start()
        return self

    def _read(self) -> None:
        body = {"model": MODEL, **self.body, "stream": True}
        with httpx.stream(
            "POST", self.server.base + "/v1/completions", json=body, headers=self.server.headers, timeout=300
        ) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if choice["text"]:
                    self.chunks.append((time.monotonic(), choice["text"]))
                self.finish = choice.get("finish_reason") or self.finish
        self.ended = time.monotonic()

    def join(self, timeout: float = 300) -> Stream:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        return self

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.chunks)

    @property
    def first(self) -> float:
        return self.chunks[0][0]

    def wait_for_chunks(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.chunks) < count:
            assert time.monotonic() < deadline, "the stream did not start"
            time.sleep(0.005)


def alone(server: Server, body: dict[str, Any]) -> str:
    reply = server.post("/v1/completions", json={"model": MODEL, **body}, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def long_stream(server: Server) -> Stream:
    stream = Stream(server, {"prompt": "a long answer", "max_tokens": LONG, "temperature": 0}).start()
    stream.wait_for_chunks(10)
    return stream


def test_a_request_arriving_mid_stream_starts_without_waiting_for_it(server: Server) -> None:
    quiet = Stream(server, {"prompt": "a short question", "max_tokens": 8, "temperature": 0}).start().join()
    running = long_stream(server)
    newcomer = Stream(server, {"prompt": "a short question", "max_tokens": 8, "temperature": 0}).start().join()
    # The newcomer ran to its end while the 3000-token stream went on (a static batch makes it wait
    # for all of them), and its first token came about as soon as on a quiet server: HTTP and the
    # client's thread cost far more than a few decode steps of this model, hence the slack.
    assert running.ended == 0.0 or newcomer.ended < running.ended
    assert newcomer.first - newcomer.sent < (quiet.first - quiet.sent) + SLACK
    assert newcomer.text == quiet.text
    running.join()
    assert running.finish == "length"


# Loaded by the server's interpreter (sitecustomize): every decode step takes 0.4 s longer, standing
# in for a large model's step over many rows (the tiny model's takes about a millisecond).
_SLOW_DECODE = """
import time
import onnx_server.decoder as decoder
_decode = decoder.SlotDecoder.decode
def decode(self, tokens):
    time.sleep(0.4)
    return _decode(self, tokens)
decoder.SlotDecoder.decode = decode
"""


def test_the_first_token_is_sent_before_the_next_decode_step(varied_model: Path, tmp_path: Path) -> None:
    """The prompt's prefill chooses the first token; it must reach the client then, not after the
    decode step that follows in the same iteration (every request's TTFT would grow by one step)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SLOW_DECODE)
    server = Server(varied_model, env={"PYTHONPATH": os.pathsep.join([str(hooks), str(SERVER_PATH)])})
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
        # A prompt whose every token has text of its own (a partial UTF-8 byte would be held).
        request = {"model": MODEL, "prompt": "tokens per second", "max_tokens": 4, "temperature": 0}
        client.completions.create(**request)  # first-run costs (allocations) are not measured
        sent = time.perf_counter()
        arrivals = [
            time.perf_counter() - sent
            for chunk in client.completions.create(**request, stream=True)
            if chunk.choices and chunk.choices[0].text
        ]
    finally:
        server.stop()
    assert len(arrivals) >= 3, arrivals
    assert arrivals[0] < 0.3, arrivals  # alone, the prompt is prefilled at once: no decode step before it
    assert arrivals[1] - arrivals[0] > 0.35, arrivals  # the next tokens do wait for their steps


def test_a_finished_sequence_frees_its_row_at_once(varied_model: Path) -> None:
    two_rows = Server(varied_model, "--max-batch", "2")
    try:
        running = long_stream(two_rows)
        short = Stream(two_rows, {"prompt": "short", "max_tokens": 6, "temperature": 0}).start()
        # The short request holds the second row before the queued one is sent (a fixed pause let
        # a loaded machine deliver them the other way round).
        short.wait_for_chunks(1)
        queued = Stream(two_rows, {"prompt": "queued", "max_tokens": 6, "temperature": 0}).start()
        short.join()
        queued.join()
        # Both rows were taken (the long stream and the short one): the queued request got the
        # short one's row when it finished, while the long stream still ran.
        assert running.ended == 0.0 or queued.ended < running.ended
        assert queued.first >= short.first
        assert queued.first - short.ended < SLACK
        running.join()
    finally:
        two_rows.stop()


def test_batched_requests_give_the_tokens_each_gives_alone(exact_server: Server) -> None:
    server = exact_server
    prompts = ["the quick brown fox", "a" * 3, "jumps over the lazy dog " * 12, "x y z", "hello " * 40, "tools"]
    bodies = [
        {"prompt": prompt, "max_tokens": 12 + 7 * index, **sampling}
        for sampling in SAMPLINGS
        for index, prompt in enumerate(prompts)
    ]
    expected = [alone(server, body) for body in bodies]
    guided_expected = [_chat(server, body) for body in GUIDED]
    before = server.decode_steps(1)
    rng = random.Random(3)  # noqa: S311 (reproducible arrivals, not secrets)
    streams = []
    guided: list[str] = [""] * len(GUIDED)

    def guided_call(index: int) -> None:
        guided[index] = _chat(server, GUIDED[index])

    guided_threads = [threading.Thread(target=guided_call, args=(index,)) for index in range(len(GUIDED))]
    for index, body in enumerate(bodies):
        streams.append(Stream(server, body).start())
        if index < len(guided_threads):
            guided_threads[index].start()
        time.sleep(rng.uniform(0, 0.03))  # arrivals spread over running steps
    for stream, text in zip(streams, expected, strict=True):
        assert stream.join().text == text
        assert stream.finish == "length"
    for thread in guided_threads:
        thread.join(300)
    # Guided rows shared the batch too: the same JSON as alone (the grammar ends each one).
    assert guided == guided_expected
    for content in guided:
        assert set(json.loads(content)) == {"name", "count"}
    after = server.decode_steps(1)
    # Seeded requests shared decode steps with others (a static batch runs each seeded one alone).
    assert after[1] - before[1] > after[0] - before[0], "no decode step ran more than one sequence"


def _chat(server: Server, body: dict[str, Any]) -> str:
    reply = server.post("/v1/chat/completions", json={"model": MODEL, **body}, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_a_long_prompt_does_not_stall_a_running_stream(server: Server) -> None:
    prompt = "the quick brown fox jumps over the lazy dog " * 600
    started = time.monotonic()
    reply = server.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}, timeout=300)
    prefill_alone = time.monotonic() - started
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 2000, prompt_tokens
    running = long_stream(server)
    newcomer = Stream(server, {"prompt": prompt, "max_tokens": 4, "temperature": 0}).start().join()
    # While the long prompt was prefilled, the stream kept getting tokens: its longest pause is a
    # fraction of the prompt's whole prefill, which a single prefill run would have stalled it for.
    during = [at for at, _ in running.chunks if newcomer.sent <= at <= newcomer.first]
    gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
    assert running.ended == 0.0 or newcomer.ended < running.ended
    assert len(during) >= 3, "the stream got no tokens while the prompt was prefilled"
    assert max(gaps) < prefill_alone / 2, (max(gaps), prefill_alone)
    running.join()


def test_mixed_lengths_with_random_arrivals_all_complete_correctly(exact_server: Server) -> None:
    server = exact_server
    rng = random.Random(15)  # noqa: S311 (reproducible arrivals, not secrets)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "tools", "answer"]
    bodies = [
        {
            "prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 150))),
            "max_tokens": rng.randint(2, 60),
            "temperature": 0,
        }
        for _ in range(12)
    ]
    expected = [alone(server, body) for body in bodies]
    running = long_stream(server)
    streams = []
    for body in bodies:
        time.sleep(rng.expovariate(1 / 0.05))  # Poisson arrivals, 20 a second
        streams.append(Stream(server, body).start())
    for stream, text in zip(streams, expected, strict=True):
        assert stream.join().text == text
        assert stream.finish == "length"
    # Every one of them arrived while the long stream ran, and none waited for it to end.
    assert running.ended == 0.0 or max(stream.ended for stream in streams) < running.ended
    running.join()
    assert running.finish == "length"


def test_a_burst_of_waiting_requests_starts_in_one_iteration(varied_model: Path) -> None:
    """Requests that have queued up are prefilled one after another in the same iteration while the
    prefill budget lasts, not one per decode step. A small KV cache lines the burst up: two long
    requests fill it, the newer one is preempted and waits for the older one's end, and four short
    requests queue behind it; when the older one leaves, all five start before the next step."""
    capacity, token_bytes = 2000, 2 * 2 * 2 * 64 * 4  # tokens; the tiny model's cache per token
    gib = repr(capacity * token_bytes / (1 << 30))
    burst = Server(varied_model, "--kv-cache-gib", gib, "--max-batch", "8", "--prefill-budget-ms", "5000")
    try:
        older = Stream(burst, {"prompt": "the older one", "max_tokens": capacity - 20, "temperature": 0}).start()
        older.wait_for_chunks(1)  # it arrived first
        newer = Stream(burst, {"prompt": "the newer one", "max_tokens": 1200, "temperature": 0}).start()
        deadline = time.monotonic() + 60
        while burst.samples()["vllm:num_preemptions_total"] < 1:
            assert time.monotonic() < deadline and older.thread and older.thread.is_alive(), "nothing was preempted"
            time.sleep(0.005)
        steps_before = burst.decode_step_buckets()
        shorts = [Stream(burst, {"prompt": f"short {i}", "max_tokens": 8, "temperature": 0}).start() for i in range(4)]
        deadline = time.monotonic() + 30
        while burst.samples()["vllm:num_requests_waiting"] < 5:
            assert time.monotonic() < deadline and older.thread and older.thread.is_alive(), "the burst never queued"
            time.sleep(0.005)
        for stream in [older, newer, *shorts]:
            stream.join()
        assert [s.finish for s in [older, newer, *shorts]] == ["length"] * 6
        steps = {rows: count - steps_before[rows] for rows, count in burst.decode_step_buckets().items()}
        # The older one decoded alone, then the newer one and the four together: never two to four rows.
        assert steps[4] == steps[1], (steps[4] - steps[1], "steps of two to four rows")
        # Each short request's first token comes from its prefill, the other seven from steps of five.
        assert steps[8] - steps[4] == 7
    finally:
        burst.stop()


def test_the_engine_is_chosen_by_the_models_execution_provider(varied_model: Path, tmp_path: Path) -> None:
    """A CUDA model keeps onnxruntime-genai's Generator (static_batches.py): genai_config names the
    provider as the model builder writes it (`provider_options: [{"cuda": {...}}]`)."""
    from onnx_server.model_config import read_model_config

    cpu = read_model_config(varied_model)
    assert not cpu.uses_cuda
    assert (cpu.layers, cpu.kv_heads, cpu.head_size) == (2, 2, 64)
    assert cpu.past_keys[1] == "past_key_values.1.key" and cpu.present_values[0] == "present.0.value"
    cuda = tmp_path / "cuda"
    shutil.copytree(varied_model, cuda)
    config = json.loads((cuda / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["provider_options"] = [{"cuda": {"enable_cuda_graph": "0"}}]
    (cuda / "genai_config.json").write_text(json.dumps(config))
    assert read_model_config(cuda).uses_cuda


@pytest.mark.parametrize(("flags", "spins"), [((), True), (("--no-spinning",), False)], ids=["default", "no-spinning"])
def test_idle_intra_op_threads_spin_unless_told_to_sleep(varied_model: Path, flags: tuple[str], spins: bool) -> None:
    """Spinning threads served more tokens/s on the benchmark (decoder.py has the numbers); a node
    whose other busy processes share the cores can have them sleep. The real server says which it
    chose, and the session it builds is configured so."""
    from onnx_server.decoder import cpu_session
    from onnx_server.model_config import read_model_config

    server = Server(varied_model, *flags)
    try:
        loaded = [json.loads(line) for line in server.log.read_text().splitlines() if '"model loaded"' in line]
    finally:
        server.stop()
    assert [(entry["scheduling"], entry["spinning"]) for entry in loaded] == [("iteration", spins)]
    options = cpu_session(read_model_config(varied_model), 2, spinning=spins).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spins else "0")
    assert options.intra_op_num_threads == 2


@pytest.mark.parametrize("per_token_ms", [0.5, 4.0])
def test_no_prefill_run_is_shorter_than_the_smallest_chunk(varied_model: Path, per_token_ms: float) -> None:
    """Every prefill run pays a fixed cost (the large model's: about 17 ms, four tokens' worth), so
    a prompt is cut into runs of at least the smallest chunk, however the budget falls; only a
    prompt shorter than that runs whole. The runs add up to the prompt and respect the largest chunk."""
    from onnx_server import engine as engine_module
    from onnx_server.metrics import Metrics

    engine = engine_module.Engine(
        varied_model, Metrics(MODEL), max_batch=4, max_waiting=8, batch_wait_ms=10, threads=1, max_prefill_chunk=64
    )
    engine._prefill_token_seconds = per_token_ms / 1000  # what recent runs measured
    smallest = engine_module.MIN_CHUNK
    for length in range(1, 300):
        for budget in (0.0, 0.005, 0.03, 0.07, 0.2, float("inf")):
            sizes: list[int] = []
            while sum(sizes) < length:
                sizes.append(engine._chunk(length - sum(sizes), budget))
            assert sum(sizes) == length, (length, budget, sizes)
            assert sizes == [length] or all(smallest <= size <= 64 for size in sizes), (length, budget, sizes)


def test_static_batches_serve_when_the_model_names_cuda(varied_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine CUDA models get (onnxruntime-genai's Generator in static batches), driven on the
    CPU: no GPU here, so the model's provider is reported as CUDA to the engine while genai loads
    the CPU model. What it checks is the static loop's share of the engine (admission, sampling
    settings, guidance, events), not GPU behaviour."""
    from onnx_server import engine as engine_module
    from onnx_server.metrics import Metrics

    real = engine_module.read_model_config
    monkeypatch.setattr(
        engine_module, "read_model_config", lambda folder: dataclasses.replace(real(folder), providers=("cuda",))
    )
    engine = engine_module.Engine(varied_model, Metrics(MODEL), max_batch=4, max_waiting=8, batch_wait_ms=10, threads=1)
    engine.start()
    try:
        assert engine.ready.wait(120), engine.load_error
        samplings = [
            engine_module.Sampling(temperature=0),
            engine_module.Sampling(temperature=0),
            engine_module.Sampling(seed=3),
            engine_module.Sampling(guidance=("regex", "(yes|no)+")),
        ]
        results = asyncio.run(_generate(engine, samplings))
    finally:
        engine.stop()
    # The model has no reachable end of sequence: every generation runs to its 12 tokens.
    assert [(finish, tokens) for _, finish, tokens in results] == [("length", 12)] * 4
    assert results[0][0] == results[1][0]
    assert re.fullmatch("(yes|no)*(ye?|n)?", results[3][0]), results[3][0]  # cut at 12 tokens


async def _generate(engine: Any, samplings: list[Any]) -> list[tuple[str, str, int]]:
    from onnx_server.engine import Job

    async def one(sampling: Any) -> tuple[str, str, int]:
        prompt = "hello there"
        ids = await engine.encode(prompt)
        job = Job(
            prompt=prompt,
            prompt_ids=ids,
            max_tokens=12,
            sampling=sampling,
            stop=[],
            deadline=time.perf_counter() + 120,
            loop=asyncio.get_running_loop(),
        )
        engine.submit(job)
        text, finish, tokens = "", "", 0
        async for event in job.events_until_done():
            text += event.text
            finish, tokens = event.finish_reason or event.kind, event.completion_tokens
        return text, finish, tokens

    return list(await asyncio.gather(*(one(sampling) for sampling in samplings)))
