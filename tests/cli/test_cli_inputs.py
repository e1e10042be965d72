"""CLI gaps of issue 15: a --generator-factory module in the current folder, --input-fn
(conditional generators from the command line, shared by dissect and paint), the one
Python call that writes the full report (pictures included), and `report` on a folder
without pictures saying so."""
from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest
import torch

from gan_monitor.cli.main import build_parser, main

from toy_checkpoints import N, TINY_GAN, ckpts, timeline  # noqa: F401  (module-scoped fixtures)

LAYERS = ["layer2", "layer3"]
G_ARGS = dict(latent_dim=TINY_GAN["latent_dim"], image_size=TINY_GAN["image_size"], channels=TINY_GAN["g_channels"])

# a conditional generator G(z, labels) and its input function, as a user's module
CONDITIONAL = textwrap.dedent(f"""
    import torch
    from torch import nn
    from gan_monitor.toyworld.gan_networks import ToyGenerator

    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, {G_ARGS['latent_dim']})
            self.net = ToyGenerator(**{G_ARGS!r})

        def forward(self, z, labels):
            return self.net(z + self.embed(labels))

    def make():
        return Conditional()

    def inputs(n, generator):
        z = torch.randn(n, {G_ARGS['latent_dim']}, generator=generator)
        return z, torch.randint(0, 4, (n,), generator=generator)

    not_a_function = 3
""")


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The current folder holds the user's module ``condgen_<test>``; sys.path is restored after."""
    name = f"condgen_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(CONDITIONAL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    torch.manual_seed(0)
    spec = importlib_module(tmp_path, name)
    torch.save(spec.make().state_dict(), tmp_path / "g.pt")
    sys.modules.pop(name, None)
    return tmp_path, name


def importlib_module(folder, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dissect(folder, name, *extra):
    return main(["dissect", str(folder / "g.pt"), "--generator-factory", f"{name}:make", "--layers", "net.layer3",
                 "--out", str(folder / "out"), "--n", "24", "--seed", "1", "--no-progress", *extra])


def test_factory_from_the_current_folder_and_input_fn_equal_the_api(user_folder, capsys):
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.dissection.results import DissectionResult
    from gan_monitor.toyworld.segmenter import load_segmenter

    folder, name = user_folder
    assert run_dissect(folder, name, "--input-fn", f"{name}:inputs") == 0, capsys.readouterr().err
    module = sys.modules[name]  # imported from the current folder, as `python -m` would
    assert module.__file__ == str(folder / f"{name}.py")
    got = DissectionResult.from_json(folder / "out" / "g" / "dissection.json")
    generator = module.make()
    generator.load_state_dict(torch.load(folder / "g.pt"))
    expected = dissect(generator, ["net.layer3"], load_segmenter(), n=24, seed=1, input_fn=module.inputs, topk=5)
    assert torch.equal(got["net.layer3"].iou, expected["net.layer3"].iou.float())
    assert got["net.layer3"].labels == expected["net.layer3"].labels
    assert got.settings["input_fn"] == f"{name}:inputs"
    assert len(list((folder / "out" / "g" / "units" / "net.layer3").glob("unit_*.png"))) == got["net.layer3"].num_units
    assert main(["report", str(folder / "out")]) == 0


def test_input_fn_errors_are_one_line(user_folder, capsys):
    folder, name = user_folder
    assert run_dissect(folder, name) == 1  # G(z, labels) cannot be fed default latents
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "input_fn" in err, err
    assert run_dissect(folder, name, "--overwrite", "--input-fn", f"{name}:not_a_function") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--input-fn" in err and "not a function" in err, err
    assert run_dissect(folder, name, "--overwrite", "--input-fn", f"{name}:missing") == 1
    assert "has no 'missing'" in capsys.readouterr().err


def test_missing_module_error_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    torch.save({}, tmp_path / "g.pt")
    assert main(["dissect", "g.pt", "--generator-factory", "nosuchmodule_zz:make", "--layers", "x", "--out",
                 "out", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "current folder" in err and "PYTHONPATH" in err and "nosuchmodule_zz.py" in err, err


def test_paint_and_dissect_share_the_generator_arguments(user_folder, capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {cmd: {s for a in sub.choices[cmd]._actions for s in a.option_strings} for cmd in ("dissect", "paint")}
    for flag in ("--module", "--generator-factory", "--generator-attr", "--input-fn"):
        assert flag in flags["dissect"] and flag in flags["paint"]
    folder, name = user_folder
    assert main(["paint", str(folder / "g.pt"), "--generator-factory", f"{name}:make", "--input-fn", f"{name}:inputs",
                 "--layer", "net.layer3", "--n", "24", "--samples", "2", "--dry-run", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert "layer net.layer3" in capsys.readouterr().out


def test_write_report_from_a_result_equals_the_cli_pictures(ckpts, timeline, tmp_path):  # noqa: F811
    from gan_monitor.dissection.pipeline import dissect
    from gan_monitor.report.full_report import write_report
    from gan_monitor.toyworld.gan import load_toygan
    from gan_monitor.toyworld.segmenter import load_segmenter

    generator = load_toygan(str(ckpts / "late.ckpt")).generator
    result = dissect(generator, LAYERS, load_segmenter(), n=N, seed=3, topk=5)
    page = write_report(result, generator, tmp_path / "api")
    assert page == tmp_path / "api" / "index.html" and page.is_file()
    html = page.read_text()
    for layer in LAYERS:
        units = result[layer].num_units
        made = sorted((tmp_path / "api" / "dissection" / "units" / layer).glob("unit_*.png"))
        assert len(made) == units and f"dissection/units/{layer}/unit_0.png" in html
        for u in (0, units - 1):  # the same pictures as `gan-monitor dissect` drew
            assert (tmp_path / "api" / "dissection" / "units" / layer / f"unit_{u}.png").read_bytes() == \
                (timeline / "late" / "units" / layer / f"unit_{u}.png").read_bytes()
    assert json.loads((tmp_path / "api" / "run.json").read_text())["state"] == "finished"
    assert main(["report", str(tmp_path / "api")]) == 0 and main(["compare", str(tmp_path / "api")]) == 0
    with pytest.raises(Exception, match="--overwrite"):  # another result into the same folder
        write_report(dissect(generator, LAYERS, load_segmenter(), n=N, seed=4, topk=5), generator, tmp_path / "api")
    given = dissect(generator, "layer3", load_segmenter(), inputs=torch.randn(N, 16), topk=5)
    with pytest.raises(ValueError, match="inputs="):
        write_report(given, generator, tmp_path / "given")


def test_report_without_pictures_says_how_to_get_them(timeline, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "only_json"
    folder.mkdir()
    shutil.copy(timeline / "late" / "dissection.json", folder / "dissection.json")
    assert main(["report", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no unit pictures" in err and "write_report" in err and "--no-pictures" in err, err
    assert not (folder / "index.html").exists()
    assert main(["report", str(folder), "--no-pictures"]) == 0 and (folder / "index.html").is_file()
