"""
Time selective search (OpenCV fast mode, one thread) per image on synthetic images, at DETReg's
setting (shorter side downscaled to 128) and at full resolution::

    python -m joindet.tools.bench_selective_search [--num-images 10] [--size 640x480]

The images are drawn by ``joindet.data.synthetic.render_synthetic_image`` (square, side
max(W, H)) and resized to W x H. The time per image covers ``selective_search_boxes`` (resize,
search, box conversion), not the drawing; one untimed call warms OpenCV up first. Wall and
CPU time are both printed: on a machine shared with other work the wall time is inflated.
"""
import argparse
import re
import sys
import time
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from joindet.data.synthetic import render_synthetic_image
from joindet.priors.selective_search import selective_search_boxes

__all__ = ["build_parser", "parse_size", "synthetic_images", "time_selective_search", "main"]


def parse_size(text: str) -> Tuple[int, int]:
    """"WxH" (e.g. "640x480") -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"size must look like 640x480 (positive width x height), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def synthetic_images(num_images: int, width: int, height: int, seed: int = 0) -> List[np.ndarray]:
    """``num_images`` uint8 (height, width, 3) RGB synthetic images (1-5 shapes each)."""
    rng = np.random.default_rng(seed)
    side = max(32, width, height)
    images = []
    for _ in range(num_images):
        image, _ = render_synthetic_image(rng, side)
        if (side, side) != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        images.append(image)
    return images


def time_selective_search(
    images: Sequence[np.ndarray], min_side: Optional[int], topk: int = 30
) -> Tuple[float, float]:
    """Mean (wall, CPU) seconds per image of ``selective_search_boxes(image, topk, min_side,
    "fast", num_threads=1)``. CPU time is the process's, so it stays meaningful on a busy machine."""
    selective_search_boxes(images[0], topk, min_side, "fast", num_threads=1)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for image in images:
        selective_search_boxes(image, topk, min_side, "fast", num_threads=1)
    n = len(images)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m joindet.tools.bench_selective_search",
        description="Time selective search per image at DETReg's setting and at full resolution.",
    )
    parser.add_argument("--num-images", type=int, default=10, help="images timed per setting")
    parser.add_argument("--size", default="640x480", help="image size WxH (default 640x480)")
    parser.add_argument("--min-side", type=int, default=128, help="DETReg's shorter side (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        width, height = parse_size(args.size)
        if args.num_images < 1:
            raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
        if args.min_side < 1:
            raise ValueError(f"--min-side must be >= 1, got {args.min_side}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = synthetic_images(args.num_images, width, height, args.seed)
    n = args.num_images
    wall, cpu = time_selective_search(images, args.min_side)
    print(
        f"selective_search DETReg setting (short side {args.min_side}): "
        f"{1000 * wall:.1f} ms/image over {n} images ({width}x{height} input; CPU {1000 * cpu:.1f} ms/image)",
        flush=True,
    )
    wall, cpu = time_selective_search(images, None)
    print(
        f"selective_search full resolution ({width}x{height}): "
        f"{1000 * wall:.1f} ms/image over {n} images (CPU {1000 * cpu:.1f} ms/image)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
