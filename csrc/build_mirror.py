# SPDX-License-Identifier: GPL-2.0-or-later
"""cffi builder for replica._mirror (out-of-line API mode): the cdef is csrc/mirror.h itself.

`REPLICA_SANITIZE=address,undefined` (scripts/sanitize.sh, `make sanitize`) builds the same
sources with the compiler's sanitizers instead of -O2; the result must be loaded with the ASan
runtime preloaded (LD_PRELOAD=libasan.so), since the Python interpreter itself is not built
with it.
"""
import os
import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["engine.c", "peer.c", "nbd_frontend.c"]
SANITIZE = os.environ.get("REPLICA_SANITIZE", "")

if SANITIZE:
    OPT = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all"]
    LINK = [f"-fsanitize={SANITIZE}"]
else:
    OPT = ["-O2"]
    LINK = []

ffibuilder = FFI()
ffibuilder.cdef((HERE / "mirror.h").read_text())
ffibuilder.set_source(
    "replica._mirror",
    "#include <stdint.h>\n#include \"mirror.h\"\n",
    sources=[str(HERE / name) for name in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=OPT + ["-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-pthread"],
    extra_link_args=["-pthread"] + LINK,
)

if __name__ == "__main__":
    # python csrc/build_mirror.py [OUTDIR]: build replica/_mirror*.so under OUTDIR (default: here).
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True)
