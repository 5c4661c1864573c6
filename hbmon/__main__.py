# SPDX-License-Identifier: GPL-2.0-or-later
import sys

from hbmon.daemon import main

sys.exit(main())
