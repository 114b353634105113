"""Draws the extension icon (WSICL.png, 128x128) and the module icon from the same picture:
a 2D box prompt on one slice (left) becoming a 3D segmentation (right)."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse, FancyArrow, Rectangle  # noqa: E402


def draw(path: Path, pixels: int) -> None:
    figure = plt.figure(figsize=(1, 1), dpi=pixels)
    axis = figure.add_axes([0, 0, 1, 1])
    axis.set_xlim(0, 100)
    axis.set_ylim(0, 100)
    axis.axis("off")
    axis.add_patch(Rectangle((2, 2), 96, 96, color="#1d2733", zorder=0))
    axis.add_patch(Ellipse((27, 55), 30, 40, color="#7d8a99"))
    axis.add_patch(Rectangle((12, 36), 30, 38, fill=False, edgecolor="#ffd400", linewidth=2.2))
    axis.add_patch(FancyArrow(45, 55, 12, 0, width=4, head_width=11, head_length=7,
                              color="white"))
    axis.add_patch(Ellipse((78, 55), 30, 40, color="#e2553f"))
    axis.add_patch(Ellipse((78, 55), 30, 40, fill=False, edgecolor="white", linewidth=1.2))
    axis.text(50, 12, "WSICL", ha="center", va="center", color="white", fontsize=13,
              fontweight="bold")
    figure.savefig(path, dpi=pixels)
    plt.close(figure)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    draw(root / "WSICL.png", 128)
    draw(root / "WSICLSegment" / "Resources" / "Icons" / "WSICLSegment.png", 128)
