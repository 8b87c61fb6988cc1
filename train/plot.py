"""Draws the loss and accuracy curves of a workdir to a PNG.

  python -m train.plot WORKDIR [--out WORKDIR/curves.png]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from train.metrics_io import read_metrics


def plot_curves(workdir: str | pathlib.Path,
                out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Train/eval loss and accuracy against step; returns the PNG's path."""
    import matplotlib
    matplotlib.use("Agg")  # Files only, no display.
    import matplotlib.pyplot as plt

    workdir = pathlib.Path(workdir)
    out = pathlib.Path(out) if out else workdir / "curves.png"
    records = read_metrics(workdir)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=split,
                     markersize=3)
        ax_acc.plot(steps, [100 * r["accuracy"] for r in rows], style,
                    label=split, markersize=3)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(workdir))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.plot",
        description="Plot the loss/accuracy curves of a training workdir.")
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None,
                        help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_curves(args.workdir, args.out))
    except (OSError, ValueError) as e:  # Not a workdir, nothing logged.
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
