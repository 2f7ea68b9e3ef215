"""Head template: a valid chart over the corpus' mean head, head and neck and shoulders.

Uses the committed R = 128 asset (what the generator uses by default) and checks it
against a fresh fit, against the corpus' own meshes and for the frame conventions
the decode kernel relies on.
"""
from __future__ import annotations

import numpy as np
import pytest

from dgtalker.models import template as T

pytest.importorskip("scipy")
from scipy.spatial import cKDTree  # noqa: E402


@pytest.fixture(scope="module")
def tpl():
    return T.load_template()


def _rot(q):
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)


def test_asset_is_the_deterministic_fit(tpl):
    # The committed asset must be what build_template gives today: float32 storage
    # is the only difference (1e-6 relative).
    fresh = T.build_template(T.DEFAULT_RESOLUTION)
    assert np.array_equal(tpl.texel_index, fresh.texel_index)
    np.testing.assert_allclose(tpl.position, fresh.position, atol=1e-6)
    np.testing.assert_allclose(tpl.frame, fresh.frame, atol=1e-6)
    np.testing.assert_allclose(tpl.log_size, fresh.log_size, atol=1e-5)
    assert T.asset_path(T.DEFAULT_RESOLUTION).stat().st_size < 2_000_000


def test_shapes_indices_and_size_budget(tpl):
    R, M = tpl.resolution, tpl.num_texels
    assert R == 128
    assert tpl.position.shape == (M, 3) and tpl.frame.shape == (M, 4) and tpl.log_size.shape == (M,)
    assert tpl.log_axis.shape == (M, 2) and tpl.region.shape == (M,)
    assert tpl.texel_index.dtype == np.int64
    assert np.all(np.diff(tpl.texel_index) > 0) and tpl.texel_index[0] >= 0 and tpl.texel_index[-1] < R * R
    # real-time budget: tens of thousands of Gaussians at G = 2
    assert 10_000 < M < 20_000
    assert tpl.valid_mask().sum() == M
    for region in (T.REGION_TORSO, T.REGION_NECK, T.REGION_HEAD):
        assert (tpl.region == region).sum() > 500


def test_frames_are_unit_and_right_handed_with_outward_normals(tpl):
    q = tpl.frame.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    Rm = _rot(q)
    np.testing.assert_allclose(np.linalg.det(Rm), 1.0, atol=1e-4)
    normal, tan_u = Rm[:, :, 2], Rm[:, :, 0]
    p = tpl.position.astype(np.float64)
    head, neck, torso = (tpl.region == r for r in (T.REGION_HEAD, T.REGION_NECK, T.REGION_TORSO))
    # outward: away from the skull centre, from the neck axis, from the torso centre
    assert np.mean(np.sum(normal[head] * p[head], 1) > 0) > 0.99
    radial_neck = p[neck] * [1, 0, 1] - [0, 0, T.NECK_CENTRE_Z]
    assert np.all(np.sum(normal[neck] * radial_neck, 1) > 0)
    assert np.all(np.sum(normal[torso] * (p[torso] - T.TORSO_CENTRE), 1) > 0)
    # the u axis runs around the body towards +x at the face, v upwards (the middle
    # of the forehead, where the surface faces +z; the nose tilts frames)
    brow = head & (p[:, 2] > 0.05) & (np.abs(p[:, 0]) < 0.01) & (p[:, 1] > 0.035) & (p[:, 1] < 0.06)
    assert brow.sum() > 5
    assert np.all(tan_u[brow, 0] > 0.95) and np.all(Rm[brow, 1, 1] > 0.8) and np.all(normal[brow, 2] > 0.8)


def test_positions_lie_on_the_corpus_heads(tpl):
    from dgtalker.data.synthetic.head import HeadModel, draw_identity

    # Two identities the mean was fitted over and one it was not (seed 500): every
    # head texel is within the spread of identities (a few mm) plus hair and the
    # mouth slit of that person's skin, every neck/torso texel on the corpus mesh.
    head = tpl.region == T.REGION_HEAD
    body = ~head
    for seed in (0, 7, 500):
        hm = HeadModel(draw_identity(seed), texture_size=32)
        d_skin, _ = cKDTree(hm.skin_rest).query(tpl.position[head])
        assert np.percentile(d_skin, 95) < 0.006, seed
        assert d_skin.max() < 0.03, seed
        body_v = np.concatenate([hm.neck[0], hm.torso[0]])
        d_body, _ = cKDTree(body_v).query(tpl.position[body])
        # the corpus neck/torso meshes are coarse (40 x 16, 48 x 24 vertices): compare to their spacing
        assert np.percentile(d_body, 95) < 0.02, seed


def test_face_is_denser_than_the_back_of_the_head(tpl):
    size = np.exp(tpl.log_size)
    p = tpl.position
    head = tpl.region == T.REGION_HEAD
    face = head & (p[:, 2] > 0.05) & (np.abs(p[:, 1] + 0.03) < 0.06)
    back = head & (p[:, 2] < -0.04) & (np.abs(p[:, 1]) < 0.06)
    assert np.median(size[face]) < 0.65 * np.median(size[back])
    assert 0.001 < np.median(size[face]) < 0.003  # millimetre-scale Gaussians on the face
    # texels per square centimetre on the face vs the back
    assert face.sum() / np.sum(size[face] ** 2) > 2 * back.sum() / np.sum(size[back] ** 2)


def test_bands_meet_without_gaps(tpl):
    # Every point of the corpus' visible neck is near some template texel: the
    # masking between bands leaves overlaps, not holes.
    from dgtalker.data.synthetic.head import HeadModel, draw_identity

    hm = HeadModel(draw_identity(1), texture_size=32)
    NV = hm.neck[0]
    inside_head = T._MeanHead(8).inside(NV, 0.004)
    visible = NV[~inside_head & ~T._inside_torso(NV, 0.004) & (NV[:, 1] > -0.2)]
    assert len(visible) > 50
    d, _ = cKDTree(tpl.position).query(visible)
    assert d.max() < 0.012


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="resolution must be an int >= 16"):
        T.build_template(8)
    with pytest.raises(FileNotFoundError, match="head template file not found"):
        T.read_template(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        T.read_template(bad)
    with pytest.raises(ValueError, match="gaussians_per_texel must be a positive int"):
        T.build_template(16, n_identities=2).to_decode_template(0)
