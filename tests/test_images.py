import io

import numpy as np
import pytest
from PIL import Image

from fashionnet.data.images import ImageDecodeError, decode_image, decode_many
from tests.conftest import solid

RED = (220, 20, 20)


def _center(a):
    return tuple(int(v) for v in a[a.shape[0] // 2, a.shape[1] // 2])


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"),
                                        ("BMP", "bmp"), ("WEBP", "webp")])
def test_common_formats_decode_to_uint8_rgb(tmp_path, fmt, suffix):
    path = solid(tmp_path / f"a.{suffix}", RED, fmt=fmt)
    out = decode_image(path, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert abs(out[..., 0].mean() - 220) < 12 and out[..., 2].mean() < 40


def test_rgba_is_flattened_onto_white(tmp_path):
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert _center(decode_image(tmp_path / "t.png", 8)) == (255, 255, 255)


def test_palette_with_transparency_and_grayscale_and_cmyk(tmp_path):
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 0, 255] + [0] * 765)
    p.save(tmp_path / "p.png", transparency=0)
    assert _center(decode_image(tmp_path / "p.png", 8)) == (255, 255, 255)
    solid(tmp_path / "g.jpg", 128, mode="L")
    assert np.ptp(decode_image(tmp_path / "g.jpg", 8)[4, 4]) <= 2
    solid(tmp_path / "c.jpg", (0, 255, 255, 0), mode="CMYK")
    r, g, b = _center(decode_image(tmp_path / "c.jpg", 8))
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale(tmp_path):
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(tmp_path / "d.png")
    assert _center(decode_image(tmp_path / "d.png", 8)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "o.jpg", 16)
    assert out[2, 8, 0] > 200 and out[13, 8, 2] > 200  # red on top, blue at the bottom


def test_extension_that_lies(tmp_path):
    path = solid(tmp_path / "actually_jpeg.gif", RED, fmt="JPEG")
    assert decode_image(path, 8)[..., 0].mean() > 180


def test_bad_files_raise_a_named_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(ImageDecodeError, match="notes.jpg: not an image"):
        decode_image(tmp_path / "notes.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), RED).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        decode_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(solid(tmp_path / "big.png", RED, size=(300, 300)), max_pixels=10_000)


def test_decode_many_skips_bad_files_and_counts_them(tmp_path, caplog):
    good = solid(tmp_path / "a.jpg", RED)
    (tmp_path / "b.jpg").write_text("nope")
    out = decode_many([good, tmp_path / "b.jpg", good], 16, progress=False, cache=False)
    assert out.images.shape == (2, 16, 16, 3)
    assert out.kept.tolist() == [0, 2]
    assert len(out.failures) == 1 and "b.jpg" in out.failures[0]
    assert "skipped 1 unreadable file(s)" in caplog.text
    with pytest.raises(ImageDecodeError):
        decode_many([good, tmp_path / "b.jpg"], 16, progress=False, cache=False, strict=True)


def test_cache_hits_and_invalidates_when_a_file_changes(tmp_path):
    path = solid(tmp_path / "a.png", RED)
    first = decode_many([path], 16, progress=False)
    assert decode_many([path], 16, progress=False).images.tobytes() == first.images.tobytes()
    solid(path, (0, 0, 200), fmt="PNG")  # same name, new content and mtime
    import os
    os.utime(path, ns=(1, 10**18))
    again = decode_many([path], 16, progress=False)
    assert again.images[0, 8, 8, 2] > 150
