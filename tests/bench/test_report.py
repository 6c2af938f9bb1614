"""The result document's schema, its Markdown summary, the PNG plots and the progress bar."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from bench.progress import Progress
from bench.report import markdown, write_outputs
from bench.result import SCHEMA, check
from tests.bench.docs import doc


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_schema_check_accepts_ours_and_names_what_is_wrong() -> None:
    good = doc({1: [10.0], 8: [50.0]})
    check(good)
    assert good["schema"] == SCHEMA
    rep = good["levels"][0]["repeats"][0]
    assert set(rep) == {"metrics", "summary", "client_cpu", "energy", "samples"}
    assert {"ttft_p50", "ttft_max", "itl_p99", "tpot_p90", "e2e_max", "goodput_req_s", "kwh_per_mtok_cpu"} <= set(rep["metrics"])
    for key in ("git", "levels"):
        broken = dict(good)
        del broken[key]
        with pytest.raises(ValueError, match=key):
            check(broken)
    broken = json.loads(json.dumps(good))
    broken["levels"][0]["repeats"] = []
    with pytest.raises(ValueError, match="repeat"):
        check(broken)


def test_markdown_summary_rows() -> None:
    text = markdown(doc({1: [10.0, 12.0], 8: [50.0, 50.0]}))
    assert "| c=1 | 8 | 0 |" in text  # two repeats of four requests
    assert "| 11.0 | 18.2% |" in text  # median and spread of output tok/s
    assert "200.0 / 200.0 / 200.0 / 200.0" in text  # TTFT ms p50 / p90 / p99 / max
    assert "goodput objective: ttft <= 500 ms" in text
    assert "not measured" in text and "no counter in tests" in text


def test_markdown_marks_unreliable_energy() -> None:
    energy = {"gpu": {"measured": True, "kwh_per_mtok": 0.0123, "reliable": False,
                      "unreliable_because": ["window 1.00 s is shorter than 5 s"]}}
    text = markdown(doc({32: [100.0]}, energy=energy))
    assert "gpu 0.0123 (unreliable)" in text
    assert "c=32 gpu unreliable: window 1.00 s is shorter than 5 s" in text


def test_outputs_written_and_plots_are_real_images(tmp_path: Path) -> None:
    energy = {"gpu": {"measured": True, "kwh_per_mtok": 0.02, "reliable": True, "unreliable_because": []}}
    d = doc({1: [10.0], 8: [50.0], 32: [90.0]}, energy=energy)
    d["energy_counters"] = {"gpu": "gpu: fake"}
    files = write_outputs(d, tmp_path / "run")
    names = sorted(f.name for f in files)
    assert names == ["energy_per_token.png", "latency_cdf.png", "result.json", "summary.md", "throughput_ttft.png"]
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == d
    for f in files:
        if f.suffix == ".png":
            width, height = _png_size(f)
            assert width >= 600 and height >= 400
            assert f.stat().st_size > 10_000  # axes, lines and labels, not a blank canvas


def test_energy_plot_says_not_measured(tmp_path: Path) -> None:
    write_outputs(doc({1: [10.0]}), tmp_path)
    assert (tmp_path / "energy_per_token.png").stat().st_size > 5_000


def test_progress_bar_redraws_on_a_terminal_and_stays_quiet_in_logs() -> None:
    tty = io.StringIO()
    bar = Progress("c=8", 4, stream=tty, tty=True, min_interval=0.0)
    for ok in (True, False, True, True):
        bar.update(ok)
    bar.close()
    out = tty.getvalue()
    assert out.count("\r") == 5
    assert "[" + "#" * 30 + "] 4/4" in out and "errors 1" in out and out.endswith("\n")
    log = io.StringIO()
    bar = Progress("rate 2", None, stream=log, tty=False)
    bar.update(True)
    assert log.getvalue() == ""
    bar.close()
    assert log.getvalue().startswith("rate 2 1 done") and "\r" not in log.getvalue()


def test_provenance_hides_the_api_key() -> None:
    from bench.machine import git_state, redacted

    assert redacted(["llmaas", "bench", "serve", "--api-key", "sk-1", "--model", "m", "--api-key=sk-2"]) == [
        "llmaas", "bench", "serve", "--api-key", "***", "--model", "m", "--api-key=***"]
    state = git_state()
    assert state["commit"] is None or len(state["commit"]) == 40
