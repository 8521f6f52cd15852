"""Serving: an OpenAI-compatible HTTP server over LLMEngine (``folo-edu serve``).

    async_engine.py  AsyncEngine: one thread owns and steps the engine; requests arrive
                     through a queue and their outputs go to per-request asyncio queues
    protocol.py      the OpenAI request bodies and how they become SamplingParams
    metrics.py       GET /metrics with vLLM's Prometheus names
    api_server.py    the FastAPI routes, SSE streaming, errors, serve()
    server_process.py  ServerProcess: folo-edu serve in a child process on a free port

FastAPI, uvicorn and prometheus-client are imported only here, so ``import folo_edu``
never needs them.
"""
