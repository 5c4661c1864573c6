# SPDX-License-Identifier: GPL-2.0-or-later
"""cffi builder for replica._mirror (out-of-line API mode): the cdef is csrc/mirror.h itself.

The layers (mirror.h has the picture): nbd_frontend.c, fuse_frontend.c -> request.c/resource.c ->
connection.c/device.c -> transport.c/transport_socket.c/transport_tls.c
(tls.c and digest.c: leaf libraries over OpenSSL). Only the contract is exported
(mirror.map); our sources build with -Wall -Wextra -Wshadow -Wmissing-prototypes -Werror.

`REPLICA_SANITIZE=address,undefined` (scripts/sanitize.sh, `make sanitize`) builds the same
sources with the compiler's sanitizers instead of -O2; the result must be loaded with the ASan
runtime preloaded (LD_PRELOAD=libasan.so), since the Python interpreter itself is not built
with it.
"""
import os
import pathlib
import shlex
import subprocess
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["nbd_frontend.c", "fuse_frontend.c", "request.c", "resource.c", "connection.c", "device.c", "transport.c",
           "transport_socket.c", "transport_tls.c", "tls.c", "digest.c"]
SANITIZE = os.environ.get("REPLICA_SANITIZE", "")
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wmissing-prototypes", "-Werror"]



def pkg_config(*args: str) -> list[str]:
    """libfuse3's flags (fuse_frontend.c): Debian's libfuse3-dev, found through pkg-config."""
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"build_mirror: pkg-config fuse3 {' '.join(args)} failed ({e}): install pkg-config and "
                 f"libfuse3-dev (make deps)")
    return shlex.split(out)


FUSE_CFLAGS = pkg_config("--cflags")
FUSE_LIBS = pkg_config("--libs")

if SANITIZE:
    OPT = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}", "-fno-sanitize-recover=all"]
    LINK = [f"-fsanitize={SANITIZE}"]
else:
    OPT = ["-O2"]
    LINK = []

# The module cffi generates is not ours to warn about: its own prototypes and casts are
# exempt (the pragmas reach only that translation unit; our sources see the full set).
PREAMBLE = """\
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wcast-function-type"
#include <stdint.h>
#include "mirror.h"
"""

ffibuilder = FFI()
ffibuilder.cdef((HERE / "mirror.h").read_text())
ffibuilder.set_source(
    "replica._mirror",
    PREAMBLE,
    sources=[str(HERE / name) for name in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=OPT + WARNINGS + ["-std=gnu11", "-pthread"] + FUSE_CFLAGS,
    extra_link_args=(["-pthread", f"-Wl,--version-script={HERE / 'mirror.map'}"] + FUSE_LIBS + ["-lssl", "-lcrypto"]
                     + LINK),
)

if __name__ == "__main__":
    # python csrc/build_mirror.py [OUTDIR]: build replica/_mirror*.so under OUTDIR (default: here).
    ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True)
