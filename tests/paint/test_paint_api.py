"""The painting server's API (FastAPI TestClient) on the planted world, whose tree units
draw trees where they are on (tests/intervention_world.py), and the `gan-monitor paint`
command on a randomly initialised toy GAN."""
from __future__ import annotations

import base64
import io
import json
import re
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the paint extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402
from intervention_world import BUILDING, DECOY, TREE, CausalGenerator, CausalSegmenter  # noqa: E402

import gan_monitor  # noqa: E402
from gan_monitor.cli.main import main as cli_main  # noqa: E402
from gan_monitor.dissection.results import DissectionResult  # noqa: E402
from gan_monitor.paint import make_app  # noqa: E402
from gan_monitor.paint.session import PaintSession, Stroke  # noqa: E402

TREE_INDEX = CausalSegmenter.concepts.index("tree")


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    g, s = CausalGenerator(), CausalSegmenter()
    result = gan_monitor.dissect(g, "features", s, n=200, seed=0, threshold="iqr")
    return g, s, result


@pytest.fixture(scope="module")
def session(world):
    g, s, result = world
    return PaintSession.create(g, "features", s, dissection=result, samples=6, max_samples=8, max_strokes=4)


@pytest.fixture(scope="module")
def client(session):
    return TestClient(make_app(session))


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def box(top, left, bottom, right, size=32):
    mask = [[0.0] * size for _ in range(size)]
    for y in range(top, bottom):
        for x in range(left, right):
            mask[y][x] = 1.0
    return mask


def tree_in(labels: torch.Tensor, mask) -> float:
    return float(((labels == TREE_INDEX).float() * torch.tensor(mask)).sum())


def find(session, want_tree: bool):
    """(sample id, 12x12 cell-aligned box in the top half) with / without trees in the original."""
    for sid in session.sample_ids:
        labels = session.sample(sid).labels[0]
        for top in (0, 4):
            for left in range(0, 24, 4):
                mask = box(top, left, top + 12, left + 8)
                t = tree_in(labels, mask)
                if (t >= 48) if want_tree else (t == 0):
                    return sid, mask
    raise AssertionError("no suitable sample")


def brute_force(g, session, sid, strokes):
    """The edited image computed by hand: features, the edit rule per stroke, the rest of the net."""
    r = g.features(session.sample(sid).inputs).clone()
    for concept, mode, mask in strokes:
        entry = session.concepts[concept]
        m = torch.nn.functional.avg_pool2d(torch.tensor(mask)[None, None], 4)[0, 0]  # 32x32 -> 8x8 cells
        for u in entry.units:
            k = float(entry.values[u]) if mode == "draw" else 0.0
            r[0, u] = r[0, u] * (1 - m) + k * m
    image = g.upsample(g.render(r))[0]
    return ((image.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).to(torch.uint8).numpy()


def test_info_lists_concepts_ranked_by_iou(client, world):
    info = client.get("/api/info").json()
    _, _, result = world
    ld = result["features"]
    assert info["layer"] == "features" and info["image_size"] == [32, 32] and info["layer_size"] == [8, 8]
    assert "IoU" in info["ranking"]
    concepts = {c["name"]: c for c in info["concepts"]}
    # brute force: interpretable units labelled with the concept, best IoU first (ties in unit order)
    for name, entry in concepts.items():
        c = ld.concepts.index(name)
        expected = sorted((u for u in range(ld.num_units) if ld.interpretable[u] and ld.label_index[u] == c),
                          key=lambda u: (-float(ld.unit_iou[u]), u))
        assert entry["units"] == expected[:20]
        assert entry["scores"] == [round(float(ld.unit_iou[u]), 4) for u in entry["units"]]
    assert set(concepts["tree"]["units"]) == set(TREE + DECOY) and concepts["building"]["units"][0] in BUILDING + [5]
    assert len(info["samples"]) == 6 and info["limits"]["max_strokes"] == 4


def test_units_per_concept_caps_the_list(world):
    g, s, result = world
    small = PaintSession.create(g, "features", s, dissection=result, units_per_concept=3, samples=1)
    assert len(small.concepts["tree"].units) == 3
    given = PaintSession.create(g, "features", s, dissection=result, units={"tree": [3, 1]}, ranking="causal effect",
                                samples=1)
    assert given.concepts["tree"].units == (3, 1) and given.ranking == "causal effect"


def test_drawing_trees_adds_tree_pixels_in_the_region(client, session, world):
    g = world[0]
    sid, mask = find(session, want_tree=False)
    reply = client.post("/api/edit", json={"sample": sid, "strokes": [
        {"concept": "tree", "mode": "draw", "mask": mask}]})
    assert reply.status_code == 200, reply.text
    change = reply.json()["change"]
    original = tree_in(session.sample(sid).labels[0], mask)
    assert change["original"] == change["before"] == original == 0
    assert change["after"] > 0.8 * change["region_pixels"] and change["change"] == change["after"]
    edited = decode(reply.json()["image"])
    assert np.abs(edited.astype(int) - brute_force(g, session, sid, [("tree", "draw", mask)])).max() <= 1
    # the reported count matches the segmentation of the returned image
    labels = session.segmenter.segment(torch.tensor(edited).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    assert tree_in(labels, mask) == change["after"]


def test_removing_trees_takes_tree_pixels_away(client, session, world):
    g = world[0]
    sid, mask = find(session, want_tree=True)
    reply = client.post("/api/edit", json={"sample": sid, "strokes": [
        {"concept": "tree", "mode": "remove", "mask": mask}]})
    assert reply.status_code == 200, reply.text
    change = reply.json()["change"]
    assert change["before"] == change["original"] >= 48
    assert change["after"] == 0 and change["change"] < 0
    assert np.abs(decode(reply.json()["image"]).astype(int)
                  - brute_force(g, session, sid, [("tree", "remove", mask)])).max() <= 1


def test_strokes_apply_in_order_and_the_change_is_the_last_strokes(client, session, world):
    g = world[0]
    sid, mask = find(session, want_tree=False)
    strokes = [{"concept": "tree", "mode": "draw", "mask": mask}, {"concept": "tree", "mode": "remove", "mask": mask}]
    reply = client.post("/api/edit", json={"sample": sid, "strokes": strokes}).json()
    change = reply["change"]
    assert change["before"] > 0.8 * change["region_pixels"] and change["after"] == 0 and change["change"] < 0
    expected = brute_force(g, session, sid, [("tree", "draw", mask), ("tree", "remove", mask)])
    assert np.abs(decode(reply["image"]).astype(int) - expected).max() <= 1
    # fewer units: the first 4 of the ranking (IoU ties keep unit order: the tree units 0-3, not the decoys)
    one = client.post("/api/edit", json={"sample": sid, "strokes": [
        {"concept": "tree", "mode": "draw", "mask": mask, "units": 4}]}).json()["change"]
    assert one["units"] == 4 and one["change"] > 0


def test_no_strokes_gives_the_original(client, session):
    sid = session.sample_ids[0]
    reply = client.post("/api/edit", json={"sample": sid, "strokes": []}).json()
    assert reply["change"] is None
    assert np.array_equal(decode(reply["image"]), decode(client.get(f"/api/samples/{sid}").json()["image"]))


@pytest.mark.parametrize("body, status, words", [
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": box(0, 0, 4, 4, size=16)}]}, 422,
     "32 rows of 32"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": [[0.0] * 31] * 32}]}, 422, "rows of 32"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": [[1.5] * 32] * 32}]}, 422, "[0, 1]"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": [[-0.1] * 32] * 32}]}, 422, "[0, 1]"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": [["x"] * 32] * 32}]}, 422, "not a number"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": [[0] * 32] * 32}]}, 422, "no pixel"),
    ({"sample": 0, "strokes": [{"concept": "unicorn", "mode": "draw", "mask": box(0, 0, 4, 4)}]}, 422,
     "unknown concept 'unicorn'"),
    ({"sample": 0, "strokes": [{"concept": "sky", "mode": "draw", "mask": box(0, 0, 4, 4)}]}, 422,
     "concepts with units"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "paint", "mask": box(0, 0, 4, 4)}]}, 422, "'remove'"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": box(0, 0, 4, 4), "units": 0}]}, 422,
     "from 1 to 8"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": box(0, 0, 4, 4), "units": 999}]}, 422,
     "from 1 to 8"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": box(0, 0, 4, 4), "file": "x"}]}, 422,
     "unknown field"),
    ({"sample": 0, "strokes": [{"concept": "tree", "mode": "draw", "mask": box(0, 0, 4, 4)}] * 5}, 422,
     "at most 4 strokes"),
    ({"sample": 999, "strokes": []}, 404, "unknown sample id 999"),
    ({"sample": "0", "strokes": []}, 422, "sample must be an integer"),
    ({"strokes": []}, 422, "needs 'sample'"),
    ([1, 2], 422, "JSON object"),
])
def test_bad_edit_requests_get_a_4xx_with_a_message(client, body, status, words):
    reply = client.post("/api/edit", json=body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]


def test_oversized_and_malformed_bodies(client, session):
    from gan_monitor.paint.messages import max_body_bytes

    big = json.dumps({"sample": 0, "strokes": [], "pad": "x" * max_body_bytes(session)})
    reply = client.post("/api/edit", content=big, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and "larger than" in reply.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(max_body_bytes(session) // 65536 + 2):
            yield b" " * 65536
    reply = client.post("/api/edit", content=chunks())
    assert reply.status_code == 413
    reply = client.post("/api/edit", content=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status_code == 422 and "not valid JSON" in reply.json()["error"]
    assert client.get("/api/samples/abc").status_code == 404
    assert "unknown sample id 12345" in client.get("/api/samples/12345").json()["error"]


def test_new_samples_on_request_and_the_oldest_are_dropped(world):
    g, s, result = world
    small = PaintSession.create(g, "features", s, dissection=result, samples=2, max_samples=3)
    client = TestClient(make_app(small))
    reply = client.post("/api/samples", json={"count": 2}).json()
    assert [x["id"] for x in reply["samples"]] == [2, 3] and reply["held"] == [1, 2, 3]
    assert [x["seed"] for x in reply["samples"]] == [small.sample_seed + 2, small.sample_seed + 3]
    assert not np.array_equal(decode(reply["samples"][0]["image"]), decode(reply["samples"][1]["image"]))
    gone = client.post("/api/edit", json={"sample": 0, "strokes": []})
    assert gone.status_code == 404 and "samples held are 1, 2, 3" in gone.json()["error"]
    for body in ({"count": 0}, {"count": 100}, {"count": "2"}, {"n": 1}):
        bad = client.post("/api/samples", json=body)
        assert bad.status_code == 422 and bad.json()["error"]


def test_page_is_served_with_local_assets_only(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "default-src 'self'" in \
        page.headers["content-security-policy"]
    static = Path(gan_monitor.__file__).parent / "paint" / "static"
    for name in ("index.html", "paint.js", "paint.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//|import\s", text), name
    assert client.get("/paint.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/paint.css").status_code == 200
    assert client.get("/etc/passwd").status_code == 404 and client.get("/static/../server.py").status_code == 404


def test_host_header_is_checked_when_asked(session):
    strict = TestClient(make_app(session, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1")
    assert strict.get("/api/info").status_code == 200
    assert strict.get("/api/info", headers={"host": "evil.example"}).status_code == 400


def test_a_dissection_json_is_used_as_is_and_checked(world, tmp_path):
    g, s, result = world
    path = tmp_path / "dissection.json"
    result.to_json(path)
    again = PaintSession.create(g, "features", s, dissection=DissectionResult.from_json(path), samples=1)
    assert {k: v.units for k, v in again.concepts.items()} == {
        k: v.units for k, v in PaintSession.create(g, "features", s, dissection=result, samples=1).concepts.items()}
    with pytest.raises(KeyError, match="no dissection of layer 'render'"):
        PaintSession.create(g, "render", s, dissection=result)
    other = DissectionResult.from_json(path)
    other["features"].concepts[1] = "ocean"
    with pytest.raises(ValueError, match="other concepts"):
        PaintSession.create(g, "features", s, dissection=other)


def test_strokes_are_checked_in_python_too(session):
    with pytest.raises(ValueError, match="mask must be 32 rows of 32"):
        session.edit(session.sample_ids[0], [Stroke("tree", "draw", torch.ones(8, 8))])
    with pytest.raises(LookupError, match="unknown sample id 77"):
        session.edit(77, [])


def test_cli_paint_dry_run_on_a_toy_gan_state_dict(tmp_path, capsys):
    from gan_monitor.toyworld.gan import ToyGenerator

    path = tmp_path / "g.pt"
    torch.save(ToyGenerator().state_dict(), path)
    code = cli_main(["paint", str(path), "--generator-factory", "gan_monitor.toyworld.gan:ToyGenerator",
                     "--layer", "layer3", "--n", "16", "--cutoff", "0", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "layer3" in out and "units" in out
    assert re.search(r"^\s*\w+\s+\d+ units", out, re.M)
    assert cli_main(["paint", str(path), "--generator-factory", "gan_monitor.toyworld.gan:ToyGenerator",
                     "--layer", "nope", "--dry-run"]) == 1
    assert "no layer" in capsys.readouterr().err
    assert cli_main(["paint", str(tmp_path / "missing.pt"), "--dry-run"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["paint", str(path), "--generator-factory", "gan_monitor.toyworld.gan:ToyGenerator",
                     "--units-per-concept", "0", "--dry-run"]) == 2


def test_cli_paint_reads_a_dissection_json(tmp_path, capsys):
    from gan_monitor.toyworld.gan import ToyGenerator
    from gan_monitor.toyworld.segmenter import load_segmenter

    g = ToyGenerator().eval()
    path = tmp_path / "g.pt"
    torch.save(g.state_dict(), path)
    gan_monitor.dissect(g, "layer2", load_segmenter(), n=8, cutoff=0.0).to_json(tmp_path / "d.json")
    code = cli_main(["paint", str(path), "--generator-factory", "gan_monitor.toyworld.gan:ToyGenerator",
                     "--layer", "layer2", "--dissection", str(tmp_path / "d.json"), "--dry-run"])
    assert code == 0 and "layer2" in capsys.readouterr().out
    code = cli_main(["paint", str(path), "--generator-factory", "gan_monitor.toyworld.gan:ToyGenerator",
                     "--layer", "layer3", "--dissection", str(tmp_path / "d.json"), "--dry-run"])
    assert code == 1 and "no dissection of layer 'layer3'" in capsys.readouterr().err


def test_the_server_packages_are_named_when_missing(session, monkeypatch):
    from gan_monitor.core.errors import CommandError

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(CommandError, match=r"needs uvicorn: pip install 'gan-monitor\[paint\]'"):
        make_app(session)


def test_serve_in_the_background_and_the_warning_off_loopback(world, monkeypatch):
    from gan_monitor.paint import serve, server

    g, s, result = world
    said: list[str] = []
    running = serve(g, "features", s, dissection=result, samples=1, port=0, block=False, echo=said.append)
    try:
        with urllib.request.urlopen(running.url + "/api/info", timeout=30) as reply:
            assert json.load(reply)["layer"] == "features"
        assert said and running.url in said[0] and running.host == "127.0.0.1"
    finally:
        running.stop()
    assert server.is_loopback("127.0.0.2") and server.is_loopback("::1") and not server.is_loopback("0.0.0.0")

    class NoBind:  # stands in for uvicorn: nothing is exposed during the test
        def __init__(self, app, host, port):
            self.url, self.app = f"http://{host}:{port}", app

        def start(self):
            return self
    monkeypatch.setattr(server, "ServerThread", NoBind)
    with pytest.warns(UserWarning, match="not loopback: anyone who can reach"):
        started = server.serve_session(PaintSession.create(g, "features", s, dissection=result, samples=1),
                                       host="0.0.0.0", block=False, echo=said.append)
    assert isinstance(started, NoBind)
