"""Procedural outdoor scenes with exact per-pixel labels: a miniature of LSUN
church/outdoor images.

A scene has a sky with clouds, distant mountains, a grass ground with a road,
buildings (facade with windows and a door, a tower, a dome or a pitched roof on
top) and trees that occlude them.  Every pixel gets one concept of
:data:`gan_monitor.toyworld.CONCEPTS`; label 0 ("-") never occurs.

Rendering is vectorised over the batch: every object type has a fixed number of
slots with presence flags, shapes are inequalities on broadcast coordinate
grids, and buildings and trees are drawn with a depth buffer (an object nearer
the viewer, i.e. whose base is lower in the image, hides the ones behind it).

Geometry lives in relative coordinates ``x, y`` in [0, 1] (``y`` grows
downwards), so one seed gives the same scene at every size; only the
pixel-level noise differs between sizes.  Images with index ``i`` depend only on
``(seed, i)``: ``render_scenes(n, seed=s)[:k]`` equals
``render_scenes(k, seed=s)``.  The global RNG is never used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import CONCEPT_NAMES

__all__ = ["render_scenes", "SceneDataset", "MIN_SIZE", "MAX_SIZE"]

MIN_SIZE, MAX_SIZE = 16, 512
_CHUNK = 64  # images whose random parameters are drawn from one generator
L = {name: i for i, name in enumerate(CONCEPT_NAMES)}

# Base colours (RGB in [0, 1]); each object draws one and jitters it.  Palettes
# overlap on purpose (pale sky vs. pale-blue / white buildings vs. clouds, grass
# vs. tree greens, gray road vs. gray facades) so colour alone cannot label.
_SKY = [(0.35, 0.6, 0.9), (0.58, 0.76, 0.95), (0.74, 0.77, 0.8), (0.95, 0.7, 0.5), (0.62, 0.56, 0.76)]
_CLOUD = [(0.96, 0.96, 0.97), (0.82, 0.83, 0.86), (0.66, 0.67, 0.7), (0.96, 0.86, 0.84)]
_MOUNTAIN = [(0.45, 0.5, 0.65), (0.5, 0.45, 0.6), (0.5, 0.42, 0.35), (0.3, 0.42, 0.3), (0.56, 0.56, 0.6)]
_GRASS = [(0.35, 0.6, 0.25), (0.47, 0.56, 0.25), (0.25, 0.45, 0.2), (0.57, 0.6, 0.36)]
_ROAD = [(0.47, 0.47, 0.48), (0.3, 0.3, 0.32), (0.66, 0.59, 0.46), (0.55, 0.45, 0.35)]
_BUILDING = [(0.88, 0.86, 0.82), (0.62, 0.62, 0.63), (0.6, 0.72, 0.86), (0.8, 0.7, 0.55),
             (0.66, 0.36, 0.28), (0.86, 0.78, 0.5), (0.42, 0.46, 0.56), (0.6, 0.7, 0.55)]
_ROOF = [(0.55, 0.25, 0.2), (0.35, 0.35, 0.38), (0.45, 0.33, 0.25), (0.3, 0.45, 0.4)]
_WINDOW = [(0.14, 0.17, 0.24), (0.4, 0.55, 0.76), (0.92, 0.8, 0.42), (0.25, 0.22, 0.2)]
_DOOR = [(0.35, 0.22, 0.12), (0.15, 0.15, 0.16), (0.6, 0.16, 0.12), (0.2, 0.35, 0.22), (0.55, 0.4, 0.25)]
_DOME = [(0.85, 0.7, 0.3), (0.35, 0.62, 0.52), (0.3, 0.4, 0.76), (0.66, 0.26, 0.2), (0.56, 0.56, 0.58), (0.9, 0.9, 0.88)]
_TREE = [(0.2, 0.4, 0.15), (0.3, 0.52, 0.2), (0.15, 0.3, 0.15), (0.45, 0.56, 0.2), (0.7, 0.46, 0.16)]
# per-concept strength of pixel texture noise (grass and foliage are rough)
_TEXTURE = torch.zeros(len(CONCEPT_NAMES))
for _name, _amp in [("sky", 0.012), ("cloud", 0.02), ("mountain", 0.035), ("grass", 0.07), ("road", 0.035),
                    ("tree", 0.09), ("building", 0.025), ("door", 0.02), ("window", 0.02), ("dome", 0.025)]:
    _TEXTURE[L[_name]] = _amp


class _Draw:
    """Random parameters for one chunk of images, drawn in a fixed order."""

    def __init__(self, n: int, g: torch.Generator):
        self.n, self.g = n, g

    def u(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(self.n, *shape, 1, 1, generator=self.g)

    def p(self, prob, *shape):
        return torch.rand(self.n, *shape, 1, 1, generator=self.g) < prob

    def colour(self, palette, *shape, jitter=0.06):
        table = torch.tensor(palette)
        idx = torch.randint(len(palette), (self.n, *shape), generator=self.g)
        c = table[idx] + jitter * (2 * torch.rand(self.n, *shape, 3, generator=self.g) - 1)
        return c.clamp(0, 1)  # [n, *shape, 3]


def _check(n, size, seed):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (number of scenes), got {n!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(
            f"size must be an int between {MIN_SIZE} and {MAX_SIZE} (square images of size x size "
            f"pixels), got {size!r}; use e.g. size=64."
        )


class _Canvas:
    """Label map plus, per pixel, which flat colour (an id into a per-image colour
    table) and which brightness factor paints it; colours are looked up once at the
    end, so drawing an object costs a few single-channel operations."""

    def __init__(self, n: int, size: int, sky: torch.Tensor):
        self.n, self.size = n, size
        self.lab = torch.full((n, size, size), L["sky"], dtype=torch.uint8)
        self.oid = torch.zeros(n, size, size, dtype=torch.uint8)
        self.shade = torch.ones(n, size, size)
        self.zbuf = torch.zeros(n, size, size)  # base y of the object drawn (0 = background)
        self.colours = [sky]

    def colour_id(self, colour: torch.Tensor) -> int:
        """Register a colour [n,3] (one per image) and return its id."""
        self.colours.append(colour.reshape(self.n, 3))
        return len(self.colours) - 1

    def paint(self, mask, label: int, colour: torch.Tensor, shade=None) -> None:
        self.lab.masked_fill_(mask, label)
        self.oid.masked_fill_(mask, self.colour_id(colour))
        if shade is not None:
            torch.where(mask, shade, self.shade, out=self.shade)
        else:
            self.shade.masked_fill_(mask, 1.0)

    def paint_object(self, mask, labels, ids, shade, depth) -> None:
        """Draw a depth-tested object whose label, colour id and shade vary per pixel."""
        mask = mask & (self.zbuf < depth)
        torch.where(mask, labels, self.lab, out=self.lab)
        torch.where(mask, ids, self.oid, out=self.oid)
        torch.where(mask, shade, self.shade, out=self.shade)
        torch.where(mask, depth, self.zbuf, out=self.zbuf)

    def image(self) -> torch.Tensor:
        table = torch.stack(self.colours, 1)  # [n, K, 3]
        idx = self.oid.long() + table.shape[1] * torch.arange(self.n).view(-1, 1, 1)
        rgb = table.reshape(-1, 3)[idx]  # [n, H, W, 3]
        return rgb.permute(0, 3, 1, 2) * self.shade[:, None]


def _u8(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.uint8)


def _render_chunk(g: torch.Generator, n_draw: int, n: int, size: int):
    d = _Draw(n_draw, g)
    xs = ((torch.arange(size) + 0.5) / size).view(1, 1, size)
    ys = ((torch.arange(size) + 0.5) / size).view(1, size, 1)
    sun = torch.where(d.p(0.5), 1.0, -1.0)  # which side the light comes from
    # --- sky: vertical gradient, lighter towards the horizon (added at the end)
    hz0, tilt, wav_a, wav_f, wav_p = d.u(0.34, 0.6), d.u(-0.08, 0.08), d.u(0, 0.02), d.u(3, 9), d.u(0, 6.3)
    horizon = hz0 + tilt * (xs - 0.5) + wav_a * torch.sin(wav_f * xs + wav_p)  # [n,1,W]
    sky = d.colour(_SKY)
    pale = 0.15 + 0.35 * (ys / hz0).clamp(0, 1)  # [n,H,1]
    cv = _Canvas(n_draw, size, sky)
    cv.shade.copy_((1 - pale).expand(-1, size, size))
    # --- clouds: each a union of three flattened blobs, darker underneath
    kc = 4
    c_on = d.p(0.45, kc)
    c_x, c_y, c_w = d.u(-0.05, 1.05, kc), d.u(0.03, 1.0, kc), d.u(0.05, 0.14, kc)
    c_off, c_col = d.u(-1, 1, kc, 3, 2), d.colour(_CLOUD, kc)
    for k in range(kc):
        cy = c_y[:, k] * (hz0 - 0.1).clamp(min=0.05)
        w = c_w[:, k] * c_on[:, k]  # absent clouds get zero size
        m = torch.zeros(n_draw, size, size, dtype=torch.bool)
        for b in range(3):
            bx = c_x[:, k] + c_off[:, k, b, 0] * c_w[:, k]
            by = cy + c_off[:, k, b, 1] * c_w[:, k] * 0.25
            r = (w * (1.0 - 0.25 * b)).clamp(min=1e-6)
            m |= ((xs - bx) / r) ** 2 + ((ys - by) / (0.45 * r)) ** 2 < 1
        cv.paint(m, L["cloud"], c_col[:, k], 1.0 - 1.5 * (ys - cy).clamp(min=0))
    # --- mountains: max of triangular peaks, hazy, sunlit on one slope, snow caps
    km = 3
    m_on, m_x, m_h = d.p(0.8), d.u(-0.1, 1.1, km), d.u(0.08, 0.32, km)
    m_slope, m_col, m_haze = d.u(0.4, 1.4, km), d.colour(_MOUNTAIN), d.u(0.1, 0.45)
    snow, snow_lvl = d.p(0.3), d.u(0.5, 0.8)
    peaks = torch.stack([m_h[:, k] - m_slope[:, k] * (xs - m_x[:, k]).abs() for k in range(km)])  # [km,n,1,W]
    ridge, which = peaks.max(0)
    ridge = torch.where(m_on & (ridge > 0), ridge, -1.0)  # -1: no mountain in this column
    px = torch.gather(m_x.view(n_draw, km), 1, which.view(n_draw, -1)).view(n_draw, 1, size)
    lit = 1 + 0.15 * sun * torch.sign(xs - px)  # [n,1,W]
    hazy = m_col * (1 - m_haze.view(-1, 1)) + sky * m_haze.view(-1, 1)
    cv.paint(ys > hz0 - ridge, L["mountain"], hazy, lit)
    snow_line = hz0 - m_h.view(n_draw, km).max(1).values.view(-1, 1, 1) * torch.where(snow, snow_lvl, 9.0)
    cv.paint((ys > hz0 - ridge) & (ys < snow_line), L["mountain"], torch.full_like(sky, 0.92), lit)
    # --- ground (grass) and a road vanishing at the horizon
    ground = ys > horizon
    g_col = d.colour(_GRASS)
    depth = ((ys - horizon) / (1 - horizon).clamp(min=0.2)).clamp(0, 1)  # 0 at horizon, 1 at bottom
    cv.paint(ground, L["grass"], g_col, 0.85 + 0.25 * depth)
    r_on, r_top, r_bot, r_w = d.p(0.8), d.u(0.3, 0.7), d.u(-0.1, 1.1), d.u(0.1, 0.4)
    r_col = d.colour(_ROAD)
    centre = r_top + (r_bot - r_top) * depth
    road = ground & ((xs - centre).abs() < (0.008 + r_w * depth) * r_on)
    cv.paint(road, L["road"], r_col, 0.9 + 0.15 * depth)
    _buildings(d, cv, xs, ys, hz0, sun)
    _trees(d, cv, xs, ys, hz0, sun)
    # --- lighting and texture
    bright, tint = d.u(0.7, 1.15)[:, None], d.u(0.9, 1.1, 3)  # [n,1,1,1], [n,3,1,1]
    coarse = F.interpolate(torch.randn(n_draw, 1, 6, 6, generator=g), size=(size, size), mode="bilinear",
                           align_corners=False)
    amp_fine, amp_coarse = d.u(0.005, 0.03)[:, None], d.u(0.0, 0.06)[:, None]
    fine = torch.randn(n_draw, 3, size, size, generator=g)  # drawn last: geometry is size-independent
    lab = cv.lab[:n].long()
    img = cv.image()[:n]
    img = img + torch.where(lab == L["sky"], 0.95 * pale[:n], 0.0)[:, None]
    tex = _TEXTURE[lab][:, None] * torch.randn(n, 1, size, size, generator=g)
    img = img * bright[:n] * tint[:n] * (1 + amp_coarse[:n] * coarse[:n]) + tex + amp_fine[:n] * fine[:n]
    return (img.clamp(0, 1) * 2 - 1).contiguous(), lab.contiguous()


def _buildings(d, cv, xs, ys, hz0, sun):
    kb = 3
    on = torch.cat([d.p(0.95)[:, None], d.p(0.6)[:, None], d.p(0.35)[:, None]], 1)  # [n,3,1,1]
    t = d.u(0, 1, kb)
    hz = hz0[:, None]  # [n,1,1,1], broadcasts with the per-slot [n,k,1,1] parameters
    base = hz + 0.065 + 0.35 * t * (1 - hz)
    scale = 0.75 + 0.6 * t
    cx, bw, bh = d.u(0.12, 0.88, kb), d.u(0.22, 0.42, kb) * scale, d.u(0.25, 0.42, kb) * scale
    top = (base - bh).clamp(min=0.13)
    col, roof_col, win_col, door_col, dome_col = (d.colour(p, kb) for p in (_BUILDING, _ROOF, _WINDOW, _DOOR, _DOME))
    # windows: a centred grid on the facade, above the door
    ww, wh = d.u(0.05, 0.07, kb) * scale, d.u(0.06, 0.09, kb) * scale
    ww, wh = ww.clamp(min=0.05), wh.clamp(min=0.056)
    gx, gy = d.u(0.025, 0.05, kb) * scale, d.u(0.03, 0.05, kb) * scale
    dw, dh = (d.u(0.06, 0.09, kb) * scale).clamp(min=0.056), (d.u(0.11, 0.16, kb) * scale).clamp(min=0.1)
    dpos = d.u(-0.5, 0.5, kb)
    tower, tw, th, tpos = d.p(0.4, kb), (d.u(0.3, 0.5, kb) * bw).clamp(min=0.07), d.u(0.08, 0.2, kb) * scale, d.u(-1, 1, kb)
    has_dome, dome_wf, dome_hf = d.p(0.65, kb), d.u(0.3, 0.48, kb), d.u(0.7, 1.3, kb)
    has_roof, roof_h = d.p(0.6, kb), d.u(0.04, 0.1, kb) * scale
    dull = (win_col - col).abs().mean(-1, keepdim=True) < 0.2  # keep windows visible on the facade
    win_col = torch.where(dull, col * 0.45, win_col)
    for k in range(kb):
        cxk, bwk, b, tp = cx[:, k], bw[:, k], base[:, k], top[:, k]
        in_x = ((xs - cxk).abs() < bwk / 2) & on[:, k]  # [n,1,W]
        body = in_x & (ys > tp) & (ys < b)
        # tower on the roof line; a dome sits on the tower if any, else on the body
        th_k = torch.minimum(th[:, k], (tp - 0.1).clamp(min=0))
        has_t = tower[:, k] & (th_k > 0.03)
        tcx = cxk + tpos[:, k] * (bwk - tw[:, k]) / 2
        tow = ((xs - tcx).abs() < tw[:, k] / 2) & has_t & on[:, k] & (ys > tp - th_k) & (ys <= tp)
        s_top, s_cx = torch.where(has_t, tp - th_k, tp), torch.where(has_t, tcx, cxk)
        s_w = torch.where(has_t, tw[:, k], bwk)
        a = dome_wf[:, k] * s_w
        bb = torch.minimum(a * dome_hf[:, k], s_top - 0.02).clamp(min=1e-3)
        dome_on = has_dome[:, k] & (bb > 0.02) & (a > 0.03) & on[:, k]
        dome = ((xs - s_cx) / a) ** 2 + ((ys - s_top) / bb) ** 2 < torch.where(dome_on, 1.0, 0.0) * (ys <= s_top)
        roof_on = has_roof[:, k] & ~dome_on
        rh = torch.minimum(roof_h[:, k], tp - 0.04) * roof_on
        roof = (ys <= tp) & (ys > tp - rh * (1 - (xs - cxk).abs() / (bwk / 2))) & in_x
        # facade parts: door at the base, window grid above it with a margin all round
        dcx = cxk + dpos[:, k] * (bwk - dw[:, k] - 0.04).clamp(min=0)
        dhk = torch.minimum(dh[:, k], b - tp - 0.05)  # keep facade above the door
        door = ((xs - dcx).abs() < dw[:, k] / 2) & in_x & (ys > b - dhk) & (ys < b)
        px_, py_ = ww[:, k] + gx[:, k], wh[:, k] + gy[:, k]
        ncol = torch.floor((bwk - 0.05 + gx[:, k]) / px_).clamp(0, 5)
        nrow = torch.floor((b - dhk - tp - 0.05 + gy[:, k]) / py_).clamp(0, 3)
        ux, uy = (xs - cxk + (ncol * px_ - gx[:, k]) / 2) / px_, (ys - tp - 0.025) / py_
        wx = (ux >= 0) & (ux < ncol) & (ux - ux.floor() < ww[:, k] / px_) & in_x
        wy = (uy >= 0) & (uy < nrow) & (uy - uy.floor() < wh[:, k] / py_) & (ys > tp) & (ys <= b - dhk)
        wnd = wx & wy
        labels = torch.where(door, _u8(L["door"]), torch.where(wnd, _u8(L["window"]), _u8(L["building"])))
        labels = torch.where(dome, _u8(L["dome"]), labels)
        i_body, i_roof, i_win, i_door, i_dome = (cv.colour_id(c[:, k]) for c in (col, roof_col, win_col, door_col, dome_col))
        ids = torch.where(door, _u8(i_door), torch.where(wnd, _u8(i_win), _u8(i_body)))
        ids = torch.where(dome, _u8(i_dome), torch.where(roof, _u8(i_roof), ids))
        facade = 1 + 0.12 * sun * (xs - cxk) / (bwk / 2)  # [n,1,W]
        dshade = 1 + 0.3 * sun * (xs - s_cx) / a - 0.2 * (s_top - ys) / bb
        shade = torch.where(dome, dshade, torch.where(door | wnd, 1.0, facade))
        cv.paint_object(body | tow | dome | roof, labels, ids, shade, b)


def _trees(d, cv, xs, ys, hz0, sun):
    kt = 7
    on = d.p(0.5, kt)
    t = d.u(0, 1, kt)
    hz = hz0[:, None]
    base = hz + 0.065 + t * (1.05 - hz - 0.065)
    scale = 0.6 + 1.0 * t
    x, r = d.u(-0.05, 1.05, kt), d.u(0.05, 0.1, kt) * scale
    conifer, trunk_h, cone_h, cone_w = d.p(0.35, kt), d.u(0.5, 1.1, kt), d.u(2.2, 3.2, kt), d.u(0.75, 1.05, kt)
    off, col, trunk_col = d.u(-0.6, 0.6, kt, 3, 2), d.colour(_TREE, kt, jitter=0.08), d.colour(_DOOR[:1] + _DOOR[4:], kt)
    r = r * on  # absent trees get zero size
    tree = _u8(L["tree"])
    for k in range(kt):
        rk, b, xk = r[:, k], base[:, k], x[:, k]
        trunk_top = b - trunk_h[:, k] * rk
        trunk = ((xs - xk).abs() < 0.15 * rk) & (ys < b) & (ys > trunk_top - rk)
        cy = trunk_top - 0.75 * rk
        crown = torch.zeros_like(trunk)
        for j in range(3):
            rr = rk * (1 - 0.2 * j)
            crown |= (xs - xk - off[:, k, j, 0] * rk) ** 2 + (ys - cy - off[:, k, j, 1] * rk) ** 2 < rr ** 2
        apex = trunk_top - cone_h[:, k] * rk
        half = cone_w[:, k] * (ys - apex) / cone_h[:, k]  # half width of the cone at each row
        cone = ((xs - xk).abs() < half) & (ys > apex) & (ys < trunk_top)
        crown = torch.where(conifer[:, k], cone, crown)
        i_crown, i_trunk = cv.colour_id(col[:, k]), cv.colour_id(trunk_col[:, k])
        shade = (1 + 0.25 * sun * (xs - xk) / rk.clamp(min=1e-3)).clamp(0.7, 1.3)
        ids = torch.where(crown, _u8(i_crown), _u8(i_trunk))
        cv.paint_object(trunk | crown, tree, ids, torch.where(crown, shade, 1.0), b)


def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    mixed = (seed * 0x9E3779B97F4A7C15 + chunk * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def render_scenes(n: int, *, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` scenes: images float32 ``[n,3,size,size]`` in [-1, 1] and labels
    int64 ``[n,size,size]`` indexing ``CONCEPT_NAMES``.

    Deterministic for ``seed`` (any int), independent of the global RNG; the same
    seed gives the same geometry at every ``size`` (16..512).
    """
    _check(n, size, seed)
    images, labels = [], []
    for c in range(math.ceil(n / _CHUNK)):
        m = min(_CHUNK, n - c * _CHUNK)
        im, lb = _render_chunk(_chunk_generator(seed, c), _CHUNK, m, size)
        images.append(im)
        labels.append(lb)
    if not images:
        return torch.zeros(0, 3, size, size), torch.zeros(0, size, size, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


class SceneDataset(Dataset):
    """``n`` pre-rendered scenes; item ``i`` is ``(image float32 [3,H,W] in [-1,1], label int64 [H,W])``.

    Images are stored as uint8: ``q = round((x + 1) * 127.5)``, returned as
    ``q / 127.5 - 1``, so a returned pixel differs from the rendered one by at
    most 1/255.  Labels are stored as uint8 (11 concepts).  Item ``i`` is the
    same scene as ``render_scenes(n, seed=seed, size=size)[i]``.
    """

    def __init__(self, n: int, *, seed: int, size: int = 64):
        _check(n, size, seed)
        self.n, self.seed, self.size = n, seed, size
        self.images = torch.empty(n, 3, size, size, dtype=torch.uint8)
        self.labels = torch.empty(n, size, size, dtype=torch.uint8)
        for c in range(math.ceil(n / _CHUNK)):
            m = min(_CHUNK, n - c * _CHUNK)
            im, lb = _render_chunk(_chunk_generator(seed, c), _CHUNK, m, size)
            sl = slice(c * _CHUNK, c * _CHUNK + m)
            self.images[sl] = ((im + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            self.labels[sl] = lb.to(torch.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.n <= i < self.n:
            raise IndexError(f"SceneDataset index {i} out of range for {self.n} scenes.")
        return self.images[i].float() / 127.5 - 1, self.labels[i].long()
