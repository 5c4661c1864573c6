# SPDX-License-Identifier: GPL-2.0-or-later
"""cffi builder for replica._mirror (out-of-line API mode): the cdef is csrc/mirror.h itself."""
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["engine.c", "peer.c", "nbd_frontend.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "mirror.h").read_text())
ffibuilder.set_source(
    "replica._mirror",
    "#include <stdint.h>\n#include \"mirror.h\"\n",
    sources=[str(HERE / name) for name in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
