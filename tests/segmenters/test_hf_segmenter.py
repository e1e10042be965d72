"""The transformers adapter on tiny random SegFormer / UperNet models saved in a temporary
folder (nothing downloaded): preprocessing equals the model's own image processor,
label mapping and categories, shapes and resizing, batch-size invariance, gradients,
devices, the Mask2Former post-processing against a per-pixel loop, and clear errors."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from gan_monitor.segmenters.huggingface import HFSegmenter  # noqa: E402

from tiny_hf_models import ade_id2label, make_segformer, make_upernet  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"segformer": make_segformer(root / "segformer", ade_id2label()),
            "upernet": make_upernet(root / "upernet", {0: "background", 1: "cat", 2: "dog", 3: "cat"})}


@pytest.fixture(scope="module")
def segformer(folders):
    return HFSegmenter.from_pretrained(folders["segformer"])


@pytest.fixture(scope="module")
def upernet(folders):
    return HFSegmenter.from_pretrained(folders["upernet"])


def _images(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def test_ade20k_concepts_and_categories(segformer):
    assert segformer.is_ade20k and len(segformer.concepts) == 151 == len(segformer.categories)
    c = segformer.concepts
    assert c[:4] == ["-", "wall", "building", "sky"]
    assert c[7] == "road" and c[8] == "bed" and c[9] == "windowpane"  # first synonym, stripped
    expected = {"sky": "stuff", "tree": "object", "door": "part", "grass": "material", "person": "object",
                "windowpane": "part", "water": "material", "floor": "stuff"}
    assert {name: segformer.categories[c.index(name)] for name in expected} == expected
    assert set(segformer.categories[1:]) == {"object", "part", "material", "stuff"}


def test_background_class_duplicates_and_user_categories(folders, upernet):
    # class 0 "background" is concept 0; the other classes follow; duplicate names made unique
    assert upernet.concepts == ["-", "cat", "dog", "cat_2"] and upernet.categories == ["-"] + ["object"] * 3
    assert not upernet.is_ade20k
    x = _images(2, 24, 24)
    scores = upernet(x)
    assert torch.equal(upernet.segment(x), torch.tensor([0, 1, 2, 3])[scores.argmax(1)])
    probs = upernet.probabilities(x)
    assert torch.allclose(probs, scores.softmax(1))  # same column order here: background = column 0
    seg = HFSegmenter.from_pretrained(folders["upernet"], categories={"dog": "animal"}, background=None)
    assert seg.concepts == ["-", "background", "cat", "dog", "cat_2"]
    assert seg.categories == ["-", "object", "object", "animal", "object"]
    assert torch.equal(seg.segment(x), scores.argmax(1) + 1)
    assert torch.allclose(seg.probabilities(x)[:, 0], torch.zeros(()))
    with pytest.raises(ValueError, match="not classes of the model"):
        HFSegmenter.from_pretrained(folders["upernet"], categories={"zebra": "animal"})
    with pytest.raises(ValueError, match="150 ADE20K classes"):
        HFSegmenter.from_pretrained(folders["upernet"], categories="ade20k")


def test_preprocessing_equals_the_image_processor(folders, segformer, upernet):
    from transformers import AutoImageProcessor

    for folder, seg, (h, w) in [("segformer", segformer, (64, 64)), ("segformer", segformer, (37, 50)),
                                ("segformer", segformer, (100, 90)), ("upernet", upernet, (40, 60))]:
        proc = AutoImageProcessor.from_pretrained(folders[folder])
        pixels = (torch.rand(h, w, 3) * 255).round().to(torch.uint8)
        expected = proc(images=[Image.fromarray(pixels.numpy())], return_tensors="pt")["pixel_values"]
        got, _ = seg._model_input(pixels.permute(2, 0, 1)[None].float() / 127.5 - 1)
        assert got.shape == expected.shape
        # identical without a resize; with one, PIL rounds to uint8 (one grey level = 0.0171 after / std)
        tol = 1e-5 if (h, w) == (64, 64) else 0.02
        assert (got - expected).abs().max() < tol, (folder, h, w)
    assert upernet._model_input(_images(1, 40, 60))[0].shape[-2:] == (48, 72)  # shortest edge 48, aspect kept


def test_logits_resized_to_requested_resolution(folders, segformer):
    from transformers import AutoModelForSemanticSegmentation

    x = _images(2, 40, 48)
    model = AutoModelForSemanticSegmentation.from_pretrained(folders["segformer"]).eval()
    pixels, _ = segformer._model_input(x)
    raw = model(pixel_values=pixels).logits
    assert raw.shape[-2:] == (16, 16)  # SegFormer predicts at 1/4 of its 64x64 input
    expected = torch.nn.functional.interpolate(raw, size=(40, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(segformer(x), expected, atol=1e-5)
    labels = segformer.segment(x)
    assert labels.shape == (2, 40, 48) and labels.dtype == torch.long
    assert torch.equal(labels, expected.argmax(1) + 1) and labels.min() >= 1 and labels.max() <= 150
    probs = segformer.probabilities(x)
    assert probs.shape == (2, 151, 40, 48) and torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)
    assert torch.allclose(probs[:, 0], torch.zeros(()))
    small = HFSegmenter.from_pretrained(folders["segformer"], output_size=(10, 12))
    assert small.segment(x).shape == (2, 10, 12) and small.probabilities(x).shape == (2, 151, 10, 12)
    fixed = HFSegmenter.from_pretrained(folders["segformer"], input_size=32)
    assert fixed._model_input(x)[0].shape[-2:] == (32, 32)


def test_batch_size_invariance(folders, segformer):
    x = _images(5, 32, 32, seed=3)
    whole = segformer.probabilities(x)
    one_by_one = torch.cat([segformer.probabilities(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(whole, one_by_one, atol=1e-5)
    chunked = HFSegmenter.from_pretrained(folders["segformer"], batch_size=2)
    assert torch.allclose(chunked.probabilities(x), whole, atol=1e-5)
    assert torch.equal(chunked.segment(x), segformer.segment(x))


def test_gradients_flow_through_probabilities(segformer):
    x = _images(2, 32, 32).requires_grad_(True)
    segformer.train()  # the adapter stays in eval mode whatever a caller asks
    assert not segformer.training and not segformer.model.training
    segformer.probabilities(x)[:, 5].mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in segformer.model.parameters())


def test_devices_and_dtypes(folders):
    seg = HFSegmenter.from_pretrained(folders["segformer"]).to("cpu")
    x = _images(2, 32, 32)
    ref = seg.probabilities(x)
    assert torch.allclose(seg.probabilities(x.double()), ref, atol=1e-5)  # cast to the model's dtype
    double = HFSegmenter.from_pretrained(folders["segformer"], dtype=torch.float64)
    assert next(double.model.parameters()).dtype == torch.float64
    assert torch.allclose(double.probabilities(x), ref, atol=1e-4) and double.probabilities(x).dtype == torch.float32
    if torch.cuda.is_available():
        gpu = HFSegmenter.from_pretrained(folders["segformer"], device="cuda")
        assert next(gpu.model.parameters()).is_cuda and gpu._mean.is_cuda
        assert gpu.segment(x).device.type == "cpu"  # results come back on the images' device
        assert torch.allclose(gpu.probabilities(x.cuda()).cpu(), ref, atol=1e-3)


class _StubMask2Former(torch.nn.Module):
    """Emits Mask2Former-style outputs computed from the pixels; records input shapes."""

    def __init__(self, queries=4, classes=3):
        super().__init__()
        self.config = SimpleNamespace(id2label={i: f"class{i}" for i in range(classes)})
        self.cls = torch.nn.Linear(3, queries * (classes + 1))
        self.mask = torch.nn.Conv2d(3, queries, 3, padding=1)
        self.queries, self.classes, self.shapes = queries, classes, []

    def forward(self, pixel_values):
        self.shapes.append(tuple(pixel_values.shape))
        pooled = pixel_values.mean((2, 3))
        small = torch.nn.functional.avg_pool2d(pixel_values, 4)
        return SimpleNamespace(class_queries_logits=self.cls(pooled).view(-1, self.queries, self.classes + 1),
                               masks_queries_logits=self.mask(small))


def test_mask2former_post_processing_against_a_loop():
    torch.manual_seed(0)
    stub = _StubMask2Former()
    seg = HFSegmenter(stub, {"size": {"shortest_edge": 20}, "size_divisor": 32, "image_mean": [0.5] * 3,
                             "image_std": [0.5] * 3, "image_processor_type": "Mask2FormerImageProcessor"})
    x = _images(2, 20, 30)
    labels, probs = seg.segment(x), seg.probabilities(x)
    assert stub.shapes[-1] == (2, 3, 32, 32)  # 20x30 padded to multiples of 32
    out = stub(seg._model_input(x)[0])
    cls_p = out.class_queries_logits.softmax(-1)
    mask_p = out.masks_queries_logits.sigmoid()  # [2, Q, 8, 8] for the padded 32x32 input
    scores = torch.zeros(2, 3, 8, 8)
    for n in range(2):
        for c in range(3):
            for q in range(stub.queries):
                scores[n, c] += cls_p[n, q, c] * mask_p[n, q]
    up = torch.nn.functional.interpolate(scores, size=(32, 32), mode="bilinear", align_corners=False)[..., :20, :30]
    assert torch.equal(labels, up.argmax(1) + 1)
    assert torch.allclose(probs[:, 1:], up / up.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)


def test_clear_errors(folders, tmp_path, segformer):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HFSegmenter.from_pretrained(tmp_path / "missing_model")
    bare = tmp_path / "bare"
    from transformers import AutoModelForSemanticSegmentation

    AutoModelForSemanticSegmentation.from_pretrained(folders["upernet"]).save_pretrained(bare)
    with pytest.raises(OSError, match="preprocessor_config.json"):
        HFSegmenter.from_pretrained(bare)
    seg = HFSegmenter.from_pretrained(bare, preprocessing={"size": {"height": 32, "width": 32}})
    assert seg.pre.fixed_size == (32, 32) and seg.pre.mean is None and abs(seg.pre.scale - 1) < 1e-9
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        segformer.segment(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        segformer.segment(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
