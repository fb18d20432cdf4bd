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

SIZES = dict(sam2_size=64, max_pixels=10_000_000)


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
                 "decode failed: 20000x20000 (400,000,000 pixels) is over --max-pixels 10,000,000: label it in tiles "
                 "with --tile auto, or raise --max-pixels"),
}


@pytest.mark.parametrize("name", sorted(USABLE))
def test_usable_images_decode_in_the_displayed_frame(tmp_path, name):
    make, (width, height) = USABLE[name]
    path = tmp_path / name
    path.write_bytes(make())
    result = decode_one(str(path), **SIZES)
    assert (result.status, result.error, result.width, result.height) == ("ok", None, width, height)
    assert result.sam2_pixels.shape == (64, 64, 3)


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


# Issue 12, defect 1: Pillow raises TypeError, struct.error and others on mutated files.
def _flipped(data: bytes, position: int, value: int) -> bytes:
    return data[:position] + bytes([value]) + data[position + 1:]


KNOWN_CRASHERS = {
    # one byte changed in a file Pillow writes; each raised something other than OSError/ValueError/SyntaxError
    "tiff-type-error.tif": lambda: _flipped(encoded(photo(32, 24), "TIFF"), 72, 2),
    "exif-struct-error.jpg": lambda: _flipped(encoded(photo(32, 24), "JPEG", exif=_exif()), 41, 0),
}


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "cam"
    return exif


@pytest.mark.parametrize("name", sorted(KNOWN_CRASHERS))
def test_files_that_crashed_the_decoder_end_as_error_rows(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(KNOWN_CRASHERS[name]())
    result = decode_one(str(path), **SIZES)
    assert result.status == "error" and result.error.startswith("decode failed: corrupt or truncated image: ")


FUZZ_FORMATS = {
    "jpg": lambda: encoded(photo(32, 24), "JPEG", exif=_exif()),
    "png": lambda: encoded(photo(32, 24), "PNG"),
    "tif": lambda: encoded(photo(32, 24), "TIFF"),
    "webp": lambda: encoded(photo(32, 24), "WEBP", exif=_exif()),
    "gif": lambda: encoded(photo(32, 24), "GIF"),
    "bmp": lambda: encoded(photo(32, 24), "BMP"),
}


def fuzzed(data: bytes, seed: int = 12) -> list[bytes]:
    """Each of the first 160 bytes set to 0, 2 and 0xFF; 40 truncations; 200 seeded multi-byte flips."""
    rng = np.random.default_rng(seed)
    variants = [_flipped(data, position, value) for position in range(min(160, len(data))) for value in (0, 2, 0xFF)]
    variants += [data[:length] for length in np.linspace(1, len(data) - 1, 40).astype(int)]
    for _ in range(200):
        mutated = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 5)):
            mutated[position] = rng.integers(0, 256)
        variants.append(bytes(mutated))
    return variants


@pytest.mark.parametrize("extension", sorted(FUZZ_FORMATS))
def test_fuzzed_files_decode_or_end_as_one_error_row_each(tmp_path, extension):
    from labeler.actors.decode import decode_batch

    uris = []
    for k, data in enumerate(fuzzed(FUZZ_FORMATS[extension]())):
        path = tmp_path / f"{k}.{extension}"
        path.write_bytes(data)
        uris.append(str(path))
    decoded = decode_batch({"image_id": np.arange(len(uris)), "uri": np.array(uris, dtype=object)},
                           sam2_size=32)
    errors = decoded["error"][decoded["status"] == "error"]
    assert len(decoded["status"]) == len(uris)
    assert all(e.startswith(("decode failed: ", "read failed: ")) and "\n" not in e for e in errors)


def test_a_fifo_named_like_an_image_is_an_error_row_not_a_hang(tmp_path):
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    result = decode_one(str(fifo), **SIZES)
    assert result.error == "read failed: not a regular file (a FIFO, socket or device)"


def test_a_large_file_that_is_not_an_image_is_refused_after_its_first_bytes(tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as handle:  # sparse: 3 GB on paper, no disk used
        handle.truncate(3 << 30)
        handle.seek(0)
        handle.write(b"<html>" + b" " * 100)
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = decode_one(str(big), **SIZES, max_bytes=4 << 30)
    assert result.error == "decode failed: not an image file"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: far less than 3 GB read


def test_an_image_file_above_the_byte_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encoded(photo(600, 400), "PNG"))
    result = decode_one(str(path), **SIZES, max_bytes=1000)
    assert result.error.startswith("read failed: ") and "is more than the read limit of 1000 bytes" in result.error


def test_a_read_that_never_returns_times_out_as_an_error_row(tmp_path):
    """A real HTTP server that accepts the connection and never answers."""
    import socket
    import threading

    from labeler.actors.decode import decode_batch

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    good = tmp_path / "good.png"
    good.write_bytes(encoded(photo(), "PNG"))
    hung = f"http://127.0.0.1:{server.getsockname()[1]}/hangs.jpg"
    try:
        import time

        started = time.monotonic()
        decoded = decode_batch({"image_id": np.array([1, 2]), "uri": np.array([hung, str(good)], dtype=object)},
                               sam2_size=32, read_timeout=1.5)
        assert time.monotonic() - started < 30
    finally:
        server.close()
    assert list(decoded["status"]) == ["error", "ok"]
    assert decoded["error"][0] == "read failed: timed out after 1.5 s"


def test_floating_point_tiff_is_scaled_not_black(tmp_path):
    ramp = np.linspace(0.0, 1.0, 60 * 40, dtype=np.float32).reshape(40, 60)
    path = tmp_path / "float.tif"
    path.write_bytes(encoded(Image.fromarray(ramp, mode="F"), "TIFF"))
    result = decode_one(str(path), **SIZES)
    assert result.status == "ok" and result.sam2_pixels.max() >= 250 and result.sam2_pixels.min() <= 5


@pytest.mark.parametrize("fmt, extension", [("AVIF", "avif"), ("JPEG2000", "jp2")])
def test_avif_and_jpeg2000_are_listed_by_folder_sources_and_decode(tmp_path, fmt, extension):
    from .conftest import source_uris

    (tmp_path / f"photo.{extension}").write_bytes(encoded(photo(), fmt))
    listed = source_uris(str(tmp_path))
    assert listed == [str(tmp_path / f"photo.{extension}")]
    assert decode_one(listed[0], **SIZES).status == "ok"
