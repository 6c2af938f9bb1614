"""The Markdown summary of a result document, and writing a run's files (JSON, Markdown, plots)."""
from __future__ import annotations

import json
from pathlib import Path

from bench.result import check, load_label


def _ms(m: dict, name: str) -> str:
    vals = [m.get(f"{name}_{s}") for s in ("p50", "p90", "p99", "max")]
    return "-" if any(v is None for v in vals) else " / ".join(f"{v * 1e3:.1f}" for v in vals)


def _s(m: dict, name: str) -> str:
    vals = [m.get(f"{name}_{s}") for s in ("p50", "p90", "p99", "max")]
    return "-" if any(v is None for v in vals) else " / ".join(f"{v:.2f}" for v in vals)


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _energy_cell(level: dict) -> str:
    """The median repeat's energy, one entry per device; a reason where not measured."""
    cells = []
    for device, block in level["repeats"][len(level["repeats"]) // 2]["energy"].items():
        if not block.get("measured"):
            continue
        mark = "" if block["reliable"] else " (unreliable)"
        cells.append(f"{device} {block['kwh_per_mtok']:.4f}{mark}")
    return ", ".join(cells) or "not measured"


def _errors(level: dict) -> str:
    total: dict[str, int] = {}
    for rep in level["repeats"]:
        for kind, n in rep["summary"]["errors"].items():
            total[kind] = total.get(kind, 0) + n
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "0"


def markdown(doc: dict) -> str:
    check(doc)
    st, git, mach = doc["settings"], doc["git"], doc["machine"]
    title = f"bench {doc['kind']}: {st.get('model')}"
    if doc["kind"] == "serve":
        title += f" at {st['base_url']}"
    lines = [
        f"# {title}", "",
        f"- when: {doc['created']}; git {str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}",
        f"- machine: {mach['cpu']}, {mach['cpus']} CPUs, GPUs: {', '.join(mach['gpus']) or 'none'}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in mach.get('load_average') or [])}",
        f"- workload: input {st['input_len']} (mean {st['mean_input_len']:.0f}), output {st['output_len']} "
        f"(mean {st['mean_output_len']:.0f}) tokens; {st.get('num_requests') if st.get('duration') is None else str(st['duration']) + ' s'}"
        f" per level, {st['warmup']} warm-up, {st['repeats']} repeat(s), seed {st['seed']}",
    ]
    obj = st.get("objective") or {}
    if any(v is not None for v in obj.values()):
        lines.append("- goodput objective: " + ", ".join(f"{k} <= {v * 1e3:.0f} ms" for k, v in obj.items() if v is not None))
    lines += ["", "Medians over repeats; latencies p50 / p90 / p99 / max; spread = (max - min) / median of output tok/s.", "",
              "| load | ok | errors | req/s | output tok/s | spread | goodput req/s | TTFT ms | ITL ms | TPOT ms "
              "| E2E s | kWh / M output tokens |",
              "|---|---:|---|---:|---:|---:|---:|---|---|---|---|---|"]
    for level in doc["levels"]:
        m, sp = level["median"], level["spread"]
        ok = sum(r["summary"]["completed"] for r in level["repeats"])
        lines.append(
            f"| {load_label(level['load'])} | {ok} | {_errors(level)} | {_num(m['req_s'])} | {_num(m['output_tok_s'], '.1f')} "
            f"| {_num(None if sp['output_tok_s'] is None else 100 * sp['output_tok_s'], '.1f')}% "
            f"| {_num(m.get('goodput_req_s'))} | {_ms(m, 'ttft')} | {_ms(m, 'itl')} | {_ms(m, 'tpot')} "
            f"| {_s(m, 'e2e')} | {_energy_cell(level)} |")
    lines += ["", "Energy counters:"]
    for device, what in doc.get("energy_counters", {}).items():
        idle = doc.get("idle_power_w", {}).get(device)
        lines.append(f"- {device}: {what}" + (f"; idle {idle:.1f} W" if idle is not None else ""))
    for level in doc["levels"]:
        for device, block in level["repeats"][0]["energy"].items():
            if block.get("measured") and not block["reliable"]:
                lines.append(f"- {load_label(level['load'])} {device} unreliable: {'; '.join(block['unreliable_because'])}")
    if doc.get("left"):
        lines += ["", "Not measured here: " + "; ".join(doc["left"]) + "."]
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict, out_dir: Path) -> list[Path]:
    """result.json, summary.md and the plots; returns the files written."""
    from bench.plots import write_plots  # matplotlib is imported only when files are written

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "result.json", out_dir / "summary.md"]
    written[0].write_text(json.dumps(doc, indent=1))
    written[1].write_text(markdown(doc))
    return written + write_plots(doc, out_dir)
