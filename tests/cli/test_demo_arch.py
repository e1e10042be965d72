"""``gan-monitor demo --arch stylegan|pix2pix`` (gan_monitor.cli.demo_families): each family
trains a few batches under the DissectionMonitor, with its own layers and held-out inputs,
and its last checkpoint is dissected again for the report. Tiny widths, 64x64 images (the
size the demo's importable input functions are made for)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gan_monitor.cli import demo_families
from gan_monitor.cli.main import main
from gan_monitor.toyworld.stylegan import ToyStyleGenerator

TINY = {
    "stylegan": dict(latent_dim=128, w_dim=16, image_size=64, g_channels=(8, 8, 8, 8, 4), d_channels=(4, 8, 8, 8),
                     mapping_layers=1, batch_size=4, num_scenes=8),
    "pix2pix": dict(image_size=64, g_channels=(4, 8, 8, 8, 8), d_channels=(4, 8, 8), batch_size=4, num_scenes=8),
}


@pytest.mark.parametrize("arch", ["stylegan", "pix2pix"])
def test_demo_arch_from_the_command_line(arch, tmp_path, monkeypatch, capsys):
    make = demo_families.make_model
    monkeypatch.setattr("gan_monitor.cli.demo.make_model",
                        lambda a, seed, kwargs=None: make(a, seed, dict(TINY[a], **(kwargs or {}))))
    out = tmp_path / arch
    code = main(["demo", "--arch", arch, "--out", str(out), "--max-batches", "2", "--every-n-steps", "1",
                 "--n", "6", "--iqr-n", "6", "--threads", "1", "--no-progress", "--minutes", "2"])
    assert code == 0
    text = capsys.readouterr().out
    summary = json.loads(next(out.rglob("demo_summary.json")).read_text())
    layers = list(demo_families.family(arch).layers)
    assert summary["settings"]["arch"] == arch and summary["settings"]["layers"] == layers
    assert summary["settings"]["generator_attr"] == ("generator_ema" if arch == "stylegan" else "generator")
    assert [h["step"] for h in summary["history"]] == [0, 1, 2] and summary["batches"] == 2
    for h in summary["history"]:
        assert set(h["layers"]) == set(layers)
    rows = [line.split()[0] for line in text.splitlines() if line.startswith(tuple(f"{n} " for n in layers))]
    assert rows == layers
    assert summary["report"] and Path(summary["report"]).is_file()  # the last checkpoint, dissected again
    assert list(out.rglob("last.ckpt"))


def test_demo_families_inputs_and_errors(capsys):
    g = ToyStyleGenerator(latent_dim=128, w_dim=8, image_size=64, channels=(4, 4, 4, 4, 4), mapping_layers=1)
    drawn = demo_families.stylegan_demo_inputs(2, torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape[1:]) for k, v in drawn.items() if k != "z"} == g.noise_shapes()
    assert g(**drawn).shape == (2, 3, 64, 64)
    assert demo_families.pix2pix_demo_inputs(2, torch.Generator().manual_seed(0)).shape == (2, 11, 64, 64)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--arch", "biggan"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'biggan'" in capsys.readouterr().err
    assert main(["demo", "--arch", "pix2pix", "--layers", "layer2", "--max-batches", "1", "--minutes", "1"]) == 2
    err = capsys.readouterr().err
    assert "pix2pix generator has no layer(s) ['layer2']" in err and "down2" in err
