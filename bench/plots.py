"""PNG plots of a result document: latency CDFs, throughput and TTFT against load, energy per token
against batch size. matplotlib's Agg backend: no display needed."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from bench.result import load_label  # noqa: E402

AXIS = {"concurrency": "concurrent streams", "rate": "arrival rate (requests/s)", "batch": "batch size (sequences)"}


def _x(doc: dict) -> tuple[str, list[float]]:
    key = next(iter(doc["levels"][0]["load"]))
    return AXIS[key], [float(level["load"][key]) for level in doc["levels"]]


def _title(doc: dict) -> str:
    return f"{doc['kind']}: {doc['settings'].get('model')} ({doc['created'][:16]})"


def latency_cdfs(doc: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, [("ttft", "time to first token (ms)"), ("tpot", "time per output token (ms)"),
                                       ("e2e", "end-to-end latency (s)")]):
        scale = 1.0 if key == "e2e" else 1e3
        for level in doc["levels"]:
            values = sorted(v * scale for rep in level["repeats"] for v in rep["samples"][key])
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                        label=load_label(level["load"]))
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Latency CDFs, " + _title(doc))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def throughput_and_ttft(doc: dict, path: Path) -> None:
    xlabel, xs = _x(doc)
    meds = [level["median"] for level in doc["levels"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(xs, [m["output_tok_s"] for m in meds], "o-", label="output tokens/s")
    left.set_xlabel(xlabel)
    left.set_ylabel("output tokens/s")
    left.grid(alpha=0.3)
    for stat in ("p50", "p99"):
        ys = [m[f"ttft_{stat}"] for m in meds]
        pts = [(x, y * 1e3) for x, y in zip(xs, ys) if y is not None]
        if pts:
            right.plot(*zip(*pts), "o-", label=f"TTFT {stat}")
    right.set_xlabel(xlabel)
    right.set_ylabel("time to first token (ms)")
    right.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend()
    for ax in (left, right):
        if len(xs) > 1 and max(xs) / max(min(xs), 1e-9) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])  # the measured loads, not matplotlib's round numbers
        ax.minorticks_off()
    fig.suptitle("Throughput and TTFT against load, " + _title(doc))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def energy_per_token(doc: dict, path: Path) -> None:
    xlabel, xs = _x(doc)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for device in doc.get("energy_counters", {}):
        pts, unreliable = [], []
        for x, level in zip(xs, doc["levels"]):
            value = level["median"].get(f"kwh_per_mtok_{device}")
            if value is not None:
                pts.append((x, value))
                if not all(r["energy"][device].get("reliable") for r in level["repeats"]):
                    unreliable.append((x, value))
        if pts:
            ax.plot(*zip(*pts), "o-", label=device)
            plotted = True
        if unreliable:
            ax.plot(*zip(*unreliable), "x", color="red", markersize=10, label=f"{device}: unreliable")
    if plotted:
        ax.set_ylabel("kWh per million output tokens")
        ax.legend()
    else:
        reasons = [f"{d}: {r}" for d, r in doc.get("energy_counters", {}).items()]
        ax.text(0.5, 0.5, "energy not measured\n\n" + "\n".join(reasons), ha="center", va="center",
                wrap=True, fontsize=10, transform=ax.transAxes)
        ax.set_yticks([])
        ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.set_title("Energy per output token, " + _title(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(doc: dict, out_dir: Path) -> list[Path]:
    paths = [out_dir / "latency_cdf.png", out_dir / "throughput_ttft.png", out_dir / "energy_per_token.png"]
    latency_cdfs(doc, paths[0])
    throughput_and_ttft(doc, paths[1])
    energy_per_token(doc, paths[2])
    return paths
