"""`llmaas bench` end to end against a tiny OpenAI-compatible streaming server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.result import check
from gateway.cli import build_parser, main
from tests.bench.fake_openai import fake_server

QUIET = ["--no-progress", "--idle-seconds", "0"]


def _serve(port: int, out: Path, *extra: str) -> int:
    return main(["bench", "serve", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
                 "--out", str(out), *QUIET, *extra])


def test_parser_wiring() -> None:
    args = build_parser().parse_args(["bench", "serve", "--base-url", "http://h/v1", "--model", "m", "--rate", "2,5"])
    assert (args.rate, args.concurrency, args.input_len, args.output_len) == ("2,5", None, "64", "128")
    with pytest.raises(SystemExit):  # a level is a concurrency or a rate, not both
        build_parser().parse_args(["bench", "serve", "--base-url", "u", "--model", "m", "--rate", "1",
                                   "--concurrency", "2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "engine", "--duration", "3"])  # the engine counts requests
    assert build_parser().parse_args(["bench", "compare", "a.json", "b.json"]).results == [Path("a.json"), Path("b.json")]


def test_serve_fixed_concurrency_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(api_key="k") as server:
        rc = _serve(server.port, tmp_path / "a", "--api-key", "k", "--concurrency", "1,3", "--num-requests", "6",
                    "--warmup", "2", "--repeats", "2", "--output-len", "uniform:4-8", "--input-len", "chat",
                    "--slo-ttft-ms", "10000")
    assert rc == 0
    # 2 loads x 2 repeats x (2 warm-up + 6 measured)
    assert len(server.requests) == 32
    assert all(r["stream"] and 4 <= r["max_tokens"] <= 8 for r in server.requests)
    doc = json.loads((tmp_path / "a" / "result.json").read_text())
    check(doc)
    assert doc["settings"]["api_key"] == "set"  # never the key itself
    assert [lv["load"] for lv in doc["levels"]] == [{"concurrency": 1}, {"concurrency": 3}]
    for level in doc["levels"]:
        assert len(level["repeats"]) == 2
        for rep in level["repeats"]:
            assert rep["summary"]["completed"] == 6 and rep["summary"]["errors"] == {}
            assert rep["metrics"]["goodput_req_s"] == pytest.approx(rep["metrics"]["req_s"])
            assert rep["metrics"]["ttft_max"] >= rep["metrics"]["ttft_p99"] >= rep["metrics"]["ttft_p50"] > 0
            assert rep["energy"]["gpu"] == {"measured": False, "reason": doc["energy_counters"]["gpu"]}
        assert level["spread"]["output_tok_s"] >= 0
    # Both repeats drew the same lengths: the seed fixes the workload.
    tokens = [r["summary"]["output_throughput"] * r["summary"]["duration"] for r in doc["levels"][0]["repeats"]]
    assert tokens[0] == pytest.approx(tokens[1])
    assert "| c=3 | 12 | 0 |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"summary.md", "latency_cdf.png", "throughput_ttft.png",
                                                            "energy_per_token.png"}


def test_serve_poisson_by_duration_and_errors_by_kind(tmp_path: Path) -> None:
    with fake_server() as server:
        rc = _serve(server.port, tmp_path / "b", "--rate", "40", "--duration", "0.5", "--output-len", "3",
                    "--warmup", "0")
        n = len(server.requests)
        bad = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{server.port}/v1", "--model", "fail-503",
                    "--out", str(tmp_path / "c"), *QUIET, "--concurrency", "2", "--num-requests", "3", "--warmup", "0"])
    assert rc == 0
    assert 5 <= n <= 45  # about 40/s for 0.5 s, seeded
    doc = json.loads((tmp_path / "b" / "result.json").read_text())
    assert doc["levels"][0]["load"] == {"rate": 40.0}
    assert doc["levels"][0]["repeats"][0]["summary"]["completed"] == n
    assert bad == 1
    failed = json.loads((tmp_path / "c" / "result.json").read_text())["levels"][0]
    assert failed["repeats"][0]["summary"]["errors"] == {"http_503": 3}
    assert failed["median"]["error_rate"] == 1.0 and failed["median"]["ttft_p50"] is None


def test_bad_arguments_exit_2_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve(1, tmp_path, "--input-len", "normal:3") == 2
    assert "unknown length distribution" in capsys.readouterr().err
    assert _serve(1, tmp_path, "--concurrency", "0") == 2
    assert main(["bench", "compare", str(tmp_path / "missing.json"), str(tmp_path / "x.json")]) == 2


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(token_delay=0.0005) as fast, fake_server(token_delay=0.02) as slow:
        assert _serve(fast.port, tmp_path / "fast", "--concurrency", "2", "--num-requests", "4", "--output-len", "8") == 0
        assert _serve(slow.port, tmp_path / "slow", "--concurrency", "2", "--num-requests", "4", "--output-len", "8") == 0
    capsys.readouterr()
    out = tmp_path / "cmp.md"
    assert main(["bench", "compare", str(tmp_path / "fast"), str(tmp_path / "slow" / "result.json"),
                 "--metrics", "output_tok_s,tpot_p50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip() == out.read_text().strip()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| output") or line.startswith("| tpot")}
    assert rows["output_tok_s"].rstrip().endswith("| worse |")
    assert rows["tpot_p50"].rstrip().endswith("| worse |")


def test_serve_fixed_concurrency_for_a_duration(tmp_path: Path) -> None:
    with fake_server(token_delay=0.002) as server:
        assert _serve(server.port, tmp_path / "d", "--concurrency", "2", "--duration", "0.3", "--output-len", "5",
                      "--warmup", "0") == 0
        sent = len(server.requests)
    [rep] = json.loads((tmp_path / "d" / "result.json").read_text())["levels"][0]["repeats"]
    assert rep["summary"]["completed"] == sent
    # Each request takes >= 10 ms, two at a time, for 0.3 s: at most ~60, and well more than 2.
    assert 4 <= sent <= 62
    assert rep["summary"]["duration"] >= 0.3
