"""hovle.loaders.image.preprocess(..., preprocess=...): the native and Python paths give the same pixels for every
kind of input, the same errors, and "auto" picks what is built."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hovle.errors import ImageError
from hovle.kernels import preprocess as kp
from hovle.loaders.image import preprocess
from tests.support import photo

needs_native = pytest.mark.skipif(not kp.native_available(), reason=f"native CPU path: {kp.native_problem()}")


def _sources(tmp_path):
    arr = photo(301, 203, seed=7)
    grey = arr[:, :, 1].copy()
    rgba = np.concatenate([arr, grey[:, :, None]], axis=2)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    t = torch.from_numpy(arr)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return [
        arr,
        arr[:, ::-1][:, ::-1],
        rgba,
        grey,
        grey[:, :, None],
        t,
        t.permute(2, 0, 1),
        torch.from_numpy(rgba),
        torch.from_numpy(grey)[None],
        Image.fromarray(arr),
        path,
        str(path),
        buf.getvalue(),
    ]


@needs_native
def test_engine_paths_agree_for_every_input_kind(tmp_path):
    for k, src in enumerate(_sources(tmp_path)):
        py = preprocess(src, max_num=6, preprocess="python")
        for mode in ("native", "auto"):
            nat = preprocess(src, max_num=6, preprocess=mode)
            assert (py.path, nat.path) == ("python", "native-cpu")
            assert (nat.grid, nat.num_tiles, nat.size) == (py.grid, py.num_tiles, py.size), k
            assert torch.equal(nat.pixel_values, py.pixel_values), k
    single = preprocess(photo(500, 300), dynamic=False, use_thumbnail=True, preprocess="native")
    assert single.grid == (1, 1) and single.num_tiles == 1


@needs_native
def test_engine_native_errors_match_python():
    for src, message in [
        (np.ones((8, 8)), "dtype float64"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\)"),
        (photo(50, 50), "max_pixels=1000"),
        ([1, 2], "unsupported image type list"),
    ]:
        for mode in ("python", "native"):
            with pytest.raises(ImageError, match=message):
                preprocess(src, max_pixels=1000, preprocess=mode)
    with pytest.raises(ImageError, match="max_pixels must be a positive int"):
        preprocess(photo(8, 8), max_pixels=0, preprocess="native")


def test_engine_mode_selection(monkeypatch):
    with pytest.raises(ImageError, match="preprocess must be one of"):
        preprocess(photo(8, 8), preprocess="fast")
    import hovle.loaders.image

    monkeypatch.setattr(hovle.loaders.image, "native_problem", lambda: "hovle.kernels._native is not built (test)")
    with pytest.raises(ImageError, match=r"preprocess='native' is unavailable: hovle.kernels._native is not built"):
        preprocess(photo(8, 8), preprocess="native")
    assert preprocess(photo(8, 8), preprocess="auto").path == "python"


@pytest.mark.parametrize("path", ["python", "native"])
def test_a_thumbnail_is_added_only_to_a_grid_of_several_tiles(path):
    """InternVL's rule, on each preprocessing path: one tile is the whole image already (no thumbnail); a grid of
    two or more gets the whole image as one more tile."""
    from hovle.kernels.preprocess import native_available

    if path == "native" and not native_available():
        pytest.skip("the native extension is not built")
    square = photo(112, 112, seed=3)
    wide = photo(224, 112, seed=4)
    one = preprocess(square, image_size=56, max_num=1, use_thumbnail=True, preprocess=path)
    two = preprocess(wide, image_size=56, max_num=2, use_thumbnail=True, preprocess=path)
    assert (one.grid, one.num_tiles, one.path.startswith(path)) == ((1, 1), 1, True)
    assert (tuple(two.grid), two.num_tiles) == ((2, 1), 3)
