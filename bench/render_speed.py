"""Scene rendering speed on one CPU thread: images per second at 32, 64 and 128 pixels.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/render_speed.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gan_monitor.toyworld.scenes import render_scenes  # noqa: E402


def images_per_second(size: int, n: int, repeats: int = 3) -> tuple[float, float]:
    """Best of ``repeats``: (images per wall-clock second, images per second of CPU time).
    On a shared machine the CPU-time rate is what one free core would give."""
    render_scenes(8, seed=0, size=size)  # warm-up
    wall = cpu = float("inf")
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        render_scenes(n, seed=r, size=size)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return n / wall, n / cpu


def main() -> None:
    torch.set_num_threads(1)
    print("render_scenes, 1 thread (best of 3)")
    for size, n in ((32, 1024), (64, 512), (128, 128)):
        wall, cpu = images_per_second(size, n)
        print(f"  {size:3d}x{size:<3d}: {wall:8.0f} images/s wall clock, {cpu:8.0f} images/s of CPU time")


if __name__ == "__main__":
    main()
