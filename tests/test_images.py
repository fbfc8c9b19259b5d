"""Every odd but valid image becomes the right RGB pixels; broken ones fail naming the file."""

import warnings

import numpy as np
import pytest
from PIL import Image

from foodnet.data.images import BACKGROUND, load_rgb
from foodnet.errors import ImageLoadError


def pixel(path, xy=(0, 0)):
    image = load_rgb(path)
    assert image.mode == "RGB"
    return image.getpixel(xy)


def close(a, b, tol=0):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_grayscale_l_and_1bit(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert pixel(tmp_path / "l.png") == (77, 77, 77)
    one = Image.new("1", (4, 4), 0)
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    assert pixel(tmp_path / "one.png") == (0, 0, 0)
    assert pixel(tmp_path / "one.png", (1, 0)) == (255, 255, 255)


def test_transparency_is_composited_on_the_white_background(tmp_path):
    assert BACKGROUND == (255, 255, 255)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "rgba.png")
    assert pixel(tmp_path / "rgba.png") == (255, 255, 255)  # fully transparent: background
    assert pixel(tmp_path / "rgba.png", (1, 0)) == (255, 0, 0)  # opaque: unchanged
    assert close(pixel(tmp_path / "rgba.png", (2, 0)), (127, 127, 127), tol=1)  # blended

    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((1, 0), (0, 255))
    la.save(tmp_path / "la.png")
    assert pixel(tmp_path / "la.png") == (255, 255, 255)
    assert pixel(tmp_path / "la.png", (1, 0)) == (0, 0, 0)


def test_palette_with_transparent_index(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert pixel(tmp_path / "p.png") == (255, 255, 255)  # index 0 is transparent
    assert pixel(tmp_path / "p.png", (1, 0)) == (0, 255, 0)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert close(pixel(tmp_path / "cmyk.jpg"), (0, 255, 255), tol=8)  # cyan


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"g16{suffix}")
    assert Image.open(tmp_path / f"g16{suffix}").mode == "I;16"
    image = load_rgb(tmp_path / f"g16{suffix}")
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 4]


def test_animated_gif_and_multipage_tiff_give_the_first_frame(tmp_path):
    red, blue, green = (Image.new("RGB", (6, 6), c) for c in
                        ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue, green], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert pixel(tmp_path / "anim.gif") == (255, 0, 0)
    green.save(tmp_path / "pages.tif", save_all=True, append_images=[red, blue])
    assert Image.open(tmp_path / "pages.tif").n_frames == 3
    assert pixel(tmp_path / "pages.tif") == (0, 255, 0)


def test_webp(tmp_path):
    Image.new("RGB", (8, 8), (10, 120, 240)).save(tmp_path / "x.webp", lossless=True)
    assert pixel(tmp_path / "x.webp") == (10, 120, 240)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 wide x 10 high, left half red; orientation 6 = "rotate 90 degrees clockwise".
    stored = Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_rgb(tmp_path / "rotated.jpg")
    assert image.size == (10, 20)
    assert close(image.getpixel((5, 2)), (255, 0, 0), tol=12)  # the left half is now on top
    assert close(image.getpixel((5, 17)), (0, 0, 255), tol=12)


@pytest.mark.parametrize("side", [40, 50])  # 1600 px: PIL only warns; 2500 px: PIL raises
def test_decompression_bomb_is_an_error_even_where_pil_only_warns(tmp_path, monkeypatch, side):
    Image.new("RGB", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageLoadError, match="decompression bomb") as err:
            load_rgb(tmp_path / "bomb.png")
    assert err.value.path == str(tmp_path / "bomb.png")
    # With warnings turned into errors (python -W error) it is the same clean error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match="decompression bomb"):
            load_rgb(tmp_path / "bomb.png")


def test_error_names_the_file_and_survives_pickling(tmp_path):
    import pickle

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageLoadError) as err:
        load_rgb(tmp_path / "bad.png")
    assert str(err.value).startswith(f"{tmp_path / 'bad.png'}: ")
    copy = pickle.loads(pickle.dumps(err.value))
    assert (str(copy), copy.path, copy.reason) == (str(err.value), err.value.path,
                                                   err.value.reason)
