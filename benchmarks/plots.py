"""The ``--plot`` PNG of ``netmesh bench``: what a person wants to see in one picture.

1. throughput vs peers: for each rate figure, netmesh's median beside each peer's
   (log scale, min-max as error bars), each peer bar labelled with netmesh/peer;
2. latency CDFs: acknowledgement latency per 500 events (netmesh quorum f3, Redis
   WAIT 1, JetStream R3), replica apply latency at 10k events/s, write unavailability
   across leader kills;
3. failover timeline: acknowledged events/s over time across one leader kill (the
   median trial), SIGKILL at t = 0;
4. RSS vs log size: the leader's resident memory as its log grows (catch-up suite).

Needs matplotlib (the ``bench`` extra); :func:`plot` returns False without it.
"""

from __future__ import annotations

from typing import Any

COLORS = ["#3b7dd8", "#d8833b", "#4fa35a", "#b34fb3", "#8c6d31", "#6b6ecf"]


def plot(results: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figures = results.get("figures", {})
    samples = results.get("samples", {})
    fig, axes = plt.subplots(1, 4, figsize=(24, 6), gridspec_kw={"width_ratios": [2.2, 1, 1, 1]})
    _throughput(axes[0], figures)
    _cdfs(axes[1], samples)
    _timeline(axes[2], samples.get("failover_timeline"))
    _rss(axes[3], samples.get("rss_vs_log"))
    quick = " --quick" if results.get("quick") else ""
    fig.suptitle(
        f"netmesh bench{quick} {results.get('date', '')} {str(results.get('commit') or '')[:10]}"
        f" | {results.get('cpu_model', '')} x{results.get('cpu_count')}"
        f" | load {results.get('load_before')} -> {results.get('load_after')} (shared machine)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _throughput(ax: Any, figures: dict[str, Any], unit: str = "events/s") -> None:
    rates = [(k, f) for k, f in figures.items() if f.get("unit", "").startswith(unit)]
    x = 0.0
    ticks, names = [], []
    for key, f in rates:
        series = [("netmesh", f["netmesh"], None)] + [
            (name, p, p.get("ratio")) for name, p in f.get("peers", {}).items()
        ]
        start = x
        for i, (name, s, ratio) in enumerate(series):
            med = s["median"]
            if med != med:  # NaN
                continue
            err = [[med - s["min"]], [s["max"] - med]]
            ax.bar(x, med, width=0.8, color=COLORS[i % len(COLORS)], yerr=err, capsize=2)
            text = name if ratio is None else f"{name}\n{ratio:.2f}x"
            top = s["max"] if s["max"] == s["max"] else med
            ax.text(x, top * 1.08, text, ha="center", va="bottom", fontsize=6, rotation=90)
            x += 1
        ticks.append((start + x - 1) / 2)
        names.append(key.replace("_eps", ""))
        x += 1.0
    ax.set_yscale("log")
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel(f"{unit} (median, min-max bars)")
    ax.set_title("throughput vs peers, same run (label: netmesh / peer)", fontsize=9)


def _cdf(ax: Any, xs: list[float], label: str, color: str) -> None:
    if not xs:
        return
    ys = sorted(xs)
    n = len(ys)
    ax.step(
        ys, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})", color=color
    )


def _cdfs(ax: Any, samples: dict[str, Any]) -> None:
    i = 0
    for name, xs in samples.get("ack_latency_ms_per_500", {}).items():
        _cdf(ax, xs, f"ack per 500: {name}", COLORS[i % len(COLORS)])
        i += 1
    _cdf(ax, samples.get("replica_latency_ms", []), "replica apply @10k/s", COLORS[i % 6])
    _cdf(
        ax,
        samples.get("replica_latency_ms_redis", []),
        "Redis replica XREAD @10k/s",
        COLORS[(i + 3) % 6],
    )
    _cdf(ax, samples.get("failover_ms", []), "write unavailability", COLORS[(i + 1) % 6])
    _cdf(
        ax,
        samples.get("failover_ms_jetstream_r3", []),
        "write unavailability: JetStream R3",
        COLORS[(i + 2) % 6],
    )
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction")
    ax.set_title("latency CDFs", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower right")


def _rss(ax: Any, rss: dict[str, Any] | None) -> None:
    ax.set_title("node RSS vs log size (leader, in memory)", fontsize=9)
    if not rss or not rss.get("points"):
        ax.text(0.5, 0.5, "no catch-up run", ha="center", transform=ax.transAxes)
        return
    xs = [p[0] for p in rss["points"]]
    ys = [p[1] / 2**20 for p in rss["points"]]
    ax.plot(xs, ys, marker=".", color=COLORS[0], label="RSS")
    ax.set_xlabel("events held (1 KiB payloads)")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)


def _timeline(ax: Any, tl: dict[str, Any] | None, bin_s: float = 0.05) -> None:
    ax.set_title("failover timeline: acknowledged events/s, SIGKILL at 0", fontsize=9)
    if not tl or not tl.get("acks"):
        ax.text(0.5, 0.5, "no failover run", ha="center", transform=ax.transAxes)
        return
    acks = tl["acks"]
    t_lo, t_hi = acks[0][0], acks[-1][0]
    nbins = max(1, int((t_hi - t_lo) / bin_s) + 1)
    counts = [0] * nbins
    prev = 0
    for t, total in acks:
        counts[min(nbins - 1, int((t - t_lo) / bin_s))] += total - prev
        prev = total
    xs = [t_lo + (i + 0.5) * bin_s for i in range(nbins)]
    ax.step(xs, [c / bin_s for c in counts], where="mid", color=COLORS[0])
    ax.axvline(0, color="red", linestyle="--", label="SIGKILL leader")
    ax.set_xlabel("s")
    ax.set_ylabel(f"acknowledged events/s ({int(bin_s * 1000)} ms bins)")
    ax.legend(fontsize=7)


def plot_storage(results: dict[str, Any], path: str) -> bool:
    """``netmesh bench storage --plot``: RSS vs persisted log size per system (the
    stated bound as a line), and the storage rate figures beside their peers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(22, 6.5), gridspec_kw={"width_ratios": [1, 1.4, 0.9]})
    _rss_curves(axes[0], results.get("samples", {}).get("rss_vs_log_disk"))
    _throughput(axes[1], results.get("figures", {}))
    _throughput(axes[2], results.get("figures", {}), "MB/s")
    quick = " --quick" if results.get("quick") else ""
    fig.suptitle(
        f"netmesh bench storage{quick} {results.get('date', '')} "
        f"{str(results.get('commit') or '')[:10]} | {results.get('cpu_model', '')} "
        f"x{results.get('cpu_count')} | load {results.get('load_before')} -> "
        f"{results.get('load_after')} (shared machine)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _rss_curves(ax: Any, rss: dict[str, Any] | None) -> None:
    ax.set_title("RSS vs persisted log size (1 KiB events)", fontsize=9)
    if not rss or not rss.get("curves"):
        ax.text(0.5, 0.5, "no RSS run", ha="center", transform=ax.transAxes)
        return
    labels = {
        "netmesh": "netmesh node (data_dir)",
        "redis_everysec": "redis-server (AOF everysec)",
        "jetstream_r1": "nats-server (JetStream R1 file)",
    }
    for i, (name, points) in enumerate(rss["curves"].items()):
        xs = [p[0] / 2**30 for p in points]
        ax.plot(
            xs,
            [p[1] / 2**20 for p in points],
            marker="o",
            color=COLORS[i % 6],
            label=labels.get(name, name),
        )
        if name == "netmesh":
            ax.plot(
                xs,
                [p[2] / 2**20 for p in points],
                linestyle=":",
                color=COLORS[i % 6],
                label="netmesh node peak RSS (VmHWM)",
            )
    if rss.get("bound_bytes"):
        ax.axhline(
            rss["bound_bytes"] / 2**20,
            color="red",
            linestyle="--",
            label="stated bound at the largest size",
        )
    ax.set_xlabel("log size, GiB of payload")
    ax.set_ylabel("RSS, MiB (log scale)")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.legend(fontsize=7)
