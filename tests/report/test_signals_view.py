"""`gan-monitor dissect` puts a checkpoint on the monitor's batch axis and says so; the report
shows the training-signals section (units x checkpoints coloured by concept, diversity)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from gan_monitor.cli.main import main
from gan_monitor.report.signals_view import concept_bar_chart, concept_color, markdown_table
from gan_monitor.signals import ConceptStats, compare_concepts
from gan_monitor.signals.checkpoint_steps import BATCHES_AXIS, GLOBAL_STEP_AXIS

TINY_GAN = dict(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
                batch_size=8, num_scenes=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import lightning.pytorch as pl

    from gan_monitor.toyworld.gan import ToyGAN

    tmp = tmp_path_factory.mktemp("axis")
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(**TINY_GAN)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)  # manual optimisation: 4 optimizer steps = 2 batches
    trainer.save_checkpoint(tmp / "plain.ckpt")
    blob = torch.load(tmp / "plain.ckpt", weights_only=True)
    assert blob["global_step"] == 4
    blob.setdefault("callbacks", {})["DissectionMonitor{'layers': ['layer3']}"] = {"batches_seen": 2, "history": []}
    torch.save(blob, tmp / "monitored.ckpt")
    out = tmp / "out"
    assert main(["dissect", str(tmp / "plain.ckpt"), str(tmp / "monitored.ckpt"), "--layers", "layer3",
                 "--out", str(out), "--n", "16", "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_dissect_uses_the_monitors_batch_counter_and_says_which_axis(folder):
    timeline = json.loads((folder / "timeline.json").read_text())
    steps = {e["name"]: e["step"] for e in timeline["checkpoints"]}
    assert steps == {"monitored": 2, "plain": 4}  # the monitor's 2 batches, not global_step 4
    axes = {name: json.loads((folder / name / "dissection.json").read_text())["settings"]["step_axis"]
            for name in steps}
    assert axes == {"monitored": BATCHES_AXIS, "plain": GLOBAL_STEP_AXIS}
    stats = json.loads((folder / "plain" / "dissection.json").read_text())["sample_stats"]
    assert stats["images"] == 16 and sum(stats["image_counts"]) > 0


def test_report_shows_units_by_checkpoint_coloured_by_concept(folder):
    page = (folder / "index.html").read_text()
    section = page[page.index('id="training-signals"'):]
    assert "units x checkpoints" in section and "x-axis:" in section
    grid = section[section.index('class="unit-timeline"'):section.index("</table>", section.index("unit-timeline"))]
    units = len(json.loads((folder / "plain" / "dissection.json").read_text())["layers"]["layer3"]["thresholds"])
    assert units >= 4 and grid.count("<tr><td>") == units  # one row per unit of layer3
    assert len(re.findall(r"<td style=\"background:", grid)) == units * 2  # one cell per checkpoint
    assert "pixel diversity" in section


def test_bar_chart_table_and_colours():
    concepts = ["-", "sky", "tree"]
    real = ConceptStats(concepts, [0, 60, 40], [0, 10, 8], 10, 10)
    gen = ConceptStats(concepts, [0, 90, 10], [0, 10, 2], 10, 10)
    comparison = compare_concepts(real, gen)
    image = concept_bar_chart(comparison, title="t")
    assert image.size[0] > 300 and image.size[1] > 40
    assert comparison.under_generated == ["tree"]
    text = markdown_table(*comparison.table())
    assert text.splitlines()[0].startswith("| concept | real_pixels") and "| tree | 0.4 | 0.1 | 0.25 |" in text
    assert concept_color("tree") == concept_color("tree") and concept_color("tree").startswith("#")


def test_unit_grid_colours_interpretable_units_by_their_concept():
    from types import SimpleNamespace

    from gan_monitor.dissection.results import DissectionResult, LayerDissection
    from gan_monitor.report.signals_view import signals_section

    def result(labels, interpretable):
        concepts = ["-", "sky", "tree"]
        u = len(labels)
        ld = LayerDissection(layer="l", concepts=concepts, categories=["-"] * 3, thresholds=torch.zeros(u),
                             iou=torch.zeros(u, 3), label_index=torch.tensor([concepts.index(x) for x in labels]),
                             unit_iou=torch.full((u,), 0.2), interpretable=torch.tensor(interpretable),
                             topk=torch.zeros(u, 1, dtype=torch.long), topk_values=torch.zeros(u, 1))
        return DissectionResult({"l": ld})

    entries = [SimpleNamespace(name="a", step=10, x=10, result=result(["sky", "tree"], [True, False])),
               SimpleNamespace(name="b", step=20, x=20, result=result(["tree", "tree"], [True, True]))]
    html = signals_section(entries, axis="training batches")
    sky, tree = concept_color("sky"), concept_color("tree")
    cells = re.findall(r'background:(#[0-9a-f]{6});width', html)
    assert cells == [sky, tree, "#eeeeee", tree]  # unit 0: a, b; unit 1: a, b
    assert "x-axis: training batches" in html
    assert re.search(r"<td>b</td><td>20</td><td></td><td></td><td>1</td><td>1</td><td>0</td>", html)
