"""GET /metrics: Prometheus metrics with vLLM's names, so vLLM dashboards read them.

Two kinds of numbers:

- the engine's state (running/waiting requests, KV-cache usage, prefix-cache queries
  and hits, preemptions): read from ``LLMEngine.get_stats()`` at scrape time, on the
  engine thread, by a custom collector;
- what happened to requests (prompt and generated tokens, finished requests, TTFT,
  inter-token latency, end-to-end latency): counted on the engine
  thread after every step (``on_step``), into prometheus_client's thread-safe
  Counters and Histograms.

Names follow vLLM's V1 engine (vllm/v1/metrics/loggers.py): a Counter called
``vllm:prompt_tokens`` is exposed as ``vllm:prompt_tokens_total``. Each metric has the
label ``model_name``. The registry belongs to one server, so tests can run several.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from folo_edu.outputs import RequestOutput

# Bucket edges in seconds: fine where a small model on a CPU lands (ms to seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
               30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class _EngineStateCollector:
    """Gauges and counters copied from the latest ``get_stats()`` at scrape time."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.stats: dict | None = None

    def collect(self):
        s = self.stats
        if s is None:
            return
        label = [self.model_name]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(label, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(label, value)
            return c

        yield gauge("vllm:num_requests_running",
                    "Number of requests in model execution batches.", s["num_running"])
        yield gauge("vllm:num_requests_waiting",
                    "Number of requests waiting to be processed.", s["num_waiting"])
        total = s["kv_blocks_total"] or 1
        yield gauge("vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.", s["kv_blocks_used"] / total)
        yield counter("vllm:num_preemptions",
                      "Cumulative number of preemptions from the engine.",
                      s["num_preemptions"])
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.",
                      s["prefix_cache_queries"])
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.",
                      s["prefix_cache_hits"])


class ServerMetrics:
    """The server's registry; ``on_step`` is AsyncEngine's hook."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.state = _EngineStateCollector(model_name)
        r.register(self.state)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed (of finished requests).",
            labels, registry=r).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            labels, registry=r).labels(model_name)
        self._success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            labels + ["finished_reason"], registry=r)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            labels, buckets=TTFT_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            labels, buckets=ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels, buckets=E2E_BUCKETS, registry=r).labels(model_name)

    def on_step(self, deliveries: list[tuple[RequestOutput, int]], step_seconds: float) -> None:
        """Count one engine step's outputs (runs on the engine thread)."""
        for out, new_tokens in deliveries:
            self.generation_tokens.inc(new_tokens)
            if out.finished:
                self._finished(out)

    def _finished(self, out: RequestOutput) -> None:
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        for c in out.outputs:
            if c.finish_reason in ("stop", "length", "abort"):
                self._success.labels(self.model_name, c.finish_reason).inc()
        m = out.metrics
        if m is None:
            return
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        for gap in m.itls:
            self.itl.observe(gap)
        end = m.finished_time or m.last_token_time
        if end is not None:
            self.e2e.observe(end - m.arrival_time)

    def render(self, stats: dict) -> bytes:
        """The text exposition format, with the engine state of ``stats``."""
        self.state.stats = stats
        return generate_latest(self.registry)
