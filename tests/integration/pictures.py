"""Pictures for the "pictures in" tests (issue 10 part 3): real PNG files
made with the standard library, of a chosen size and content."""

import struct
import zlib


def png(width, height, seed):
    """A real PNG of noise (incompressible, so its size follows width *
    height), different for every seed."""
    rows = b""
    x = seed
    for _ in range(height):
        row = bytearray([0])
        for _ in range(width * 3):
            x = (x * 1103515245 + 12345) & 0x7fffffff
            row.append(x >> 16 & 0xff)
        rows += bytes(row)

    def chunk(kind, data):
        c = kind + data
        return (struct.pack(">I", len(data)) + c +
                struct.pack(">I", zlib.crc32(c) & 0xffffffff))
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                       0, 0)) +
            chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b""))
