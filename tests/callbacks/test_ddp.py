"""Distributed dissection: 2 CPU processes (gloo) give exactly the result of one process.

* ``dissect(distributed=...)`` in processes started by ``torch.multiprocessing``: IoU
  matrices, thresholds, labels and top samples identical to one process, both
  threshold modes, on the planted world (its sparse and dead units exercise the
  exact re-computation of tied quantiles); a rank whose segmenter raises makes every
  rank raise an error that names it, without hanging.
* ``DissectionMonitor`` under ``Trainer(strategy="ddp_spawn", devices=2)``: every rank
  holds the same history, equal to one process dissecting rank 0's generator; a rank
  whose segmenter raises: a warning naming it, training finishes on every rank.
* ``gan-monitor dissect --devices 2`` writes what ``--devices 1`` writes.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from gan_monitor.callbacks.distributed_dissection import share_unit_fids
from gan_monitor.cli.main import main
from gan_monitor.core import distributed
from gan_monitor.core.distributed import keys_to_values, ordered_keys
from gan_monitor.core.inputs import make_inputs
from gan_monitor.dissection.pipeline import dissect
from gan_monitor.dissection.thresholds.modes import IQR, Quantile
from gan_monitor.fid.unit_fid import unrealistic_units
from gan_monitor.report.tensorboard import scalar_metrics
from gan_monitor.toyworld.gan import ToyGAN

from planted_world import PlantedGenerator, PlantedSegmenter
from test_callback import N_HELD_OUT, ColorSegmenter, TinyGAN, TinyGenerator, monitor

HERE = Path(__file__).parent
slow = pytest.mark.slow  # several processes; registered in conftest.py, run by `make test` and CI
FIELDS = ("thresholds", "iou", "label_index", "unit_iou", "interpretable", "topk", "topk_values")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_result(a, b):
    assert list(a.layers) == list(b.layers)
    assert a.settings == b.settings
    for name in a.layers:
        for field in FIELDS:
            x, y = getattr(a[name], field), getattr(b[name], field)
            assert x.dtype == y.dtype and torch.equal(x, y), (name, field)
        assert a[name].settings == b[name].settings and a[name].extras == b[name].extras


# ---- the communicator alone ---------------------------------------------------------------
def test_single_process_communicator_is_the_identity():
    comm = distributed.resolve(None)
    t = torch.arange(5)
    assert comm.rank == 0 and comm.world_size == 1
    assert comm.sum(t) is t and comm.gather(t)[0] is t and comm.broadcast(t) is t
    assert comm.vote(None) == {} and comm.vote("boom") == {0: "boom"}
    with pytest.raises(KeyError):  # one process: errors propagate unchanged
        distributed.run_phase(comm, "work", lambda: {}["missing"])
    with pytest.raises(TypeError, match="communicator"):
        distributed.resolve("gloo")


def test_order_preserving_keys_of_the_exact_quantile_search():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(5000, generator=g) * 10 ** torch.randint(-30, 30, (5000,), generator=g),
                        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45])])
    keys = ordered_keys(values)
    assert keys.dtype == torch.int64 and torch.equal(keys_to_values(keys), values + 0.0)
    i, j = torch.randint(len(values), (2, 20000), generator=g)  # brute force: every sampled pair in order
    assert torch.equal(keys[i] < keys[j], values[i] < values[j])
    assert torch.equal(keys[i] == keys[j], values[i] == values[j])


# ---- dissect() in 2 processes -------------------------------------------------------------
def _config(threshold: str):
    class FailingSegmenter(PlantedSegmenter):
        def segment(self, images):
            raise RuntimeError("segmenter exploded")

    torch.manual_seed(0)
    generator = PlantedGenerator({"planted": 10, "sky": 2, "noise": 8, "sparse": 3, "dead": 1})
    segmenter = PlantedSegmenter(multilabel=True)
    mode = IQR(n=29, subsample=4096) if threshold.startswith("iqr") else Quantile()
    kwargs = dict(n=37, seed=5, threshold=mode, batch_size=8, topk=3)
    if threshold.endswith("streaming"):  # budget forced low: regenerates instead of caching
        kwargs["memory_budget"] = 1
    return generator, segmenter, FailingSegmenter(multilabel=True), kwargs


class CountingCommunicator:
    """Wraps a communicator and counts the bytes this rank puts into each collective
    (a gather: an 80-byte header and the largest rank's payload, which every rank pads to)."""

    def __init__(self, inner):
        self.inner, self.rank, self.world_size, self.sent = inner, inner.rank, inner.world_size, {}

    def _count(self, op, n):
        self.sent[op] = self.sent.get(op, 0) + int(n)

    def sum(self, t):
        self._count("all-reduce", t.numel() * t.element_size())
        return self.inner.sum(t)

    def broadcast(self, t, src=0):
        self._count("broadcast", t.numel() * t.element_size())
        return self.inner.broadcast(t, src)

    def gather(self, t):
        parts = self.inner.gather(t)
        self._count("gather", 80 + max(p.numel() for p in parts) * t.element_size())
        return parts

    def vote(self, error):
        self._count("all-reduce", 8 * self.world_size)
        return self.inner.vote(error)


def _dissect_worker(rank, world, port, out):
    """Each rank: both threshold modes, then a dissection whose segmenter raises on rank 1."""

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        comm = distributed.TorchDistributed()
        for threshold in ("quantile", "iqr", "streaming", "iqr-streaming"):
            generator, segmenter, _, kwargs = _config(threshold)
            result = dissect(generator, ["features"], segmenter, distributed=comm, **kwargs)
            torch.save({"result": result}, Path(out) / f"{threshold}{rank}.pt")
        counting = CountingCommunicator(comm)  # the README's formula for iqr mode
        generator, segmenter, _, kwargs = _config("iqr")
        dissect(generator, ["features"], segmenter, distributed=counting, **kwargs)
        torch.save(counting.sent, Path(out) / f"bytes{rank}.pt")
        generator, segmenter, failing, kwargs = _config("quantile")
        try:
            dissect(generator, ["features"], failing if rank == 1 else segmenter, distributed=comm, **kwargs)
        except distributed.RankFailure as err:
            (Path(out) / f"failure{rank}.txt").write_text(str(err))
        # still in step after the failure: one more collective succeeds on both ranks
        assert comm.sum(torch.ones(1, dtype=torch.long)).item() == world
        # the monitor's unrealistic-unit filter: rank 0's per-unit FIDs reach every rank
        fids = {"a": torch.arange(5.0, dtype=torch.float64), "b": torch.tensor([7.0, 8.0], dtype=torch.float64)}
        schedule = SimpleNamespace(filters_units=True, layers=["a", "b"], fids=fids if rank == 0 else {},
                                   last_step=12 if rank == 0 else None, last_batches=6 if rank == 0 else None)
        share_unit_fids(schedule, comm)
        excluded = {name: unrealistic_units(f, 4.0, f.numel(), name) for name, f in schedule.fids.items()}
        torch.save({"excluded": excluded, "state": (schedule.fids, schedule.last_step, schedule.last_batches)},
                   Path(out) / f"fid{rank}.pt")
        (Path(out) / f"done{rank}").write_text("ok")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    mp.spawn(_dissect_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@slow
@pytest.mark.parametrize("threshold", ["quantile", "iqr", "streaming", "iqr-streaming"])
def test_two_processes_equal_one(two_ranks, threshold):
    generator, segmenter, _, kwargs = _config(threshold)
    single = dissect(generator, ["features"], segmenter, **kwargs)
    for rank in range(2):
        got = torch.load(two_ranks / f"{threshold}{rank}.pt", weights_only=False)["result"]
        assert_same_result(got, single)
    if threshold.endswith("streaming"):  # and equal to the cached path
        path = "iqr_path" if threshold.startswith("iqr") else "quantile_path"
        assert single.settings[path] == "streaming"
        cached = dissect(generator, ["features"], segmenter, **{k: v for k, v in kwargs.items() if k != "memory_budget"})
        assert cached.settings[path] == "cached"
        for field in FIELDS:
            assert torch.equal(getattr(cached["features"], field), getattr(single["features"], field)), field
        assert cached["features"].extras == single["features"].extras
    ld = single["features"]
    assert int(ld.interpretable.sum()) >= 5  # the planted units are found: the comparison is not vacuous
    assert len(set(ld.topk.flatten().tolist())) > 3


@slow
def test_bytes_communicated_follow_the_readme_formula(two_ranks):
    generator, segmenter, _, kwargs = _config("iqr")
    world, n_layers, levels, k = 2, 1, 100, kwargs["topk"]
    units, concepts = len(generator.units), len(segmenter.concepts)
    categories = len(set(segmenter.categories[1:]))
    params = len(list(generator.parameters()))
    buffers = sum(b.numel() * b.element_size() for b in generator.buffers())
    per_unit = concepts + categories + 1
    expected = {
        "gather": 2 * (80 + 8 * (2 * params + 8))  # same generator and inputs (main and iqr sample)
        + 80 + 16  # segmentation size
        + 12 * k * units + 160,  # top images
        "all-reduce": 6 * 8 * world  # votes (one is the determinism check)
        + 8 * (units * per_unit + n_layers * (2 * concepts + categories + 2))  # unit x concept counts
        + 8 * (2 * concepts + 1 + 6 * 32 * 32)  # the sample's concept counts and diversity sums (32x32 images)
        + 256 * units * levels  # candidate levels by bisection
        + 8 * (units * per_unit * (levels + 1) + n_layers * per_unit),  # unit x concept x level counts
    }
    expected["broadcast"] = buffers + 8  # rank 0's buffers and its memory budget (every rank takes one path)
    for rank in range(2):
        assert torch.load(two_ranks / f"bytes{rank}.pt") == expected


@slow
def test_a_failing_rank_is_named_and_every_rank_gives_up(two_ranks):
    messages = [(two_ranks / f"failure{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    assert "rank 1 of 2" in messages[0] and "segmenter exploded" in messages[0]
    assert all((two_ranks / f"done{r}").exists() for r in range(2))


@slow
def test_rank_zero_unit_fids_reach_every_rank(two_ranks):
    zero, one = (torch.load(two_ranks / f"fid{r}.pt", weights_only=False) for r in range(2))
    assert one["excluded"].keys() == zero["excluded"].keys() == {"a", "b"}
    for name, expected in {"a": torch.arange(5.0), "b": torch.tensor([7.0, 8.0])}.items():
        assert torch.equal(one["excluded"][name], expected > 4.0)  # the same filter as rank 0's
        assert torch.equal(one["excluded"][name], zero["excluded"][name])
        assert torch.equal(one["state"][0][name], expected.double())
    assert one["state"][1:] == (12, 6)


# ---- DissectionMonitor under Trainer(strategy="ddp_spawn", devices=2) ------------------------
class RankOneFailsOnce:
    """The colour segmenter of test_callback, except that on rank 1 its 3rd call raises
    (the held-out shard of 12 samples takes 2 batches: the 2nd dissection fails there)."""

    concepts = ["-", "red", "green", "blue"]
    categories = ["-", "color", "material", "material"]

    def __init__(self):
        self.calls = 0

    def segment(self, images):
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.calls == 3:
            raise RuntimeError("segmenter exploded on purpose")
        return images.argmax(dim=1) + 1


class SaveRankState(pl.Callback):
    """Records each rank's gan_monitor warnings, and writes its monitor history, last result
    and generator at the end of training."""

    def __init__(self, monitor, out):
        self.monitor, self.out = monitor, out

    def setup(self, trainer, pl_module, stage=None):
        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def on_train_end(self, trainer, pl_module):
        mon = self.monitor
        torch.save({"history": mon.history, "result": mon.last_result, "failures": mon.failures,
                    "batches": mon.batches_seen, "generator": pl_module.generator.state_dict(),
                    "warnings": [str(w.message) for w in self.caught if "gan_monitor" in str(w.message)]},
                   Path(self.out) / f"rank{trainer.global_rank}.pt")


class DDPTinyGAN(TinyGAN):
    """test_callback's tiny GAN, picklable for ddp_spawn."""


def train_ddp(out: str) -> None:
    """Run by test_monitor_under_ddp_spawn in a subprocess (bounded by a timeout)."""

    torch.set_num_threads(1)
    mon = monitor(segmenter=RankOneFailsOnce(), every_n_steps=2, log_images=False)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2,
                         strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True,
                                              timeout=datetime.timedelta(seconds=60)),
                         callbacks=[mon, SaveRankState(mon, out)], logger=CSVLogger(out, name="csv", version=0),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    trainer.fit(DDPTinyGAN())


@slow
def test_monitor_under_ddp_spawn(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=os.pathsep.join(
        [str(HERE), str(HERE.parent), str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]))
    code = f"import test_ddp; test_ddp.train_ddp({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=150, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # same schedule on both ranks: 12 real images per rank, batches of 8 -> 2 batches per epoch;
    # dissections at the start and every 2 batches; the one at batch 2 failed on rank 1 -> on every rank
    for state in ranks:
        assert state["batches"] == 4 and state["failures"] == 1
        assert [h["step"] for h in state["history"]] == [0, 4]
        assert any("rank 1 of 2" in w and "segmenter exploded on purpose" in w for w in state["warnings"])

    def numbers(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert numbers(ranks[0]["history"]) == numbers(ranks[1]["history"])
    assert_same_result(ranks[0]["result"], ranks[1]["result"])
    # one process dissecting rank 0's final generator on the same held-out set gives the same result
    generator = TinyGenerator()
    generator.load_state_dict(ranks[0]["generator"])
    inputs = make_inputs(generator, N_HELD_OUT, 3)  # the monitor's held-out sample
    single = dissect(generator, ["layer1", "layer2"], ColorSegmenter(), inputs=inputs, seed=3, batch_size=8,
                     topk=2)
    assert_same_result(ranks[0]["result"], single)
    # rank 0 logged exactly those scalars through Lightning's logger
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gan_monitor/layer1/interpretable_units")]
    assert [int(r["step"]) for r in rows] == [0, 4]
    for tag, value in scalar_metrics(single).items():
        assert float(rows[-1][tag]) == value, tag


# ---- gan-monitor dissect --devices 2 ------------------------------------------------------------
@slow
def test_cli_devices_2_writes_what_devices_1_writes(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32), batch_size=8,
                   num_scenes=32)
    pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu").fit(model)
    ckpt = tmp_path / "toy.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 2,
                "pytorch-lightning_version": pl.__version__}, ckpt)
    outs = {}
    for devices in (1, 2):
        outs[devices] = tmp_path / f"devices{devices}"
        assert main(["dissect", str(ckpt), "--layers", "layer2,layer3", "--out", str(outs[devices]), "--n", "30",
                     "--seed", "3", "--threshold", "iqr", "--no-progress", "--devices", str(devices)]) == 0

    def files(root):  # TensorBoard event file names hold the time and process id; run.json the command line
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and "tensorboard" not in p.parts and p.name != "run.json"}

    runs = [json.loads((outs[d] / "run.json").read_text()) for d in (1, 2)]
    assert runs[0]["fingerprint"] == runs[1]["fingerprint"] and runs[0]["state"] == runs[1]["state"] == "finished"

    one, two = files(outs[1]), files(outs[2])
    assert one.keys() == two.keys() and any(k.endswith(".png") for k in one)
    assert all(one[k] == two[k] for k in one), [k for k in one if one[k] != two[k]]
    assert len(list((outs[2] / "tensorboard").glob("events.*"))) == 1
    assert main(["dissect", str(ckpt), "--layers", "layer2", "--out", str(tmp_path / "x"), "--devices", "0"]) == 2
