"""Cost of `adapt=`: a ViT-B/16 position embedding resampled from 224 to 384 px, against the interpolation alone.

Run: python bench/adapt.py [--repeat N] [--json PATH]

- "pos_embed": a module holding ViT-B/16's class token and position embedding at 384 px
  ((1, 577, 768): 1 class token + a 24 x 24 grid), loaded with ``adapt=True`` from a
  224 px state dict ((1, 197, 768): 14 x 14). Baseline, measured in the same run: what a
  user writes by hand, timm's ``resample_abs_pos_embed`` formula (written out here: the
  grid reshaped, ``F.interpolate`` bicubic, the class token put back) and ``copy_`` into
  the parameter. Target: ``sl.load(adapt=True)`` / baseline at most 1.10 (adapting costs
  no more than the interpolation itself).
- "interpolate": ``F.interpolate`` alone, for scale.

Medians of --repeat runs; results and target verdicts in bench/results/adapt.json.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from overhead import median_seconds
from targets import Targets, options

import structload as sl


class Embeddings(nn.Module):
    def __init__(self, grid: int, dim: int = 768):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))


def by_hand(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """timm's resample_abs_pos_embed, as users copy it: one class token, a square grid, bicubic."""
    old = int((pos_embed.shape[1] - 1) ** 0.5)
    image = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def pos_embed_case(repeat: int) -> dict:
    torch.manual_seed(0)
    source = {"cls_token": torch.randn(1, 1, 768), "pos_embed": torch.randn(1, 197, 768)}
    model = Embeddings(24)

    def manual() -> None:
        with torch.no_grad():
            model.cls_token.copy_(source["cls_token"])
            model.pos_embed.copy_(by_hand(source["pos_embed"], 24))

    adapted = median_seconds(lambda: sl.load(model, source, adapt=True), repeat)
    expected = by_hand(source["pos_embed"], 24)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6), "sl.load(adapt=True) differs from the formula"
    baseline = median_seconds(manual, repeat)
    image = source["pos_embed"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    alone = median_seconds(lambda: F.interpolate(image, size=(24, 24), mode="bicubic", align_corners=False), repeat)
    print(
        f"pos_embed 224 -> 384 | sl.load(adapt=True) {adapted * 1e3:7.2f} ms | by hand {baseline * 1e3:7.2f} ms | "
        f"F.interpolate alone {alone * 1e3:7.2f} ms | ratio {adapted / baseline:.2f}"
    )
    return {"case": "pos_embed", "adapt_s": adapted, "by_hand_s": baseline, "interpolate_s": alone}


def main() -> None:
    args = options(__doc__, "adapt", repeat=21).parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} runs")
    targets = Targets("adapt")
    result = pos_embed_case(args.repeat)
    targets.at_most("pos_embed: sl.load(adapt=True) / by hand", result["adapt_s"] / result["by_hand_s"], 1.10)
    targets.finish([result], args.json)


if __name__ == "__main__":
    main()
