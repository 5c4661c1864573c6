# SPDX-License-Identifier: GPL-2.0-or-later
"""`python -m hbd` runs the heartbeat daemon (same as the `hbd` command)."""
import sys

from hbd.daemon import main

sys.exit(main())
