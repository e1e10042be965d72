"""Train the toy GAN on the procedural scenes from a fixed seed; save a checkpoint and
sample grids.

    python scripts/train_toygan.py                       # 15 minutes, 1 thread
    python scripts/train_toygan.py --minutes 15 --threads 2 --docs-grid docs/toygan_samples.png
    python scripts/train_toygan.py --iterations 1500     # stop after 1500 iterations

The toy GAN of the README's intervention numbers (``runs/toygan_ace``: seed 0, ReLU
units, 6000 iterations of 32 scenes from 16384, learning rates decaying linearly to 0
from iteration 2000; the numbers use the trained weights, ``--live`` in
``scripts/measure_ace_toygan.py``; 33 min on 1 thread):

    python scripts/train_toygan.py --seed 0 --iterations 6000 --minutes 0 --threads 1 \
        --g-activation relu --lr-decay 2000 6000 --num-scenes 16384 --batch-size 32 \
        --ema-decay 0.999 --out runs/toygan_ace

One iteration = one discriminator update + one generator update on one batch
(Lightning's ``global_step`` counts optimizer steps, i.e. two per iteration).
Writes under ``--out`` (default ``runs/toygan``): ``toygan.ckpt`` (load it with
``gan_monitor.toyworld.load_toygan``), ``samples.png`` (a grid for a fixed set of
latents), ``samples_iter{N}.png`` every ``--grid-every`` iterations, ``progress.png``
(the first 8 samples at each of those points, one row each), ``metrics.csv`` (losses)
and ``timing.json`` (iterations, seconds, iterations per second).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def image_grid(images: torch.Tensor, columns: int = 8) -> Image.Image:
    """``[N, 3, H, W]`` in [-1, 1] -> one PIL image, ``columns`` per row, 2-pixel gaps."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    canvas = torch.full((3, rows * (h + 2) + 2, columns * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[:, 2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = pixels[i]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


@torch.no_grad()
def save_samples(generator, path: Path, n: int = 64, seed: int = 12345, scale: int = 2) -> torch.Tensor:
    """Save a grid of the generator's images for ``n`` fixed latents (seeded, global RNG
    untouched) and return the images."""
    was_training = generator.training
    generator.eval()
    z = generator.sample_latents(n, seed, device=next(generator.parameters()).device)
    images = generator(z).cpu()
    grid = image_grid(images)
    generator.train(was_training)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return images


def save_progress_strips(strips: list, path: Path, scale: int = 2) -> None:
    """One row of images per ``(iteration, images [k,3,H,W])``, labelled with the iteration."""
    rows = [image_grid(images, columns=len(images)) for _, images in strips]
    label_w = 48
    canvas = Image.new("RGB", (label_w + rows[0].width, sum(r.height for r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (iteration, _), row in zip(strips, rows):
        canvas.paste(row, (label_w, y))
        draw.text((4, y + row.height // 2 - 6), f"it {iteration}", fill="black")
        y += row.height
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget (default 15)")
    p.add_argument("--iterations", type=int, default=None, help="stop after this many iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, latents and data order")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs/toygan"))
    p.add_argument("--grid-every", type=int, default=250, help="iterations between sample grids")
    p.add_argument("--ckpt-every", type=int, default=0, help="also save toygan_iter{N}.ckpt every N iterations")
    p.add_argument("--docs-grid", type=Path, default=None, help="also write the final grid here")
    p.add_argument("--docs-progress", type=Path, default=None, help="also write the progress strip here")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-scenes", type=int, default=None)
    p.add_argument("--lr-g", type=float, default=None)
    p.add_argument("--lr-d", type=float, default=None)
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--g-norm", choices=["pixel", "batch"], default=None)
    p.add_argument("--d-norm", choices=["spectral", "batch"], default=None)
    p.add_argument("--lr-decay", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help="learning rates fall linearly to 0 from iteration START to END")
    p.add_argument("--g-activation", choices=["leaky", "relu"], default=None,
                   help="generator activation (default leaky ReLU 0.2; relu as in DCGAN)")
    p.add_argument("--g-channels", type=int, nargs="+", default=None,
                   help="generator widths from 4x4 upwards, e.g. 512 128 64 32 (default 256 128 64 32)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an exponential moving average of the generator (e.g. 0.999); "
                        "grids then show it")
    args = p.parse_args(argv)
    if args.minutes <= 0 and args.iterations is None:
        p.error("give a positive --minutes or an --iterations count")

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from gan_monitor.toyworld.gan import ToyGAN

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    overrides = {
        k: v
        for k, v in dict(
            batch_size=args.batch_size, num_scenes=args.num_scenes, lr_g=args.lr_g,
            lr_d=args.lr_d, latent_dim=args.latent_dim, g_norm=args.g_norm, d_norm=args.d_norm,
            g_channels=tuple(args.g_channels) if args.g_channels else None, ema_decay=args.ema_decay,
            g_activation=args.g_activation, lr_decay=tuple(args.lr_decay) if args.lr_decay else None,
        ).items()
        if v is not None
    }
    model = ToyGAN(data_seed=args.seed, **overrides)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    class Progress(pl.Callback):
        """Times the iterations and writes a sample grid every ``grid_every`` of them."""

        def __init__(self):
            self.iterations, self.start, self.history, self.strips = 0, None, [], []

        def on_train_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.iterations += 1
            if self.iterations % args.grid_every == 0:
                seconds = time.perf_counter() - self.start
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
                self.history.append({"iteration": self.iterations, "seconds": round(seconds, 1), **metrics})
                print(f"iteration {self.iterations}  {seconds:7.1f} s  "
                      f"{self.iterations / seconds:.2f} it/s  {metrics}", flush=True)
                images = save_samples(module.eval_generator(), out / f"samples_iter{self.iterations}.png")
                self.strips.append((self.iterations, images[:8]))
            if args.ckpt_every and self.iterations % args.ckpt_every == 0:
                trainer.save_checkpoint(out / f"toygan_iter{self.iterations}.ckpt")

    progress = Progress()
    setup_start = time.perf_counter()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2 * args.iterations if args.iterations else -1,  # two optimizer steps per iteration
        max_time=timedelta(minutes=args.minutes) if args.minutes > 0 else None,
        max_epochs=-1,
        logger=CSVLogger(str(out), name="", version=""),
        log_every_n_steps=20,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[progress],
    )
    trainer.fit(model)
    seconds = time.perf_counter() - (progress.start or setup_start)
    trainer.save_checkpoint(out / "toygan.ckpt")
    final = save_samples(model.eval_generator(), out / "samples.png")
    if args.docs_grid is not None:
        save_samples(model.eval_generator(), args.docs_grid, n=32, scale=1)  # small: grain does not compress
    if progress.strips:
        strips = progress.strips
        if strips[-1][0] != progress.iterations:
            strips = strips + [(progress.iterations, final[:8])]
        save_progress_strips(strips, out / "progress.png")
        if args.docs_progress is not None:
            save_progress_strips([(i, x[:6]) for i, x in strips[-6:]], args.docs_progress, scale=1)
    timing = {
        "iterations": progress.iterations,
        "train_seconds": round(seconds, 1),
        "setup_seconds": round((progress.start or setup_start) - setup_start, 1),
        "iterations_per_second": round(progress.iterations / max(seconds, 1e-9), 3),
        "threads": args.threads,
        "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.hparams.items()},
        "progress": progress.history,
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps({k: v for k, v in timing.items() if k != "progress"}))
    return timing


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
