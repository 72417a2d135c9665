"""
How the object priors evolve during pretraining (the supplement's Fig. 1): for a few images, the
top-scoring priors of every prior-bank version side by side, and selective search's top 15 (the
fixed priors of DETReg) on the same image in the last column::

    python -m joindet.tools.prior_evolution --bank output/mini_pretrain_synth/prior_bank \\
        --dataset synth_train_unlabeled --num-images 4 --out prior_evolution.png \\
        --quality-plot prior_quality.png

One row per image, one column per version (``v0``, ``v1``, ...) plus ``selective search``; every
panel is the image fitted into a ``panel_size`` square (aspect ratio kept, white padding) with the
boxes drawn by Detectron2's ``Visualizer``. A box's colour is its rank by score (the top-1 prior
has the same colour in every panel). ``--quality-plot`` also scores every version against the
dataset's boxes (``evaluate_priors``; an unlabelled view such as ``synth_train_unlabeled`` is
scored against its labelled counterpart) and plots AR@30, R50@30 and CorLoc per version.

The built-in synthetic datasets are registered with the ``--synthetic-*`` sizes, which must match
the run that wrote the bank (as for ``joindet.tools.eval_priors``).
"""
import argparse
import numbers
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from joindet.data.datasets import check_dataset_names
from joindet.evaluation.prior_quality import evaluate_priors, format_prior_quality_table
from joindet.priors.bank import PriorBank
from joindet.priors.selective_search import selective_search_boxes
from joindet.tools.cli_common import add_synthetic_args, parse_versions, register_synthetic_from_args

__all__ = [
    "TITLE_HEIGHT",
    "LABEL_WIDTH",
    "SS_TITLE",
    "QUALITY_KEYS",
    "build_parser",
    "draw_prior_grid",
    "plot_prior_quality",
    "main",
]

TITLE_HEIGHT = 32  # px: the band above the panels that holds the column titles
LABEL_WIDTH = 72  # px: the band left of the panels that holds each row's image id
SS_TITLE = "selective search"
QUALITY_KEYS = ("AR@30", "R50@30", "CorLoc")  # the evaluate_priors results plotted per version
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BOX_COLOURS = colormap(rgb=True, maximum=1)  # float (C, 3) in [0, 1]; a box's colour = its rank


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _top_by_score(boxes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring of boxes float (n, 4) XYXY (ties keep the stored order): float32 (min(n, k), 4)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return np.asarray(boxes, dtype=np.float32)[order]


def _draw_panel(image: np.ndarray, boxes: np.ndarray, panel_size: int) -> np.ndarray:
    """
    Args:
        image: uint8 (H, W, 3) RGB.
        boxes: float (k, 4) XYXY in the image's pixel coordinates, best first (k may be 0).
        panel_size: side of the square panel.

    Returns:
        uint8 (panel_size, panel_size, 3) RGB: the image scaled to fit (longer side = panel_size),
        boxes drawn by Detectron2's Visualizer, centred on white.
    """
    height, width = image.shape[:2]
    scale = panel_size / max(height, width)
    vis = Visualizer(image, metadata=None, scale=scale)
    if boxes.shape[0]:
        colours = [_BOX_COLOURS[i % len(_BOX_COLOURS)] for i in range(boxes.shape[0])]
        vis.overlay_instances(boxes=boxes, assigned_colors=colours)
    drawn = vis.get_output().get_image()[:panel_size, :panel_size]  # matplotlib may round up by a pixel
    panel = np.full((panel_size, panel_size, 3), 255, dtype=np.uint8)
    top = (panel_size - drawn.shape[0]) // 2
    left = (panel_size - drawn.shape[1]) // 2
    panel[top : top + drawn.shape[0], left : left + drawn.shape[1]] = drawn
    return panel


def _put_text_fitted(canvas: np.ndarray, text: str, x0: int, y0: int, width: int, height: int) -> None:
    """Write ``text`` in black, centred in the box (x0, y0, width, height) of uint8 RGB ``canvas``,
    shrinking the font until it fits."""
    font_scale, thickness = 0.6, 1
    while True:
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
        if (tw <= width - 4 and th + baseline <= height - 2) or font_scale <= 0.2:
            break
        font_scale -= 0.05
    x = x0 + max(0, (width - tw) // 2)
    y = y0 + max(th, (height + th) // 2 - baseline // 2)
    cv2.putText(canvas, text, (x, y), _FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_prior_grid(
    bank: PriorBank,
    dataset_dicts: Sequence[dict],
    image_ids: Sequence[int],
    versions: Sequence[int],
    topk: int = 15,
    ss_topk: int = 15,
    ss_min_side: Optional[int] = 128,
    panel_size: int = 256,
) -> np.ndarray:
    """
    The prior-evolution figure as one image.

    Args:
        bank: the prior bank.
        dataset_dicts: Detectron2 dataset dicts with ``file_name`` and integer ``image_id`` (and
            ``height``/``width``, checked against the read image when present).
        image_ids: the images to draw, one row each, in this order.
        versions: the bank versions to draw, one column each, in this order.
        topk: priors drawn per version panel (the highest-scoring ones).
        ss_topk: selective-search boxes drawn in the last column (OpenCV's first ones, seed 0).
        ss_min_side: shorter side the image is resized to for selective search (None: full size),
            as ``selective_search_boxes``' ``min_side``.
        panel_size: side of each square panel in pixels.

    Returns:
        uint8 (TITLE_HEIGHT + R * panel_size, LABEL_WIDTH + C * panel_size, 3) RGB with
        R = len(image_ids) and C = len(versions) + 1: a title band ("v<version>" ..., "selective
        search"), a label band ("id <image_id>") and the panels, row r / column c at
        ``[TITLE_HEIGHT + r * panel_size :, LABEL_WIDTH + c * panel_size :]``.

    Raises:
        ValueError: no images or versions, an image id not in the dataset or missing from a
            version, a version not in the bank, an image whose size differs from its dict.
    """
    topk = _check_int("topk", topk, 1)
    ss_topk = _check_int("ss_topk", ss_topk, 1)
    panel_size = _check_int("panel_size", panel_size, 16)
    image_ids = [int(i) for i in image_ids]
    versions = [int(v) for v in versions]
    if not image_ids:
        raise ValueError("image_ids is empty: nothing to draw")
    if not versions:
        raise ValueError("versions is empty: nothing to draw")
    present = bank.versions()
    absent = [v for v in versions if v not in present]
    if absent:
        raise ValueError(f"version(s) {absent} not in prior bank {bank.root} (present: {present})")
    by_id = {}
    for d in dataset_dicts:
        if "image_id" in d:
            by_id[d["image_id"]] = d
    unknown = [i for i in image_ids if i not in by_id]
    if unknown:
        raise ValueError(f"image id(s) {unknown} are not in the dataset")
    opened = [bank.read(v) for v in versions]
    for version in opened:
        lacking = [i for i in image_ids if i not in version]
        if lacking:
            raise ValueError(f"image id(s) {lacking} are not in prior bank version {version.version}")

    rows, cols = len(image_ids), len(versions) + 1
    grid = np.full((TITLE_HEIGHT + rows * panel_size, LABEL_WIDTH + cols * panel_size, 3), 255, np.uint8)
    titles = [f"v{v}" for v in versions] + [SS_TITLE]
    for c, title in enumerate(titles):
        _put_text_fitted(grid, title, LABEL_WIDTH + c * panel_size, 0, panel_size, TITLE_HEIGHT)

    for r, image_id in enumerate(image_ids):
        record = by_id[image_id]
        image = read_image(record["file_name"], format="RGB")
        expected = (record.get("height", image.shape[0]), record.get("width", image.shape[1]))
        if image.shape[:2] != tuple(expected):
            raise ValueError(
                f"image {image_id} ({record['file_name']}) is {image.shape[1]}x{image.shape[0]} (WxH) but "
                f"its dataset dict says {expected[1]}x{expected[0]}: the priors would be misplaced"
            )
        panels = [_draw_panel(image, _top_by_score(*version.get(image_id), topk), panel_size) for version in opened]
        ss_boxes, _ = selective_search_boxes(image, topk=ss_topk, min_side=ss_min_side)
        panels.append(_draw_panel(image, ss_boxes, panel_size))
        y0 = TITLE_HEIGHT + r * panel_size
        for c, panel in enumerate(panels):
            x0 = LABEL_WIDTH + c * panel_size
            grid[y0 : y0 + panel_size, x0 : x0 + panel_size] = panel
        _put_text_fitted(grid, f"id {image_id}", 0, y0, LABEL_WIDTH, panel_size)
    return grid


def plot_prior_quality(rows: Sequence[Tuple[str, Mapping[str, float]]], path: str) -> str:
    """
    A line plot of prior quality per version, saved as PNG (matplotlib's Agg canvas; no pyplot state).

    Args:
        rows: [(label e.g. "v0", ``evaluate_priors`` result), ...] in version order.
        path: the PNG file to write.

    Returns:
        ``path``. One line per key of ``QUALITY_KEYS`` (AR@30, R50@30, CorLoc) that the results hold.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    labels = []
    for entry in rows:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[1], Mapping):
            raise ValueError(f"each row must be a (label, results dict) pair, got {entry!r}")
        labels.append(str(entry[0]))
    keys = [k for k in QUALITY_KEYS if all(k in result for _, result in rows)]
    if not keys:
        raise ValueError(f"the results hold none of {QUALITY_KEYS}: evaluate with 30 in max_dets")

    fig = Figure(figsize=(max(5.0, 1.0 + 0.8 * len(rows)), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    for key in keys:
        ax.plot(x, [float(result[key]) for _, result in rows], marker="o", label=key)
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_xlabel("prior bank version")
    ax.set_ylabel("percent")
    ax.set_title("Object prior quality (class-agnostic)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.prior_evolution",
        description="Draw the priors of every prior-bank version (and selective search's) on a few images.",
    )
    parser.add_argument("--bank", required=True, help="prior bank folder (holds v0000/, v0001/, ...)")
    parser.add_argument("--dataset", required=True, help="registered dataset whose images the bank covers")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--images", nargs="+", type=int, metavar="ID", help="image ids to draw (one row each)")
    which.add_argument("--num-images", type=int, default=4,
                       help="draw the first N images (by id) that every chosen version has (default 4)")
    parser.add_argument("--versions", nargs="+", default=["all"], metavar="V",
                        help="versions to draw (integers), or 'all' (default)")
    parser.add_argument("--topk", type=int, default=15, help="priors drawn per version (highest scores)")
    parser.add_argument("--ss-topk", type=int, default=15, help="selective-search boxes drawn (the paper: 15)")
    parser.add_argument("--ss-min-side", type=int, default=128,
                        help="shorter side for selective search (DETReg: 128; 0 = full resolution)")
    parser.add_argument("--panel-size", type=int, default=256, help="side of each square panel in pixels")
    parser.add_argument("--out", required=True, help="the PNG file of the figure")
    parser.add_argument("--quality-plot", default="",
                        help="also plot AR@30 / R50@30 / CorLoc per version to this PNG (needs boxes)")
    add_synthetic_args(parser)
    return parser


def _choose_images(dicts: Sequence[dict], bank: PriorBank, versions: Sequence[int], num_images: int) -> List[int]:
    """The first ``num_images`` image ids (ascending) of the dataset that every version holds."""
    if num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {num_images}")
    common = set(int(i) for i in bank.read(versions[0]).image_ids)
    for v in versions[1:]:
        common &= set(int(i) for i in bank.read(v).image_ids)
    ids = sorted(int(d["image_id"]) for d in dicts if d.get("image_id") in common)
    if not ids:
        raise ValueError(f"no image of the dataset is in every chosen version {list(versions)} of {bank.root}")
    return ids[:num_images]


def _boxes_dataset(name: str) -> Tuple[str, List[dict]]:
    """``name`` if its dicts have annotations, else its labelled counterpart (metadata ``labeled_dataset``)."""
    dicts = DatasetCatalog.get(name)
    if any("annotations" in d for d in dicts):
        return name, dicts
    labelled = MetadataCatalog.get(name).get("labeled_dataset", None)
    if labelled:
        return labelled, DatasetCatalog.get(labelled)
    raise ValueError(f"--quality-plot needs boxes, and dataset '{name}' has no annotations nor a labelled counterpart")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Draw the figure (and the quality plot); returns {"figure", "image_ids", "columns", "rows", "cols",
    "panel_size", "shape", "quality_plot", "quality"}."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_synthetic_from_args(args)
        check_dataset_names([args.dataset], "--dataset")
        bank = PriorBank(args.bank)
        versions = parse_versions(args.versions, bank)
        dicts = DatasetCatalog.get(args.dataset)
        image_ids = args.images if args.images else _choose_images(dicts, bank, versions, args.num_images)
        grid = draw_prior_grid(
            bank, dicts, image_ids, versions, topk=args.topk, ss_topk=args.ss_topk,
            ss_min_side=args.ss_min_side or None, panel_size=args.panel_size,
        )
        quality_rows = None
        if args.quality_plot:
            scored_on, labelled = _boxes_dataset(args.dataset)
            quality_rows = [(f"v{v}", evaluate_priors(bank.read(v), labelled)) for v in versions]
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    if not cv2.imwrite(args.out, np.ascontiguousarray(grid[:, :, ::-1])):
        parser.error(f"cannot write the figure to {args.out} (use a .png path in a writable folder)")
    columns = [f"v{v}" for v in versions] + [SS_TITLE]
    print(
        f"Wrote {args.out}: {len(image_ids)} row(s) (image ids {', '.join(map(str, image_ids))}) x "
        f"{len(columns)} column(s) ({', '.join(columns)}); panels {args.panel_size}x{args.panel_size} px, "
        f"figure {grid.shape[1]}x{grid.shape[0]} px"
    )
    if quality_rows is not None:
        if os.path.dirname(os.path.abspath(args.quality_plot)):
            os.makedirs(os.path.dirname(os.path.abspath(args.quality_plot)), exist_ok=True)
        plot_prior_quality(quality_rows, args.quality_plot)
        print(f"\nPrior quality on '{scored_on}' (class-agnostic, percent):\n")
        print(format_prior_quality_table(quality_rows))
        for label, result in quality_rows:
            if result["missing_images"]:
                print(f"note: {label} lacks {result['missing_images']} of the {result['num_images']} images "
                      "(scored as having no priors)")
        print(f"\nWrote {args.quality_plot}")
    return {
        "figure": args.out,
        "image_ids": list(image_ids),
        "columns": columns,
        "rows": len(image_ids),
        "cols": len(columns),
        "panel_size": args.panel_size,
        "shape": tuple(grid.shape),
        "quality_plot": args.quality_plot or None,
        "quality": quality_rows,
    }


if __name__ == "__main__":
    main()
