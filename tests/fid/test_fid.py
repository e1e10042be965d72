"""Per-unit FID and artifact units (gan_monitor.fid.unit_fid, gan_monitor.fid.features,
gan_monitor.report.tensorboard): agreement with torchmetrics' FrechetInceptionDistance,
top-k selection against a brute-force sort, a planted artifact unit, the toy GAN
at a checkpoint, bad inputs."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from gan_monitor import artifact_ablation, dissect, per_unit_fid
from gan_monitor.fid.features import (
    InceptionFeatures,
    ModuleFeatures,
    RealStats,
    ToySceneFeatures,
    extract_features,
    toy_real_stats,
)
from gan_monitor.fid.unit_fid import covariance_factor, per_unit_fid_layers, unit_frechet_distances, unrealistic_units
from gan_monitor.report.tensorboard import write_artifact_ablation, write_unit_fid
from gan_monitor.toyworld.gan import ToyGAN, load_toygan
from gan_monitor.toyworld.scenes import render_scenes

from planted_world import PlantedGenerator, PlantedSegmenter

torch.set_num_threads(1)


def torchmetrics_fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Independent reference: torchmetrics' FID with an identity feature module."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(nn.Module):
        num_features = real_feats.shape[1]

        def forward(self, x):
            return x

    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(real_feats.double(), real=True)
    metric.update(fake_feats.double(), real=False)
    return float(metric.compute())


# ---------------------------------------------------------------- exactness

@pytest.mark.parametrize("k", [2, 5, 13, 40])  # k - 1 < d ((k-1) x (k-1) Gram matrices), = d, > d (d x d)
@pytest.mark.parametrize("small_memory", [False, True])  # True: one unit per chunk
def test_batched_unit_fid_equals_torchmetrics(k, small_memory, monkeypatch):
    if small_memory:
        monkeypatch.setattr("gan_monitor.fid.frechet.CHUNK_BYTES", 2000)
    gen = torch.Generator().manual_seed(0)
    d = 12
    real = torch.randn(400, d, generator=gen, dtype=torch.float64) @ torch.randn(d, d, generator=gen).double()
    pool = torch.randn(200, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    index = torch.stack([torch.randperm(200, generator=gen)[:k] for _ in range(6)])
    stats = RealStats.from_features(real, "identity")
    ours = unit_frechet_distances(pool, index, stats)
    for u in range(6):
        ref = torchmetrics_fid(real, pool[index[u]])  # the issue asks for 1e-3; both are float64
        assert abs(float(ours[u]) - ref) <= 1e-6 * abs(ref), (u, float(ours[u]), ref)


def test_singular_real_covariance_falls_back_to_the_square_root():
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    real[:, 2] = 0.5  # a feature that never varies, and one that copies another: rank 4
    real[:, 5] = real[:, 0]
    pool = torch.randn(80, 6, generator=gen, dtype=torch.float64) + 0.2
    stats = RealStats.from_features(real, "identity")
    factor = covariance_factor(stats.cov)
    assert not torch.equal(factor, torch.tril(factor))  # not Cholesky: the symmetric square root
    torch.testing.assert_close(factor @ factor.T, stats.cov, rtol=0, atol=1e-12)
    cholesky = covariance_factor(torch.cov(pool.T))
    assert torch.equal(cholesky, torch.tril(cholesky))
    index = torch.stack([torch.randperm(80, generator=gen)[:20] for _ in range(3)])
    ours = unit_frechet_distances(pool, index, stats)
    for u in range(3):
        ref = torchmetrics_fid(real, pool[index[u]])
        assert abs(float(ours[u]) - ref) <= 1e-6 * abs(ref), (u, float(ours[u]), ref)


class TinyGenerator(nn.Module):
    """z [N, 8] -> layer "feat" [N, 6, 2, 2] -> images [N, 3, 4, 4]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(8, 6 * 4)
        self.feat = nn.Identity()
        self.to_rgb = nn.Conv2d(6, 3, 1)
        self.latent_dim = 8

    def forward(self, z):
        r = self.feat(self.fc(z).view(-1, 6, 2, 2))
        return torch.tanh(self.to_rgb(F.interpolate(r, scale_factor=2.0)))


def test_per_unit_fid_end_to_end_matches_brute_force_topk_and_torchmetrics():
    g = TinyGenerator()
    flat = ModuleFeatures(nn.Flatten(), name="pixels")  # d = 48
    real_images = torch.rand(300, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    stats = RealStats.from_images(real_images.split(64), flat)
    g.train()
    rng = torch.get_rng_state()
    res = per_unit_fid(g, "feat", pool=250, k=60, real_stats=stats, extractor=flat, seed=5, batch_size=37)
    assert torch.equal(torch.get_rng_state(), rng) and g.training  # global RNG and mode left alone
    assert (res.pool, res.k, res.extractor, res.real_count) == (250, 60, "pixels", 300)
    z = torch.randn(250, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        images, peaks = g(z), g.fc(z).view(-1, 6, 4).amax(2)  # brute force, batch of all 250
    feats = images.flatten(1).double()
    for u in range(6):
        order = sorted(range(250), key=lambda i: -float(peaks[i, u]))[:60]
        assert res.topk[u].tolist() == order
    for u in (0, 2, 5):
        ref = torchmetrics_fid(real_images.flatten(1), feats[res.topk[u]])
        assert abs(float(res.fid[u]) - ref) <= 1e-3 * ref
    assert abs(res.pool_fid - torchmetrics_fid(real_images.flatten(1), feats)) <= 1e-3 * res.pool_fid
    assert res.ranked_units()[0] == int(res.fid.argmax())
    assert "| 1 |" in res.table()


def test_real_stats_streaming_cache_and_round_trip(tmp_path):
    feats_module = ModuleFeatures(nn.Flatten(), name="pixels")
    images = torch.randn(90, 3, 2, 2, generator=torch.Generator().manual_seed(2)) * 3 + 100
    stats = RealStats.from_images([(b, None) for b in images.split(17)], feats_module, source="x")
    flat = images.flatten(1).double()
    assert torch.allclose(stats.mean, flat.mean(0), atol=1e-10)
    assert torch.allclose(stats.cov, torch.cov(flat.T), atol=1e-9)
    path = tmp_path / "stats.pt"
    calls = []

    def render():
        calls.append(1)
        return images.split(30)

    a = RealStats.cached(path, render, feats_module, source="x")
    b = RealStats.cached(path, render, feats_module, source="x")  # cache hit: nothing rendered
    assert len(calls) == 1 and b.count == 90 and torch.equal(a.cov, b.cov) and b.extractor == "pixels"
    RealStats.cached(path, render, feats_module, source="other images")
    assert len(calls) == 2


# ------------------------------------------------------ planted artifact unit

class ArtifactGenerator(nn.Module):
    """z [N, 1 + U]: z[:, 0] picks a real toy scene from a bank; layer "units" is
    relu(z[:, 1:]) on a 4x4 grid. Unit ARTIFACT, when active, paints a fixed noise
    pattern over the image in proportion to its activation; other units do nothing."""

    ARTIFACT, UNITS = 3, 10

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.register_buffer("bank", bank)
        self.register_buffer("noise", torch.randn(3, *bank.shape[-2:], generator=torch.Generator().manual_seed(9)))
        self.units = nn.ReLU()
        self.latent_dim = 1 + self.UNITS

    def forward(self, z):
        r = self.units(z[:, 1:, None, None].expand(-1, -1, 4, 4).contiguous())
        idx = (torch.special.ndtr(z[:, 0]) * self.bank.shape[0]).long().clamp(0, self.bank.shape[0] - 1)
        gate = r[:, self.ARTIFACT].mean((1, 2)).clamp(max=2).view(-1, 1, 1, 1)
        return (self.bank[idx] + 0.5 * gate * self.noise).clamp(-1, 1)


@pytest.fixture(scope="module")
def toy32():
    extractor = ToySceneFeatures(size=32)
    return extractor, toy_real_stats(240, seed=11, size=32, extractor=extractor)


def test_planted_artifact_unit_ranks_first_and_its_ablation_repairs(toy32):
    extractor, stats = toy32
    g = ArtifactGenerator(render_scenes(120, seed=4, size=32)[0])
    res = per_unit_fid(g, "units", pool=240, k=30, real_stats=stats, extractor=extractor, seed=1)
    assert res.artifact_units(1) == [ArtifactGenerator.ARTIFACT]
    others = torch.cat([res.fid[:3], res.fid[4:]])
    assert float(res.fid[3]) > 2 * float(others.max())
    table = artifact_ablation(g, "units", [ArtifactGenerator.ARTIFACT], real_stats=stats, extractor=extractor,
                              n=160, n_random_draws=3, seed=2)
    print(res.table(), table, sep="\n")
    assert len(table.random) == 3 and all(ArtifactGenerator.ARTIFACT not in u for u in table.random_units)
    gain_artifact = table.before - table.ablated
    gain_random = table.before - table.random_mean
    assert gain_artifact > 0.4 * table.before
    assert gain_artifact > 5 * abs(gain_random) + 1e-6
    assert "artifact units ablated" in str(table)


# ------------------------------------------------------ toy GAN at a checkpoint

def test_toygan_checkpoint_evaluation_logs_three_scalars(tmp_path, toy32):
    extractor, stats = toy32
    pl.seed_everything(0, verbose=False)
    model = ToyGAN(latent_dim=16, image_size=32, g_channels=(32, 16, 8), d_channels=(8, 16, 32),
                   batch_size=4, num_scenes=8)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model)
    ckpt = tmp_path / "toygan.ckpt"
    trainer.save_checkpoint(ckpt)
    g = load_toygan(str(ckpt)).generator
    fids = per_unit_fid_layers(g, ["layer2", "layer3"], pool=120, k=20, real_stats=stats, extractor=extractor)
    res = fids["layer2"]
    assert res.num_units == 16 and torch.isfinite(res.fid).all() and (res.fid > 0).all()
    table = artifact_ablation(g, "layer2", res.artifact_units(3), real_stats=stats, extractor=extractor,
                              n=100, n_random_draws=2)
    writer = SummaryWriter(str(tmp_path / "tb"))
    write_unit_fid(writer, res, step=7, generator=g, n_units=3, n_images=4)
    write_artifact_ablation(writer, table, step=7)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    expected = {"before": table.before, "artifacts_ablated": table.ablated, "random_ablated": table.random_mean}
    for name, value in expected.items():
        (event,) = events.Scalars(f"gan_monitor/layer2/fid_{name}")
        assert event.step == 7 and abs(event.value - value) <= 1e-4 * abs(value)
    assert "gan_monitor/layer2/unit_fid" in tags["histograms"]
    assert "gan_monitor/layer2/artifact_units" in tags["images"]


# ------------------------------------------------------------------ bad inputs

def test_bad_inputs_give_clear_errors(toy32, tmp_path):
    extractor, stats = toy32
    g = TinyGenerator()
    flat = ModuleFeatures(nn.Flatten(), name="pixels")
    stats48 = RealStats.from_images([torch.rand(100, 3, 4, 4)], flat)
    with pytest.raises(ValueError, match="pool of 50"):
        per_unit_fid(g, "feat", pool=50, k=60, real_stats=stats48, extractor=flat)
    few = RealStats.from_images([torch.rand(40, 3, 4, 4)], flat)  # 40 images, d = 48
    with pytest.raises(ValueError, match="rank at most n - 1"):
        per_unit_fid(g, "feat", pool=50, k=10, real_stats=few, extractor=flat)
    with pytest.raises(ValueError, match=r"must return \[N, d\]"):
        per_unit_fid(g, "feat", pool=50, k=10, real_stats=stats48, extractor=ModuleFeatures(nn.Identity(), "pixels"))
    with pytest.raises(ValueError, match="extractor 'toy-segmenter"):
        per_unit_fid(g, "feat", pool=50, k=10, real_stats=stats, extractor=flat)
    with pytest.raises(KeyError, match="no layer named"):
        per_unit_fid(g, "nope", pool=50, k=10, real_stats=stats48, extractor=flat)
    with pytest.raises(IndexError, match="do not exist"):
        artifact_ablation(g, "feat", [9], real_stats=stats48, extractor=flat, n=20)
    with pytest.raises(ValueError, match="cannot draw 4 random units"):
        artifact_ablation(g, "feat", [0, 1, 2, 3], real_stats=stats48, extractor=flat, n=20)


def test_inception_is_optional_and_quantises_to_uint8(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        InceptionFeatures(tmp_path / "missing.pth")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not used")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torch-fidelity"):
            InceptionFeatures(weights)

    class StandIn(nn.Module):  # takes uint8 like torch-fidelity's network
        def forward(self, x):
            assert x.dtype == torch.uint8
            return x.float().mean((2, 3))

    feats = extract_features(InceptionFeatures.from_network(StandIn()),
                             torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2))
    assert feats[:, 0].tolist() == [0.0, 128.0, 255.0]


def test_inception_features_equal_torch_fidelity_network(tmp_path, monkeypatch):
    """Only where torch-fidelity is importable: InceptionFeatures(weights_path) against
    torch-fidelity's FeatureExtractorInceptionV3 built from the same (randomly
    initialised, locally saved: nothing downloads) weights, on uint8 images. Checked
    on the development machine in a separate venv (torch 2.13.0 CPU, torchmetrics 1.9.0,
    torch-fidelity 0.4.0 --no-deps; PyPI's torchvision needs a CUDA torch and cannot
    load there) with torch_fidelity/__init__ skipped, as it imports torchvision."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    net_class = fidelity.FeatureExtractorInceptionV3
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:  # build the architecture without loading any weights
        patch.setattr(fidelity, "load_state_dict_from_url", None)  # a download would fail loudly
        patch.setattr(net_class, "load_state_dict", lambda self, state, *args, **kwargs: None)
        torch.manual_seed(0)
        random_net = net_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    for module in random_net.modules():  # variance-preserving: default init lets activations vanish (~1e-8)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    weights = tmp_path / "random-inception.pth"
    torch.save(random_net.state_dict(), weights)
    ours = InceptionFeatures(weights)
    reference = net_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(1)) * 2.2 - 1.1  # some clipped
    feats = extract_features(ours, images)
    as_uint8 = torch.floor((images.clamp(-1, 1) + 1) / 2 * 255 + 0.5).to(torch.uint8)  # independent quantiser
    (expected,) = reference(as_uint8)
    assert feats.shape == (3, 2048) and ours.name == "inception-v3-pool3"
    assert (expected[0] - expected[1]).abs().max() > 1e-2 and not ours.training  # features tell images apart
    torch.testing.assert_close(feats, expected.double(), rtol=1e-5, atol=1e-6)
    smooth = InceptionFeatures(weights, antialias=True)  # torchmetrics' own resize: other features, other name
    assert smooth.name == "inception-v3-pool3-antialias"
    assert (extract_features(smooth, images) - feats).abs().max() > 1e-3


# ------------------------------------------------------- unrealistic-unit filter

def test_dissection_leaves_unrealistic_units_out_of_labelling():
    g = PlantedGenerator(counts={"planted": 10, "noise": 6})
    seg = PlantedSegmenter(multilabel=True)
    plain = dissect(g, "features", seg, n=120, seed=1, batch_size=60)["features"]
    fids = torch.zeros(16, dtype=torch.float64)
    fids[[0, 1, 12]] = 50.0
    unrealistic = unrealistic_units(fids, 10.0, 16)
    assert unrealistic.tolist() == [u in (0, 1, 12) for u in range(16)]
    filtered = dissect(g, "features", seg, n=120, seed=1, batch_size=60,
                       exclude_units={"features": unrealistic})["features"]
    assert bool(plain.interpretable[0]) and bool(plain.interpretable[1])
    expected = plain.interpretable.clone()
    expected[[0, 1, 12]] = False
    assert torch.equal(filtered.interpretable, expected)
    assert torch.equal(filtered.unit_iou, plain.unit_iou)
    assert filtered.extras["excluded"][:3] == [True, True, False]
    assert filtered.settings["excluded_units"] == 3
    with pytest.raises(TypeError, match="exclude_units"):  # the keywords of release 0.1 say how to migrate
        dissect(g, "features", seg, n=20, unit_fid={"features": fids}, max_unit_fid=10.0)
    with pytest.raises(ValueError, match="16 units but 3"):
        unrealistic_units([1.0, 2.0, 3.0], 1.0, 16, "features")
