"""Every kind of broken or unusual image file, through the pipeline's own read + decode
step: usable ones decode to RGB in the EXIF-corrected frame, the rest become one-line
error reasons. Never an exception."""

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.actors.decode import decode_one

SIZES = dict(sam2_size=64, dino_size=28, max_pixels=10_000_000)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width=60, height=40) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8))


def palette_with_transparency() -> bytes:
    image = photo().convert("P")
    return encoded(image, "PNG", transparency=0)


def exif_rotated() -> bytes:
    exif = photo().getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return encoded(photo(), "JPEG", exif=exif)


def animated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    photo().save(buffer, fmt, save_all=True, append_images=[photo().rotate(90), photo().transpose(0)])
    return buffer.getvalue()


USABLE = {
    "cmyk.jpg": (lambda: encoded(photo().convert("CMYK"), "JPEG"), (60, 40)),
    "gray16.png": (lambda: encoded(Image.fromarray(np.full((40, 60), 40000, np.uint16)), "PNG"), (60, 40)),
    "palette-alpha.png": (palette_with_transparency, (60, 40)),
    "gray.png": (lambda: encoded(photo().convert("L"), "PNG"), (60, 40)),
    "one-pixel.png": (lambda: encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
    "exif-rotated.jpg": (exif_rotated, (40, 60)),  # displayed (and labelled) rotated
    "animated.gif": (lambda: animated("GIF"), (60, 40)),
    "pages.tiff": (lambda: animated("TIFF"), (60, 40)),
    "photo.webp": (lambda: encoded(photo(), "WEBP"), (60, 40)),
}

BROKEN = {
    "zero-bytes.jpg": (lambda: b"", "decode failed: empty file"),
    "truncated.jpg": (lambda: encoded(photo(600, 400), "JPEG")[:2000], "decode failed: corrupt or truncated image"),
    "truncated.png": (lambda: encoded(photo(600, 400), "PNG")[:3000], "decode failed: corrupt or truncated image"),
    "page.jpg": (lambda: b"<!doctype html><html><body>Not Found</body></html>", "decode failed: not an image file"),
    "bomb.png": (lambda: encoded(Image.new("1", (20000, 20000)), "PNG"),
                 "decode failed: 20000x20000 exceeds the pixel limit of 10000000"),
}


@pytest.mark.parametrize("name", sorted(USABLE))
def test_usable_images_decode_in_the_displayed_frame(tmp_path, name):
    make, (width, height) = USABLE[name]
    path = tmp_path / name
    path.write_bytes(make())
    result = decode_one(str(path), **SIZES)
    assert (result.status, result.error, result.width, result.height) == ("ok", None, width, height)
    assert result.sam2_pixels.shape == (64, 64, 3) and result.dino_pixels.shape == (28, 28, 3)


def test_sixteen_bit_values_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    path.write_bytes(USABLE["gray16.png"][0]())
    assert abs(int(decode_one(str(path), **SIZES).sam2_pixels.mean()) - round(40000 / 65535 * 255)) <= 1


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_become_error_reasons(tmp_path, name):
    make, reason = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(make())
    result = decode_one(str(path), **SIZES)
    assert result.status == "error" and result.error.startswith(reason)
    assert "\n" not in result.error


def test_missing_file_folder_and_symlink_loop(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    assert decode_one(str(tmp_path / "absent.jpg"), **SIZES).error == "read failed: no such file"
    assert decode_one(str(tmp_path / "folder.jpg"), **SIZES).error == "read failed: is a folder, not a file"
    assert decode_one(str(tmp_path / "loop.jpg"), **SIZES).error.startswith("read failed: ")


def test_names_with_spaces_and_non_ascii(tmp_path):
    path = tmp_path / "fotos de verão" / "café crème ü.png"
    path.parent.mkdir()
    path.write_bytes(encoded(photo(), "PNG"))
    assert decode_one(str(path), **SIZES).status == "ok"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to another user")
def test_unreadable_file_is_an_error_row():
    """Root reads everything, so the read runs as user 'nobody' on a mode-000 file."""
    folder = Path(tempfile.mkdtemp(prefix="labeler-perm-"))
    try:
        folder.chmod(0o755)
        secret = folder / "secret.jpg"
        secret.write_bytes(encoded(photo(), "JPEG"))
        secret.chmod(0o000)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
        path_setup = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
        importable = subprocess.run([*as_nobody, path_setup + "import labeler.actors.decode"], capture_output=True)
        if importable.returncode:
            pytest.skip("the interpreter or this checkout is not readable by user 'nobody' here")
        script = path_setup + ("from labeler.actors.decode import decode_one; "
                               f"print(decode_one({str(secret)!r}, 64, 28, 1000).error)")
        result = subprocess.run([*as_nobody, script], capture_output=True, text=True)
        assert result.stdout.strip() == "read failed: permission denied", result.stderr[-1000:]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
