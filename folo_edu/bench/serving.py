"""The serving benchmark behind ``folo-edu bench --workload serving``.

A real server (``folo-edu serve`` in a child process, ``ServerProcess``) gets streaming
completions from an asyncio client, as vLLM's ``benchmark_serving`` sends them: for each
request rate, requests arrive as a Poisson process (exponential gaps between arrivals,
drawn from a seeded RNG; rate ``inf`` sends them all at once). Each request is timed
from the moment it is sent:

    TTFT  until the first streamed chunk with a token
    ITL   every gap between two consecutive token chunks
    E2E   until ``data: [DONE]``          TPOT  (E2E - TTFT) / (output tokens - 1)

and per rate: requests/s and output tokens/s over the run (first send to last answer),
TTFT/ITL/TPOT/E2E mean, p50 and p99, how many requests were in flight (client side), and
how many the engine held running and waiting (``/metrics``, sampled while the rate runs).

    SSEDecoder        bytes as they arrive -> the data of each complete server-sent event
    sse_events        an iterable of byte chunks -> the JSON of each event, up to [DONE]
    serving_workload  random prompts (token ids), distinct for every request of every rate
    poisson_offsets   the send times of one rate
    run_rate          one rate against a running server: per-request records, summary
    run_serving       the warm-up, every rate, the machine, JSON (``run`` also saves it)
"""
from __future__ import annotations

import asyncio
import codecs
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from folo_edu.bench.machine import (load_average, machine_info, resolve_bench_device,
                                    source_version)
from folo_edu.bench.metrics import percentile, save_json, table, timestamp
from folo_edu.bench.workloads import BenchRequest, _random_ids, special_token_ids_of


@dataclass
class ServingConfig:
    model: str | None = None            # checkpoint folder; None: the default model
    threads: int | None = 1             # the server's torch threads (OMP_NUM_THREADS); 1:
    #                                     steadier than 2 on 2 shared cores
    rates: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # requests/s; inf: all at once
    num_requests: int = 16              # per rate
    prompt_len_range: tuple[int, int] = (32, 128)  # uniform, inclusive
    output_len: int = 32                # every request: exactly this many (ignore_eos)
    seed: int = 0                       # prompts and arrival gaps
    warmup_requests: int = 2            # sent at once before the first rate, not timed
    max_model_len: int = 1024
    max_num_seqs: int = 64
    attention_backend: str = "auto"     # the server's --attention-backend
    max_num_batched_tokens: int | None = None  # the server's token budget (M5); None: its own
    metrics_poll_s: float = 0.5         # /metrics sampling period while a rate runs
    request_timeout_s: float = 600.0
    startup_timeout_s: float = 300.0
    output: str | None = None           # JSON path; "-" saves nothing

    def default_output(self) -> str:
        device = resolve_bench_device("auto").type  # the server's device
        return str(Path("benchmarks") / "results" / f"serving_{device}.json")


# ---- server-sent events ------------------------------------------------------------------
class SSEDecoder:
    """Incremental server-sent-events decoder (the WHATWG ``text/event-stream`` rules
    a streaming client needs). ``feed(bytes)`` returns the data of every event that the
    bytes complete, in order; a read may end anywhere: inside a line, inside a UTF-8
    character, between the ``\\r`` and ``\\n`` of a CRLF.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r``; an empty line ends an event; an
    event's ``data:`` lines are joined with ``\\n`` (one space after the colon is
    dropped); comment lines (``:``) and other fields (``event:``, ``id:``) are ignored.
    """

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += self._utf8.decode(chunk)
        events = []
        while True:
            m = re.search(r"\r\n|\r|\n", self._buf)
            if m is None or (m.group() == "\r" and m.end() == len(self._buf)):
                return events  # no complete line yet (a lone \r may be half a \r\n)
            line, self._buf = self._buf[:m.start()], self._buf[m.end():]
            if line == "":
                if self._data:
                    events.append("\n".join(self._data))
                self._data = []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value[1:] if value.startswith(" ") else value)


def sse_events(chunks):
    """The JSON object of each event in ``chunks`` (an iterable of bytes, split
    anywhere), up to ``data: [DONE]``; ValueError if the stream ends before it."""
    decoder = SSEDecoder()
    for chunk in chunks:
        for data in decoder.feed(chunk):
            if data == "[DONE]":
                return
            yield json.loads(data)
    raise ValueError("the stream ended without data: [DONE]")


# ---- the workload --------------------------------------------------------------------------
def serving_workload(vocab_size: int, exclude: set[int], num_requests: int,
                     prompt_len_range: tuple[int, int], output_len: int,
                     rng: random.Random) -> list[BenchRequest]:
    """``num_requests`` random prompts, lengths uniform in ``prompt_len_range``."""
    return [BenchRequest(_random_ids(rng, rng.randint(*prompt_len_range), vocab_size,
                                     exclude), output_len) for _ in range(num_requests)]


def poisson_offsets(n: int, rate: float, rng: random.Random) -> list[float]:
    """Send times (s after the start) of ``n`` requests arriving as a Poisson process of
    ``rate`` requests/s: the first at 0, then exponential gaps of mean 1/rate. inf: all 0."""
    if not rate > 0:
        raise ValueError(f"rate={rate}: expected requests/s > 0 (inf: all at once)")
    offsets, t = [], 0.0
    for i in range(n):
        if i and math.isfinite(rate):
            t += rng.expovariate(rate)
        offsets.append(t)
    return offsets


# ---- one request, one rate ----------------------------------------------------------------
@dataclass
class RequestRecord:
    prompt_len: int
    max_tokens: int
    sent_at: float = 0.0                # s after the rate's start
    ok: bool = False
    error: str | None = None
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    num_chunks: int = 0                 # chunks that carried a choice (a token)
    output_tokens: int | None = None    # usage.completion_tokens
    finish_reason: str | None = None


async def stream_one(client, url: str, model: str, req: BenchRequest,
                     rec: RequestRecord) -> RequestRecord:
    """POST one streaming completion and time its chunks into ``rec``."""
    body = {"model": model, "prompt": req.prompt_token_ids, "max_tokens": req.max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"
                return rec
            decoder = SSEDecoder()
            async for chunk in resp.aiter_bytes():
                now = time.perf_counter()
                for data in decoder.feed(chunk):
                    if data == "[DONE]":
                        rec.e2e_s = now - t0
                        continue
                    obj = json.loads(data)
                    if "error" in obj:
                        rec.error = f"error event: {obj['error']}"
                    for choice in obj.get("choices") or []:
                        rec.num_chunks += 1
                        if last is None:
                            rec.ttft_s = now - t0
                        else:
                            rec.itls_s.append(now - last)
                        last = now
                        rec.finish_reason = choice.get("finish_reason") or rec.finish_reason
                    if obj.get("usage"):
                        rec.output_tokens = obj["usage"]["completion_tokens"]
    except Exception as e:  # noqa: BLE001  (a failed request is a result, not a crash)
        rec.error = f"{type(e).__name__}: {e}"
        return rec
    problems = []
    if rec.e2e_s is None:
        problems.append("no data: [DONE]")
    if rec.output_tokens != req.max_tokens:
        problems.append(f"usage.completion_tokens={rec.output_tokens}, expected "
                        f"{req.max_tokens}")
    if rec.finish_reason != "length":
        problems.append(f"finish_reason={rec.finish_reason!r}, expected 'length'")
    if problems and rec.error is None:
        rec.error = "; ".join(problems)
    rec.ok = rec.error is None
    return rec


def parse_metrics(text: str) -> dict[str, float]:
    """{metric name: value} of the unlabelled-or-one-label samples of Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([\w:]+)(?:\{[^}]*\})?\s+(\S+)$", line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


async def _poll_metrics(client, url: str, period: float, samples: list[dict]) -> None:
    while True:
        try:
            samples.append(parse_metrics((await client.get(url + "/metrics")).text))
        except Exception:  # noqa: BLE001  (a missed sample is not an error)
            pass
        await asyncio.sleep(period)


def _stats(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": sum(vals) / len(vals) if vals else None, "p50": percentile(vals, 50),
            "p99": percentile(vals, 99), "max": max(vals) if vals else None, "n": len(vals)}


def summarize_rate(rate: float, records: list[RequestRecord], duration: float,
                   samples: list[dict], before: dict, after: dict) -> dict:
    """The numbers of one rate, as vLLM's benchmark_serving prints them."""
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]

    def grew(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    def seen(name, how):
        vals = [s[name] for s in samples if name in s]
        return how(vals) if vals else None

    return {
        "request_rate": "inf" if math.isinf(rate) else rate,
        "num_requests": len(records), "completed": len(ok), "failed": len(records) - len(ok),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_output_tokens": out_tokens,
        "total_prompt_tokens": sum(r.prompt_len for r in ok),
        "ttft_s": _stats(r.ttft_s for r in ok),
        "itl_s": _stats(x for r in ok for x in r.itls_s),
        "tpot_s": _stats(tpot),
        "e2e_s": _stats(r.e2e_s for r in ok),
        # client side: requests sent and not yet answered; the mean is Little's law,
        # L = (sum of the requests' time in the system) / duration
        "max_in_flight": max((sum(q.sent_at <= r.sent_at < q.sent_at + q.e2e_s for q in ok)
                              for r in ok), default=0),
        "mean_in_flight": sum(r.e2e_s for r in ok) / duration,
        "server": {
            "max_running": seen("vllm:num_requests_running", max),
            "mean_running": seen("vllm:num_requests_running", lambda v: sum(v) / len(v)),
            "max_waiting": seen("vllm:num_requests_waiting", max),
            "max_kv_cache_usage": seen("vllm:kv_cache_usage_perc", max),
            "metric_samples": len(samples),
            "preemptions": grew("vllm:num_preemptions_total"),
            "prefix_cache_hit_tokens": grew("vllm:prefix_cache_hits_total"),
            "generation_tokens": grew("vllm:generation_tokens_total"),
        },
    }


async def _run_rate(url: str, model: str, reqs: list[BenchRequest], rate: float,
                    rng: random.Random, cfg: ServingConfig) -> tuple[list[RequestRecord], dict]:
    import httpx

    offsets = poisson_offsets(len(reqs), rate, rng)
    limits = httpx.Limits(max_connections=len(reqs) + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=cfg.request_timeout_s, limits=limits) as client:
        before = parse_metrics((await client.get(url + "/metrics")).text)
        samples: list[dict] = []
        poller = asyncio.ensure_future(_poll_metrics(client, url, cfg.metrics_poll_s, samples))
        start = time.perf_counter()

        async def send(req, offset):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            rec = RequestRecord(req.prompt_len, req.max_tokens,
                                sent_at=time.perf_counter() - start)
            return await stream_one(client, url + "/v1/completions", model, req, rec)

        records = await asyncio.gather(*(send(r, o) for r, o in zip(reqs, offsets)))
        duration = time.perf_counter() - start
        poller.cancel()
        after = parse_metrics((await client.get(url + "/metrics")).text)
    return list(records), summarize_rate(rate, records, duration, samples, before, after)


def run_rate(url: str, model: str, reqs: list[BenchRequest], rate: float,
             rng: random.Random, cfg: ServingConfig | None = None):
    """Send ``reqs`` to the server at ``url`` (serving ``model``) as Poisson arrivals of
    ``rate`` requests/s; return (per-request records, the rate's summary)."""
    return _in_fresh_loop(_run_rate(url, model, reqs, rate, rng, cfg or ServingConfig()))


def _in_fresh_loop(coro):
    """Run ``coro`` to the end; in a thread of its own when this thread already runs an
    event loop (Jupyter's), so the same call works in a script and in a notebook."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---- the benchmark -----------------------------------------------------------------------
def check_config(cfg: ServingConfig) -> None:
    """ValueError naming the field, its value and what is expected."""
    lo, hi = cfg.prompt_len_range
    checks = [
        ("rates", cfg.rates, bool(cfg.rates) and all(r > 0 for r in cfg.rates),
         "requests/s > 0 (inf: all at once), at least one"),
        ("num_requests", cfg.num_requests, cfg.num_requests >= 1, "an int >= 1"),
        ("prompt_len_range", cfg.prompt_len_range, 1 <= lo <= hi, "1 <= min <= max"),
        ("output_len", cfg.output_len, cfg.output_len >= 1, "an int >= 1"),
        ("max_model_len", cfg.max_model_len, hi + cfg.output_len <= cfg.max_model_len,
         f">= the longest prompt + output_len = {hi + cfg.output_len}"),
        ("warmup_requests", cfg.warmup_requests, cfg.warmup_requests >= 0, "an int >= 0"),
        ("max_num_batched_tokens", cfg.max_num_batched_tokens,
         cfg.max_num_batched_tokens is None or cfg.max_num_batched_tokens >= cfg.max_num_seqs,
         f"None or an int >= max_num_seqs={cfg.max_num_seqs}"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"ServingConfig.{name}={value!r}: expected {expected}")


def server_args(cfg: ServingConfig) -> list[str]:
    """The engine flags of the `folo-edu serve` the sweep starts."""
    args = ["--max-num-seqs", str(cfg.max_num_seqs), "--seed", str(cfg.seed),
            "--attention-backend", cfg.attention_backend]
    if cfg.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(cfg.max_num_batched_tokens)]
    return args


def run_serving(cfg: ServingConfig, server=None) -> dict:
    """Warm up, then every rate of ``cfg.rates`` in order, against ``server`` (a started
    ServerProcess) or a new one (started here, stopped at the end). Returns the result;
    RuntimeError after it (with the records) if any request failed."""
    from folo_edu.entrypoints.server_process import ServerProcess
    from folo_edu.models.loader import resolve_model_path

    check_config(cfg)
    t_start = time.perf_counter()
    path = str(resolve_model_path(cfg.model))
    own = server is None
    if own:
        server = ServerProcess(path, threads=cfg.threads, max_model_len=cfg.max_model_len,
                               extra_args=server_args(cfg),
                               startup_timeout=cfg.startup_timeout_s)
        print(f"starting folo-edu serve on {Path(path).name} ...", flush=True)
        server.start()
    try:
        return _sweep(cfg, server, path, t_start)
    finally:
        if own:
            server.stop()


def vocabulary(path: str) -> tuple[int, set[int]]:
    """(vocab_size, the special token ids) of the checkpoint folder at ``path``, from
    config.json and tokenizer.json's added tokens (quick: no transformers import);
    through transformers when config.json has no vocab_size."""
    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config) if "vocab_size" not in config else config
    if "vocab_size" not in config:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(path)
        return hf_config.vocab_size, special_token_ids_of(path, hf_config)
    special = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = config.get(name)
        special.update(value if isinstance(value, list) else [value] if isinstance(
            value, int) else [])
    tok = folder / "tokenizer.json"
    if tok.is_file():
        special.update(t["id"] for t in json.loads(tok.read_text()).get("added_tokens", []))
    return config["vocab_size"], special


def _sweep(cfg: ServingConfig, server, path: str, t_start: float) -> dict:
    import httpx

    vocab_size, exclude = vocabulary(path)
    rng = random.Random(cfg.seed)
    model = httpx.get(server.base_url + "/models", timeout=30).json()["data"][0]["id"]
    device = resolve_bench_device("auto")
    machine = machine_info(device)
    machine["torch_threads"] = cfg.threads  # the server's (the model runs there)
    result = {"benchmark": "serving", "timestamp": timestamp(), "source": source_version(),
              "machine": machine, "load_average_at_start": load_average(),
              "config": asdict(cfg), "model": {"name": Path(path).name, "served_as": model},
              "server_startup_s": getattr(server, "startup_s", None), "method": METHOD}
    if cfg.warmup_requests:
        warm = serving_workload(vocab_size, exclude, cfg.warmup_requests,
                                (8, 8), 4, random.Random(cfg.seed + 1))
        recs, _ = run_rate(server.url, model, warm, math.inf, random.Random(0), cfg)
        if not all(r.ok for r in recs):
            raise RuntimeError(f"warm-up failed: {[r.error for r in recs if not r.ok]}")
    rows, failures = [], []
    for rate in cfg.rates:
        reqs = serving_workload(vocab_size, exclude, cfg.num_requests,
                                cfg.prompt_len_range, cfg.output_len, rng)
        load_before = load_average()
        records, summary = run_rate(server.url, model, reqs, rate, rng, cfg)
        summary.update(load_average_before=load_before, load_average_after=load_average(),
                       requests=[asdict(r) for r in records])
        rows.append(summary)
        failures += [f"rate {rate}: request {i}: {r.error}" for i, r in enumerate(records)
                     if not r.ok]
        print(f"  rate {summary['request_rate']:>5} req/s: {summary['completed']}/"
              f"{len(records)} done in {summary['duration_s']:.1f} s, TTFT p50 "
              f"{_ms(summary['ttft_s']['p50'])} ms, ITL p50 {_ms(summary['itl_s']['p50'])} "
              f"ms, load {load_before}", flush=True)
    result.update(rates=rows, failures=failures, load_average_at_end=load_average(),
                  bench_wall_s=time.perf_counter() - t_start)
    return result


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


METHOD = {
    "arrivals": "per rate, num_requests requests are sent as a Poisson process: the first "
                "at once, then exponential gaps of mean 1/rate (random.Random(seed)); "
                "'inf' sends all at once. The rates run one after another on one server",
    "requests": "POST /v1/completions, prompt = random token ids (special tokens "
                "excluded, new ones for every request of every rate, so prefix caching "
                "never hits), temperature 0, ignore_eos, max_tokens = output_len, "
                "stream with include_usage; httpx.AsyncClient, one connection each",
    "ttft": "from sending the request to the first SSE chunk with a choice (a token)",
    "itl": "gaps between consecutive chunks with a choice, over all requests (p50/p99 by "
           "linear interpolation)",
    "tpot": "(e2e - ttft) / (output tokens - 1), one value per request",
    "e2e": "from sending the request to data: [DONE]",
    "throughput": "completed requests (and their usage.completion_tokens) / the time from "
                  "the first send to the last [DONE]",
    "in_flight": "client side: max_in_flight = most requests sent and not yet answered "
                 "at any send; mean_in_flight = sum of e2e / duration (Little's law)",
    "server": "max/mean of vllm:num_requests_running and _waiting sampled from /metrics "
              "every metrics_poll_s while the rate ran; preemptions and prefix-cache hits "
              "counted over the rate",
    "completeness": "a request counts as completed only with data: [DONE], finish_reason "
                    "'length' and usage.completion_tokens == max_tokens",
    "threads": "machine.torch_threads is the server's (OMP_NUM_THREADS of the child)",
}


def print_serving(res: dict) -> None:
    m = res["machine"]
    c = res["config"]
    print(f"\nserving: {res['model']['name']}, {c['num_requests']} requests per rate, "
          f"prompts {c['prompt_len_range'][0]}-{c['prompt_len_range'][1]} tokens, "
          f"{c['output_len']} output tokens; {m['device']} ({m['cpu_model']}, "
          f"{m['torch_threads']} server threads)")
    rows = [[r["request_rate"], f"{r['completed']}/{r['num_requests']}",
             r["request_throughput"], r["output_throughput"],
             _ms(r["ttft_s"]["p50"]), _ms(r["ttft_s"]["p99"]), _ms(r["itl_s"]["p50"]),
             _ms(r["itl_s"]["p99"]), _ms(r["tpot_s"]["p50"]), r["server"]["max_running"],
             r["server"]["max_waiting"]] for r in res["rates"]]
    print(table(["rate req/s", "done", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
                 "ITL p50 ms", "ITL p99 ms", "TPOT p50 ms", "max running", "max waiting"],
                rows))
    print(f"load average {res['load_average_at_start']} -> {res['load_average_at_end']}, "
          f"{res['bench_wall_s']:.0f} s in all")


def run(cfg: ServingConfig, server=None) -> dict:
    """Run the serving benchmark, print its table, save its JSON; return the result.
    RuntimeError (after saving) if any request failed or came back incomplete."""
    res = run_serving(cfg, server)
    print_serving(res)
    if cfg.output != "-":
        print(f"saved {save_json(cfg.output or cfg.default_output(), res)}")
    if res["failures"]:
        raise RuntimeError(f"{len(res['failures'])} request(s) failed: "
                           + "; ".join(res["failures"][:5]))
    return res
