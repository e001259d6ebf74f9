"""Reports: ``report.md`` with the claims table and PNG plots beside it."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v) -> str:
  if v is None:
    return "—"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def claims_table(doc: dict) -> str:
  rows = ["| claim | method | value | baseline | baseline value | threshold / margin | holds |",
          "|---|---|---|---|---|---|---|"]
  for cl in doc["claims"]:
    limit = cl.get("threshold", cl.get("margin"))
    rows.append(f"| {cl['id']} | {cl['method']} | {_fmt(cl['value'])} | {cl.get('baseline', '—')} "
                f"| {_fmt(cl.get('baseline_value'))} | {_fmt(limit)} | "
                f"{'yes' if cl['holds'] else '**no**'} |")
  return "\n".join(rows)


def write_fedavg_report(out: str, c, results: list[dict], doc: dict) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for i, r in enumerate(results):
    rounds = [h["round"] for h in r["history"]]
    sim = [h["sim_time"] for h in r["history"]]
    acc = [100 * h["accuracy"] for h in r["history"]]
    color = f"C{i % 10}"
    axes[0].plot(rounds, acc, color=color, label=f"FedAvg seed {r['seed']}")
    axes[1].plot(sim, acc, color=color)
    for ax in axes:
      ax.axhline(100 * r["central_accuracy"], color=color, ls=":", lw=1)
  axes[0].set(xlabel="round", ylabel="test accuracy (%)",
              title=f"FedAvg, {c.num_clients} clients, Dirichlet α={c.alpha}")
  axes[1].set(xlabel="simulated time (s)", title="dotted: centralized, same seed")
  axes[0].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "accuracy.png"), dpi=110)
  plt.close(fig)

  lines = [f"# fedavg ({c.variant})", "", claims_table(doc), "",
           "| seed | FedAvg acc (%) | centralized acc (%) | simulated time (s) | wall (s) |",
           "|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['seed']} | {100 * r['fedavg_accuracy']:.2f} | "
                 f"{100 * r['central_accuracy']:.2f} | {r['sim_time']:.1f} | "
                 f"{r['history'][-1]['wall_time']:.1f} |")
  lines += ["", "![accuracy](accuracy.png)", "",
            f"Data {c.dataset}, {c.num_clients} clients ({c.partition}, α={c.alpha}), "
            f"{c.clients_per_round} per round, {c.local_epochs} local epochs, batch "
            f"{c.batch_size}, client lr {c.client_lr}, server {c.server_optimizer} "
            f"(lr {c.server_lr}), {c.num_rounds} rounds; centralized {c.central_epochs} epochs.", ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
