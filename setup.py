# SPDX-License-Identifier: GPL-2.0-or-later
"""replica-ha: userspace DRBD-style replication over NBD, plus a Heartbeat-compatible daemon."""
import glob

from setuptools import find_packages, setup

setup(
    name="replica-ha",
    version="0.1.0",
    description="High availability for ordinary Linux servers: replicated disks over NBD and heartbeat failover",
    packages=find_packages(include=["replica", "replica.*", "hbd", "hbd.*", "hacommon", "hacommon.*",
                                    "hbmon", "hbmon.*"]),
    # hbmon's own Mon monitors live in the package (hbmon/monitors/*.monitor)
    package_data={"hbmon": ["monitors/*.monitor"]},
    python_requires=">=3.11",
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_mirror.py:ffibuilder"],
    # Heartbeat resource scripts; hbd finds them in <prefix>/share/replica-ha/resource.d when installed.
    data_files=[("share/replica-ha/resource.d", sorted(glob.glob("scripts/resource.d/*")))],
    install_requires=["cffi>=1.15", "cryptography", "pyroute2", "rich", "prometheus-client"],
    entry_points={
        "console_scripts": [
            "replicad=replica.daemon:main",
            "replicactl=replica.cli:main",
            "hbd=hbd.daemon:main",
            "hbctl=hbd.ctl:main",
            "hbmon=hbmon.daemon:main",
            "replica-fence-peer=hbd.fence_peer:main",
            "replica-unfence-peer=hbd.fence_peer:main_unfence",
            "replica-crm-fence-peer=replica.crm_fence:main",
            "replica-crm-unfence-peer=replica.crm_fence:main_unfence",
        ],
    },
)
