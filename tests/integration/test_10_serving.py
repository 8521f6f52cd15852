"""Serving: the OpenAI-compatible server, driven by the real openai client.

A tiny random float64 Llama with the default model's tokenizer (its vocabulary size, so
text, stop strings and the chat template all work) is served in this process by uvicorn
on a free 127.0.0.1 port, as vLLM's own tests serve theirs. Its answers must equal
``LLM.generate``'s / ``LLM.chat``'s on the same checkpoint; streams must join to the
same text; bad requests must get a 4xx naming the field while the others carry on; a
client that goes away must free its KV blocks. One test runs ``folo-edu serve`` as a
subprocess (API key, /health polling, SIGTERM).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from folo_edu import LLM, SamplingParams  # noqa: E402
from folo_edu.engine.llm_engine import LLMEngine  # noqa: E402

API_KEY = "test-key"
MODEL = "tiny-chat"
MAX_MODEL_LEN = 256
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,",
           "Water boils at"]
@pytest.fixture(scope="module")
def model_path(tiny_chat_model_dir):
    """A tiny float64 Llama with SmolLM2's vocabulary size and tokenizer."""
    return tiny_chat_model_dir(torch.float64)


@pytest.fixture(scope="module")
def reference(model_path):
    return LLM(model_path, dtype="float64", max_model_len=MAX_MODEL_LEN)


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """uvicorn in a thread, serving our app over one engine, on a free port."""

    def __init__(self, model_path: str):
        import uvicorn

        from folo_edu.entrypoints.api_server import make_server

        self.engine = LLMEngine.from_kwargs(model_path, dtype="float64",
                                            max_model_len=MAX_MODEL_LEN)
        self.app, self.front = make_server(self.engine, MODEL, api_key=API_KEY)
        sock = free_socket()
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        wait_healthy(self.url)

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, **kw)

    def async_client(self) -> "openai.AsyncOpenAI":
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0)

    def post(self, route: str, body, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_KEY}", **kw.pop("headers", {})}
        kw.setdefault("timeout", 30)
        if isinstance(body, (dict, list)):
            return httpx.post(self.url + route, json=body, headers=headers, **kw)
        return httpx.post(self.url + route, content=body, headers=headers, **kw)

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Wait until the engine has no request left; return its stats."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["num_running"] == 0 and stats["num_waiting"] == 0 \
                    and stats["kv_blocks_used"] == 0:
                return stats
            time.sleep(0.05)
        raise AssertionError(f"the engine did not go idle: {self.stats()}")

    def stats(self) -> dict:
        async def get():
            return await self.front.call(lambda engine: (engine.get_stats(),
                                                         engine.has_unfinished_requests(),
                                                         dict(engine.kv_manager.block_tables)))
        stats, unfinished, tables = asyncio.run(get())
        return {**stats, "unfinished": unfinished, "block_tables": tables}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_healthy(url: str, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}/health never answered 200")


@pytest.fixture(scope="module")
def server(model_path):
    live = LiveServer(model_path)
    yield live
    live.stop()
    assert not live.front.alive, "the engine thread outlived the server"


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def greedy(max_tokens=12, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


def check_idle(server):
    stats = server.wait_idle()
    assert not stats["unfinished"] and not stats["block_tables"], stats
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


# ---- the basics -------------------------------------------------------------------------
def test_health_and_models(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    (model,) = client.models.list().data
    assert model.id == MODEL and model.object == "model"
    assert model.max_model_len == MAX_MODEL_LEN


def test_completions_equal_llm_generate(client, reference):
    """Greedy text, finish reasons and usage equal the offline LLM's, for a list of
    strings and for token ids."""
    tok = reference.get_tokenizer()
    want = reference.generate(PROMPTS, greedy(), use_tqdm=False)
    got = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=12,
                                    temperature=0)
    assert [c.index for c in got.choices] == list(range(len(PROMPTS)))
    assert [c.text for c in got.choices] == [w.outputs[0].text for w in want]
    assert [c.finish_reason for c in got.choices] == [w.outputs[0].finish_reason
                                                      for w in want]
    prompt_tokens = sum(len(tok.encode(p)) for p in PROMPTS)
    completion_tokens = sum(len(w.outputs[0].token_ids) for w in want)
    assert got.usage.prompt_tokens == prompt_tokens
    assert got.usage.completion_tokens == completion_tokens
    assert got.usage.total_tokens == prompt_tokens + completion_tokens
    ids = tok.encode(PROMPTS[1])
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == want[1].outputs[0].text


def test_streaming_joins_to_the_same_text(server, client):
    kw = dict(model=MODEL, prompt=PROMPTS[0], max_tokens=20, temperature=0)
    whole = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == [whole.finish_reason]
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    # the raw stream: server-sent events, the last one data: [DONE]
    with httpx.stream("POST", server.url + "/v1/completions", json={**kw, "stream": True},
                      headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == whole.text


def test_stream_usage_chunk(client):
    chunks = list(client.completions.create(
        model=MODEL, prompt=PROMPTS[2], max_tokens=7, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 7


def test_chat_equals_llm_chat_and_streams(client, reference):
    messages = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "Name a colour."}]
    want = reference.chat(messages, greedy(16), use_tqdm=False)[0]
    got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                         temperature=0)
    choice = got.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.outputs[0].text
    assert choice.finish_reason == want.outputs[0].finish_reason
    assert got.usage.prompt_tokens == len(want.prompt_token_ids)
    assert got.usage.completion_tokens == len(want.outputs[0].token_ids)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                 max_tokens=16, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks
            if c.choices[0].finish_reason] == [choice.finish_reason]


def test_n_seed_and_stop(client, reference):
    kw = dict(model=MODEL, prompt=PROMPTS[3], max_tokens=10, temperature=1.0, seed=7, n=3)
    first = client.completions.create(**kw)
    assert [c.index for c in first.choices] == [0, 1, 2]
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in first.choices]
    want = reference.generate(PROMPTS[3], SamplingParams(temperature=1.0, seed=7, n=3,
                                                         max_tokens=10), use_tqdm=False)[0]
    assert [c.text for c in first.choices] == [o.text for o in want.outputs]
    # n with two prompts: choice index = prompt index * n + sample index
    two = client.completions.create(model=MODEL, prompt=PROMPTS[:2], max_tokens=3, n=2,
                                    temperature=0)
    assert sorted(c.index for c in two.choices) == [0, 1, 2, 3]
    # stop: a word from the middle of the greedy text ends it there
    text = reference.generate(PROMPTS[0], greedy(20, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    got = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=20,
                                    temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert got.text == text[:text.index(stop)]
    assert got.finish_reason == "stop"
    assert got.model_extra["stop_reason"] == stop


def test_logprobs(client, reference):
    want = reference.generate(PROMPTS[1], greedy(6, logprobs=2), use_tqdm=False)[0].outputs[0]
    got = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=6,
                                    temperature=0, logprobs=2).choices[0]
    lp = got.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for token_id, position, value, tops in zip(want.token_ids, want.logprobs,
                                               lp.token_logprobs, lp.top_logprobs):
        assert value == pytest.approx(position[token_id].logprob)
        assert 2 <= len(tops) <= 3 and max(tops.values()) == pytest.approx(value)
    assert "".join(lp.tokens) == got.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        temperature=0, logprobs=True, top_logprobs=3).choices[0]
    content = chat.logprobs.content
    assert len(content) == 5 and all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)
    assert "".join(c.token for c in content) == chat.message.content


# ---- many clients at once -----------------------------------------------------------------
def test_concurrent_clients_get_their_own_answers(server, reference):
    """16 clients at once, streaming and not, different lengths: every answer equals
    the one the offline LLM gives that prompt alone; no request or block is left."""
    jobs = [(PROMPTS[i % 4] + " " * (i // 4), 4 + i % 7, i % 2 == 0) for i in range(16)]
    want = [reference.generate(p, greedy(m), use_tqdm=False)[0].outputs[0].text
            for p, m, _ in jobs]

    async def one(aclient, prompt, max_tokens, stream):
        r = await aclient.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                             max_tokens=max_tokens, stream=stream)
        if not stream:
            return r.choices[0].text
        return "".join([c.choices[0].text async for c in r])

    async def main():
        aclient = server.async_client()
        try:
            return await asyncio.gather(*(one(aclient, *job) for job in jobs))
        finally:
            await aclient.close()

    assert asyncio.run(main()) == want
    check_idle(server)


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    """A client that hangs up (mid-stream, or a non-streamed request timing out) has its
    request aborted: it never finishes (no e2e latency is recorded for it) and every
    KV block is free again."""
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 200, "temperature": 0,
            "stream": True, "ignore_eos": True}
    finished = metrics(server)["vllm:e2e_request_latency_seconds_count"]
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few tokens in, then hang up
    assert any(line.startswith("data: {") for line in got)
    check_idle(server)
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/completions", {**body, "stream": False}, timeout=0.5)
    check_idle(server)
    assert metrics(server)["vllm:e2e_request_latency_seconds_count"] == finished


# ---- client mistakes ----------------------------------------------------------------------
BAD = [  # (route, body change, status, field named in the message)
    ("/v1/completions", {"max_tokens": -3}, 400, "max_tokens"),
    ("/v1/completions", {"temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"n": 0}, 400, "n"),
    ("/v1/completions", {"model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": list(range(5, 5 + MAX_MODEL_LEN))}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "prompt"),
    ("/v1/completions", {"max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
    ("/v1/completions", {"logprobs": 99}, 400, "logprobs"),
    ("/v1/completions", {"echo": True}, 400, "echo"),
    ("/v1/completions", {"frobnicate": 1}, 400, "frobnicate"),
    ("/v1/completions", {"max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages"),
    ("/v1/chat/completions", {"tools": [{"type": "function"}]}, 400, "tools"),
]


@pytest.mark.parametrize("route,change,status,field", BAD,
                         ids=[f"{r.split('/')[-1]}-{next(iter(c))}-{s}" for r, c, s, _ in BAD])
def test_bad_request_names_the_field(server, route, change, status, field):
    base = ({"model": MODEL, "prompt": "Hello", "max_tokens": 4} if "chat" not in route
            else {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 4})
    r = server.post(route, {**base, **change})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert field in error["message"] and error["code"] == status
    assert set(error) == {"message", "type", "param", "code"}


def test_bad_requests_do_not_disturb_others(server, client, reference):
    """While a stream runs, bad JSON, a too-long prompt and a bad value are refused;
    the stream's answer is unchanged and the server keeps serving."""
    want = reference.generate(PROMPTS[2], greedy(40, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0].text
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=40,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    pieces = [next(iter(stream)).choices[0].text]
    assert server.post("/v1/completions", b"{not json").status_code == 400
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=MODEL, prompt=[1] * 400, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt="x", temperature=-1)
    pieces += [c.choices[0].text for c in stream]
    assert "".join(pieces) == want
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).choices
    check_idle(server)


def test_api_key_body_limit_and_queue_bound(server):
    route = server.url + "/v1/models"
    assert httpx.get(route).status_code == 401
    assert httpx.get(route, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(route, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # /health needs no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong",
                      max_retries=0).models.list()
    big = {"model": MODEL, "prompt": "x" * (5 * 1024 * 1024)}
    assert server.post("/v1/completions", big).status_code == 413
    server.front.max_pending = 0
    try:
        r = server.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 429 and "retry" in r.json()["error"]["message"]
    finally:
        server.front.max_pending = 1024


def test_a_failed_step_ends_its_requests_with_error_and_the_server_goes_on(server, client):
    runner = server.engine.model_runner
    real = runner.execute

    def fail_once(*args, **kw):
        runner.execute = real
        raise RuntimeError("injected fault")

    runner.execute = fail_once
    try:
        got = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4,
                                        temperature=0)
    finally:
        runner.execute = real
    assert got.choices[0].finish_reason == "error"
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=4,
                                     temperature=0).choices[0].finish_reason == "length"
    check_idle(server)


# ---- metrics ------------------------------------------------------------------------------
def metrics(server) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics").text
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if "le" not in s.labels and "finished_reason" not in s.labels}


def test_metrics_have_vllm_names_and_count(server, client):
    before = metrics(server)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count"):
        assert name in before, name
    client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    list(client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=5,
                                   temperature=0, stream=True, extra_body={"ignore_eos": True}))
    after = metrics(server)

    def grew(name):
        return after[name] - before[name]

    assert grew("vllm:generation_tokens_total") == 10
    assert grew("vllm:time_to_first_token_seconds_count") == 2
    assert grew("vllm:inter_token_latency_seconds_count") == 8
    assert grew("vllm:prompt_tokens_total") == 2 * len(
        server.engine.tokenizer.encode(PROMPTS[0]))
    assert grew("vllm:prefix_cache_hits_total") >= 0
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0


# ---- the command ------------------------------------------------------------------------
def test_folo_edu_serve_subprocess(model_path):
    """folo-edu serve: polled on /health, API key on /v1, stops cleanly on SIGTERM."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    exe = Path(sys.executable).with_name("folo-edu")
    cmd = [str(exe), "serve", "--model", model_path, "--port", str(port),
           "--api-key", "k", "--max-model-len", "128", "--served-model-name", "tiny"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc=proc)
        assert httpx.get(url + "/v1/models").status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert c.models.list().data[0].id == "tiny"
        out = c.chat.completions.create(model="tiny", max_tokens=3, temperature=0,
                                        messages=[{"role": "user", "content": "Hi"}])
        assert 1 <= out.usage.completion_tokens <= 3 and out.choices[0].message.content
        proc.send_signal(signal.SIGTERM)
        # a graceful shutdown, then uvicorn re-raises the signal (exit by SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert "Uvicorn running on http://127.0.0.1" in log, log
    assert "engine thread stopped" in log and "Finished server process" in log, log


def test_serve_flags_are_checked_before_loading(capsys):
    from folo_edu.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port=70000" in capsys.readouterr().err
    assert main(["serve", "--max-pending", "0"]) == 2
    assert "--max-pending=0" in capsys.readouterr().err


def test_serve_engine_flags_reach_the_engine(model_path, monkeypatch):
    """--dtype, --max-num-batched-tokens, --[no-]enable-prefix-caching,
    --[no-]enable-chunked-prefill and --linear-backend build the engine that is served."""
    from folo_edu import cli

    served = []
    monkeypatch.setattr("folo_edu.entrypoints.api_server.serve",
                        lambda engine, *a, **kw: served.append(engine))
    flags = ["serve", "--model", model_path, "--max-model-len", "128", "--max-num-seqs", "4"]
    assert cli.main([*flags, "--dtype", "float64", "--max-num-batched-tokens", "160",
                     "--no-enable-prefix-caching", "--no-enable-chunked-prefill",
                     "--linear-backend", "torch"]) == 0
    assert cli.main([*flags, "--dtype", "float32", "--enable-prefix-caching",
                     "--max-num-batched-tokens", "32"]) == 0
    off, on = served
    assert off.model_runner.dtype == torch.float64 and on.model_runner.dtype == torch.float32
    assert off.model_runner.linear_backend == "torch"
    assert off.config.scheduler_config.max_num_batched_tokens == 160
    assert off.config.scheduler_config.enable_chunked_prefill is False
    assert off.config.cache_config.enable_prefix_caching is False
    assert on.config.scheduler_config.max_num_batched_tokens == 32
    assert on.config.scheduler_config.enable_chunked_prefill is True
    assert on.config.cache_config.enable_prefix_caching is True


def test_serve_budget_without_chunking_is_refused_naming_the_flags(model_path, capsys,
                                                                    monkeypatch):
    from folo_edu import cli

    monkeypatch.setattr("folo_edu.entrypoints.api_server.serve",
                        lambda *a, **kw: pytest.fail("the server started"))
    assert cli.main(["serve", "--model", model_path, "--max-model-len", "128",
                     "--max-num-seqs", "4", "--max-num-batched-tokens", "100",
                     "--no-enable-chunked-prefill"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("folo-edu: error: --max-num-batched-tokens=100: expected >= "
                          "--max-model-len=128 when --enable-chunked-prefill is False"), err
