"""Train a toy generator on the procedural scenes from a fixed seed; save a checkpoint and
sample grids. ``--arch`` picks the family: ``progan`` (default, ``toyworld.gan.ToyGAN``),
``stylegan`` (``toyworld.stylegan.ToyStyleGAN``) or ``pix2pix`` (``toyworld.pix2pix.ToyPix2Pix``,
painting scenes from their label maps).

    python scripts/train_toygan.py                       # 15 minutes, 1 thread
    python scripts/train_toygan.py --minutes 15 --threads 2 --docs-grid docs/toygan_samples.png
    python scripts/train_toygan.py --iterations 1500     # stop after 1500 iterations
    python scripts/train_toygan.py --arch stylegan --minutes 15 --threads 2   # -> runs/toystylegan
    python scripts/train_toygan.py --arch pix2pix --minutes 15 --threads 2    # -> runs/toypix2pix

The toy GAN of the README's intervention numbers (``runs/toygan_ace``: seed 0, ReLU
units, 6000 iterations of 32 scenes from 16384, learning rates decaying linearly to 0
from iteration 2000; the numbers use the trained weights, ``--live`` in
``scripts/measure_ace_toygan.py``; 33 min on 1 thread):

    python scripts/train_toygan.py --seed 0 --iterations 6000 --minutes 0 --threads 1 \
        --g-activation relu --lr-decay 2000 6000 --num-scenes 16384 --batch-size 32 \
        --ema-decay 0.999 --out runs/toygan_ace

One iteration = one discriminator update + one generator update on one batch
(Lightning's ``global_step`` counts optimizer steps, i.e. two per iteration).
Writes under ``--out`` (default ``runs/toygan``, ``runs/toystylegan``, ``runs/toypix2pix``):
``toygan.ckpt`` (``toystylegan.ckpt``, ``toypix2pix.ckpt``; load it with
``gan_monitor.toyworld.load_toygan``, ``load_toystylegan``, ``load_toypix2pix``), ``samples.png``
(a grid for a fixed set of inputs: latents, plus fixed noise for stylegan, or the label maps
of held-out scenes for pix2pix, shown in ``inputs.png``),
``samples_iter{N}.png`` every ``--grid-every`` iterations, ``progress.png``
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


# Per family: the LightningModule, the checkpoint (and default output folder) name, and
# the options of this script it takes.
_COMMON = ("batch_size", "num_scenes", "lr_g", "lr_d", "g_channels", "lr_decay")
ARCHS = {
    "progan": dict(module="gan_monitor.toyworld.gan:ToyGAN", name="toygan",
                   options=_COMMON + ("latent_dim", "g_norm", "d_norm", "g_activation", "ema_decay")),
    "stylegan": dict(module="gan_monitor.toyworld.stylegan:ToyStyleGAN", name="toystylegan",
                     options=_COMMON + ("latent_dim", "d_norm", "ema_decay", "r1_gamma")),
    "pix2pix": dict(module="gan_monitor.toyworld.pix2pix:ToyPix2Pix", name="toypix2pix",
                    options=_COMMON + ("l1_weight",)),
}
OPTIONS = ("batch_size", "num_scenes", "lr_g", "lr_d", "latent_dim", "g_norm", "d_norm", "lr_decay",
           "g_activation", "g_channels", "ema_decay", "r1_gamma", "l1_weight")


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


def sample_inputs(generator, n: int, seed: int):
    """``n`` fixed generator inputs (seeded, global RNG untouched): latents, or what the
    generator's ``input_fn()`` draws (z and noise for stylegan, label maps for pix2pix)."""
    from gan_monitor.core.inputs import make_inputs

    device = next(generator.parameters()).device
    if hasattr(generator, "input_fn"):
        return make_inputs(generator, n, seed, generator.input_fn(), device=device)
    return generator.sample_latents(n, seed, device=device)


@torch.no_grad()
def save_samples(generator, path: Path, n: int = 64, seed: int = 12345, scale: int = 2) -> torch.Tensor:
    """Save a grid of the generator's images for ``n`` fixed inputs (seeded, global RNG
    untouched) and return the images."""
    from gan_monitor.core.inputs import call_generator

    was_training = generator.training
    generator.eval()
    images = call_generator(generator, sample_inputs(generator, n, seed)).cpu()
    grid = image_grid(images)
    generator.train(was_training)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return images


def save_label_inputs(generator, path: Path, n: int = 64, seed: int = 12345, scale: int = 2) -> None:
    """Save the label maps (colourised) that ``save_samples`` gives a pix2pix generator."""
    from gan_monitor.toyworld.palette import colorize

    labels = sample_inputs(generator, n, seed).argmax(1).cpu()
    grid = image_grid(colorize(labels).permute(0, 3, 1, 2).float() / 127.5 - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


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
    p.add_argument("--arch", choices=sorted(ARCHS), default="progan",
                   help="generator family: progan (default), stylegan or pix2pix")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget (default 15)")
    p.add_argument("--iterations", type=int, default=None, help="stop after this many iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, latents and data order")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<checkpoint name>)")
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
                   help="generator widths: progan from 4x4 to half the image size, e.g. 512 128 64 32 "
                        "(default 256 128 64 32); stylegan from 4x4 to the image size (default "
                        "128 128 64 32 16); pix2pix down1 ... down5 (default 32 64 64 128 128)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an exponential moving average of the generator (e.g. 0.999); "
                        "grids then show it (stylegan: on by default, 0.999)")
    p.add_argument("--r1-gamma", type=float, default=None, help="stylegan: weight of the lazy R1 penalty (0: off)")
    p.add_argument("--l1-weight", type=float, default=None, help="pix2pix: weight of the L1 loss (default 100)")
    args = p.parse_args(argv)
    if args.minutes <= 0 and args.iterations is None:
        p.error("give a positive --minutes or an --iterations count")
    arch = ARCHS[args.arch]
    given = {name for name in OPTIONS if getattr(args, name) is not None}
    refused = sorted(given - set(arch["options"]))
    if refused:
        p.error(f"--arch {args.arch} does not take " + ", ".join("--" + n.replace("_", "-") for n in refused))
    out = args.out if args.out is not None else Path("runs") / arch["name"]

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from gan_monitor.core.checkpoints import import_object

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    overrides = {
        k: v
        for k, v in dict(
            batch_size=args.batch_size, num_scenes=args.num_scenes, lr_g=args.lr_g,
            lr_d=args.lr_d, latent_dim=args.latent_dim, g_norm=args.g_norm, d_norm=args.d_norm,
            g_channels=tuple(args.g_channels) if args.g_channels else None, ema_decay=args.ema_decay,
            g_activation=args.g_activation, lr_decay=tuple(args.lr_decay) if args.lr_decay else None,
            r1_gamma=args.r1_gamma, l1_weight=args.l1_weight,
        ).items()
        if v is not None
    }
    model = import_object(arch["module"], "--arch")(data_seed=args.seed, **overrides)
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
                trainer.save_checkpoint(out / f"{arch['name']}_iter{self.iterations}.ckpt")

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
    trainer.save_checkpoint(out / f"{arch['name']}.ckpt")
    final = save_samples(model.eval_generator(), out / "samples.png")
    if args.arch == "pix2pix":
        save_label_inputs(model.eval_generator(), out / "inputs.png")
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
        "arch": args.arch,
        "generator_parameters": sum(p.numel() for p in model.eval_generator().parameters()),
        "discriminator_parameters": sum(p.numel() for p in model.discriminator.parameters()),
        "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.hparams.items()},
        "progress": progress.history,
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps({k: v for k, v in timing.items() if k != "progress"}))
    return timing


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
