"""Seeds for the image-loader fuzzer (scripts/fuzz.sh image): small valid PNGs and JPEGs of every kind
core/image_io.cpp decodes, plus a few broken ones. Usage: fuzz_image_seeds.py OUT_DIR (needs Pillow)."""
import io
import pathlib
import struct
import sys
import zlib

from PIL import Image


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(w, h, depth, color, rows, interlace=0, extra=b""):
    """A PNG from filtered scanlines (bytes, filter byte included), written by hand for what Pillow cannot."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def adam7_rgb8(w, h, pixel):
    """Interlaced 8-bit RGB: the seven Adam7 passes, each with filter 0 (None) scanlines."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = b""
    for x0, y0, dx, dy in passes:
        for y in range(y0, h, dy):
            line = b"".join(bytes(pixel(x, y)) for x in range(x0, w, dx))
            if line:
                rows += b"\0" + line
    return raw_png(w, h, 8, 2, rows, interlace=1)


def dc_overflow_jpeg(w=160, h=128):
    """Grey baseline JPEG whose every block adds the largest DC difference (+32767): the DC prediction grows
    until dc * dequant overflows int in stb (nothings/stb#1533); decodes to garbage."""
    def seg(m, body):
        return b"\xff" + bytes([m]) + struct.pack(">H", len(body) + 2) + body
    one_code = bytes([1] + [0] * 15)  # one Huffman code of length 1
    bits = ("0" + "1" * 15 + "0") * ((w // 8) * (h // 8))  # DC symbol 15, its 15 bits, AC end-of-block
    bits += "1" * (-len(bits) % 8)
    data = b"".join(bytes([b, 0]) if b == 255 else bytes([b]) for b in int(bits, 2).to_bytes(len(bits) // 8, "big"))
    return (b"\xff\xd8" + seg(0xDB, bytes([0] + [255] * 64)) + seg(0xC0, b"\x08" + struct.pack(">HH", h, w) + b"\x01\x01\x11\x00")
            + seg(0xC4, b"\x00" + one_code + b"\x0f" + b"\x10" + one_code + b"\x00")
            + seg(0xDA, b"\x01\x01\x00\x00\x3f\x00") + data + b"\xff\xd9")


def pil(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def main(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = 9, 7  # odd sizes: partial MCUs, partial Adam7 passes
    rgb = Image.new("RGB", (w, h))
    rgb.putdata([(x * 28, y * 36, (x + y) * 16) for y in range(h) for x in range(w)])
    seeds = {
        "rgb8.png": pil(rgb, "PNG"),
        "rgba8.png": pil(rgb.convert("RGBA"), "PNG"),
        "grey8.png": pil(rgb.convert("L"), "PNG"),
        "greyalpha8.png": pil(rgb.convert("LA"), "PNG"),
        "grey1.png": pil(rgb.convert("1"), "PNG"),
        "palette.png": pil(rgb.convert("P", palette=Image.ADAPTIVE, colors=5), "PNG"),
        "palette-trns.png": pil(rgb.convert("P", palette=Image.ADAPTIVE, colors=5), "PNG", transparency=0),
        "grey16.png": pil(rgb.convert("I").point(lambda v: v * 200).convert("I;16"), "PNG"),
        "rgb16.png": raw_png(3, 2, 16, 2, b"".join(b"\0" + bytes(range(i, i + 18)) for i in range(2))),
        "rgb8-sub-filter.png": raw_png(3, 2, 8, 2, b"\1" + bytes(9) + b"\4" + bytes(range(9))),
        "interlaced.png": adam7_rgb8(w, h, lambda x, y: (x * 28, y * 36, 99)),
        "baseline.jpg": pil(rgb, "JPEG", quality=90, optimize=True),
        "baseline-444.jpg": pil(rgb, "JPEG", quality=90, subsampling=0, optimize=True),
        "restart.jpg": pil(rgb, "JPEG", quality=75, restart_marker_blocks=1, optimize=True),
        "progressive.jpg": pil(rgb, "JPEG", quality=90, progressive=True, optimize=True),
        "grey.jpg": pil(rgb.convert("L"), "JPEG", quality=90, optimize=True),
        "cmyk.jpg": pil(rgb.convert("CMYK"), "JPEG", quality=90, optimize=True),
        "dc-overflow.jpg": dc_overflow_jpeg(),
    }
    png, jpg = seeds["rgb8.png"], seeds["progressive.jpg"]
    seeds.update({
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) * 2 // 3],
        "bad-zlib.png": png.replace(b"IDAT", b"IDAT\xff\xff", 1),
        "huge-header.png": raw_png(16000, 16000, 8, 2, b"\0" * 10),
        "header-only.jpg": b"\xff\xd8\xff\xc0\x00\x11\x08\x3e\x80\x3e\x80\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9",
        "gif.gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    })
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1])
