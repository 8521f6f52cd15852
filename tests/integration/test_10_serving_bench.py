"""The serving benchmark and the SSE lab against a real ``folo-edu serve`` child process.

The server runs a tiny random float32 Llama with SmolLM2's vocabulary size and
tokenizer files (text, chat template), so it starts in seconds once Python has
imported torch and transformers. ``folo-edu bench --workload serving`` runs end to end
(it starts and stops its own server): 2 rates, a handful of requests, and its JSON must
hold every request, complete, with the right number of tokens. The lab's check streams
from a live server with the reference parser and refuses a parser with a bug.
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from folo_edu.entrypoints.server_process import ServerProcess  # noqa: E402

@pytest.fixture(scope="module")
def model_path(tiny_chat_model_dir):
    return tiny_chat_model_dir(torch.float32)


def test_bench_serving_end_to_end(model_path, tmp_path, capsys):
    from folo_edu.cli import main

    out = tmp_path / "serving.json"
    code = main(["bench", "--workload", "serving", "--model", model_path, "--rates", "8",
                 "inf", "--num-requests", "5", "--output-len", "7", "--max-model-len", "256",
                 "--threads", "1", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "TTFT p50 ms" in printed and f"saved {out}" in printed
    res = json.loads(out.read_text())
    assert res["benchmark"] == "serving" and res["failures"] == []
    for key in ("cpu_model", "usable_cores", "torch", "device"):
        assert key in res["machine"], key
    assert res["machine"]["torch_threads"] == 1
    assert len(res["load_average_at_start"]) == 3 and len(res["load_average_at_end"]) == 3
    assert [r["request_rate"] for r in res["rates"]] == [8.0, "inf"]
    prompts = set()
    for row in res["rates"]:
        assert row["num_requests"] == row["completed"] == 5 and row["failed"] == 0
        assert row["total_output_tokens"] == 5 * 7
        assert row["request_throughput"] > 0 and row["output_throughput"] > 0
        for key in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
            s = row[key]
            assert 0 < s["p50"] <= s["p99"] <= s["max"], (key, s)
        assert row["itl_s"]["n"] == 5 * 6  # 7 tokens: 6 gaps per request
        assert row["server"]["generation_tokens"] == 5 * 7
        assert row["server"]["prefix_cache_hit_tokens"] == 0  # every prompt is new
        assert len(row["load_average_before"]) == 3
        for r in row["requests"]:
            assert r["ok"] and r["error"] is None and r["finish_reason"] == "length"
            assert r["output_tokens"] == r["num_chunks"] == 7 and len(r["itls_s"]) == 6
            assert 32 <= r["prompt_len"] <= 128
            assert r["ttft_s"] <= r["e2e_s"]
            prompts.add((r["prompt_len"], r["sent_at"]))
    # Poisson arrivals at 8 req/s are spread out; "inf" sends all at once
    sent = [r["sent_at"] for r in res["rates"][0]["requests"]]
    assert sent == sorted(sent) and sent[-1] > 0.05
    assert max(r["sent_at"] for r in res["rates"][1]["requests"]) < 0.5


def test_bench_serving_flags_are_checked_before_the_server_starts(capsys):
    from folo_edu.cli import main

    assert main(["bench", "--workload", "serving", "--rates", "1", "0"]) == 2
    assert "--rates=[1.0, 0.0]" in capsys.readouterr().err
    assert main(["bench", "--workload", "serving", "--output-len", "0"]) == 2
    assert "--output-len=0" in capsys.readouterr().err
    assert main(["bench", "--workload", "serving", "--max-model-len", "100"]) == 2
    assert "--max-model-len=100: expected >= the longest prompt" in capsys.readouterr().err
    assert main(["bench", "--workload", "serving", "--max-num-batched-tokens", "16"]) == 2
    assert ("--max-num-batched-tokens=16: expected None or an int >= --max-num-seqs=64"
            in capsys.readouterr().err)


def test_bench_serving_never_overwrites_the_committed_results_by_default(monkeypatch):
    import re

    from folo_edu import cli

    seen = []
    monkeypatch.setattr("folo_edu.bench.serving.run", seen.append)
    assert cli.main(["bench", "--workload", "serving", "--device", "cpu"]) == 0
    assert re.fullmatch(r"benchmarks/results/serving_cpu-\d{8}-\d{6}\.json", seen[0].output)
    cfg = seen[0]  # the defaults the command passes on
    assert (cfg.rates, cfg.num_requests, cfg.output_len, cfg.threads) == ((0.25, 0.5, 1.0, 2.0),
                                                                          16, 32, 1)
    assert cli.main(["bench", "--workload", "serving", "--output", "x.json", "--rates", "3",
                     "inf", "--attention-backend", "sdpa"]) == 0
    assert (seen[1].output, seen[1].rates, seen[1].attention_backend) == (
        "x.json", (3.0, float("inf")), "sdpa")
    assert cfg.max_num_batched_tokens is None  # the server keeps its own budget
    assert "--max-num-batched-tokens" not in serving_args(cfg)
    assert cli.main(["bench", "--workload", "serving", "--max-num-batched-tokens", "128"]) == 0
    assert serving_args(seen[2])[-2:] == ["--max-num-batched-tokens", "128"]


def serving_args(cfg):
    from folo_edu.bench.serving import server_args

    return server_args(cfg)


def test_server_process_and_the_lab_check_against_it(model_path, capsys):
    """One live server (a server per test would double the startup under xdist)."""
    from folo_edu.labs import LabCheckFailed
    from folo_edu.labs import serving as lab

    with ServerProcess(model_path, served_model_name="tiny", threads=1,
                       max_model_len=256) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        models = httpx.get(server.base_url + "/models").json()["data"]
        assert [m["id"] for m in models] == ["tiny"]
        assert "Uvicorn running on http://127.0.0.1" in server.log()

        assert lab.check_sse_events(lab.reference_sse_events, server.base_url, "tiny") is True
        assert "join to the non-streamed text" in capsys.readouterr().out
        live = lab.stream_completion(lab.reference_sse_events, server.base_url, "tiny",
                                     "Hello", 5, read_sizes=(1,))
        assert live["usage"]["completion_tokens"] == len(
            [c for e in live["events"] for c in e["choices"]]) == 5
        assert live["finish_reasons"] == ["length"]
        pieces = [t for _, t in lab.stream_chat(lab.reference_sse_events, server.base_url,
                                                "tiny", [{"role": "user", "content": "Hi"}], 4)]
        assert pieces and all(isinstance(p, str) for p in pieces)

        def no_buffer(chunks):  # parses each read on its own
            for chunk in chunks:
                for part in chunk.decode(errors="replace").split("\n\n"):
                    if part.startswith("data: ") and part != "data: [DONE]":
                        yield json.loads(part[6:])

        with pytest.raises(LabCheckFailed, match="in the middle of an event"):
            lab.check_sse_events(no_buffer, server.base_url, "tiny")
    assert server.proc.returncode in (0, -15), server.log()
    assert "Finished server process" in server.log()
