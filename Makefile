# SPDX-License-Identifier: GPL-2.0-or-later
# Thin wrapper: everything real lives in scripts/ and the Python package.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages: real peers for the tests (libnbd, qemu, nbdkit, heartbeat...) and tools.
APT_PACKAGES := python3-libnbd libnbd-bin nbdkit qemu-utils fio fuse3 libfuse3-dev pkg-config e2fsprogs \
	iproute2 iputils-ping arping tcpdump psmisc heartbeat drbd-utils iperf3 sockperf curl qemu-system-x86 busybox-static cpio nbd-client gcc make mon libssl-dev \
	resource-agents pacemaker-cli-utils
PYTEST_ARGS ?=
# `make lint`: what is clean now stays clean. Each list is one word away from covering more:
# mypy type-checks these packages (add `replica` once it reports 0 errors; pyproject.toml [tool.mypy]
# holds the options, strict for the protocol packages);
MYPY_PACKAGES := replica hbd hacommon hbmon
# ruff checks the whole tree but these;
RUFF_EXCLUDE :=
# the C data path compiles without a warning (gcc, the same flags the extension is held to).
C_WARNINGS := -std=gnu11 -Wall -Wextra -Wshadow -Wmissing-prototypes -Werror

.PHONY: deps lint test test-unit test-integration sanitize bench demo clean install reliability

deps: $(VENV)/.deps-done

$(VENV)/.deps-done: setup.py pyproject.toml csrc/*.c csrc/*.h csrc/build_mirror.py scripts/deps.sh
	bash scripts/deps.sh "$(PYTHON)" "$(VENV)" $(APT_PACKAGES)
	touch $@

lint: deps
	$(VENV)/bin/ruff check $(foreach d,$(RUFF_EXCLUDE),--extend-exclude $(d)) .
	$(VPY) -m mypy $(MYPY_PACKAGES)
	# the OCF agent: a Python script without .py (installed as resource.d/replica-ha/replica)
	$(VENV)/bin/ruff check scripts/ocf/replica
	$(VPY) -m mypy --scripts-are-modules scripts/ocf/replica
	gcc -fsyntax-only $(C_WARNINGS) -Icsrc $(shell pkg-config --cflags fuse3) csrc/*.c
	@echo "lint: ruff, mypy ($(MYPY_PACKAGES)) and C warnings clean"

test: deps
	$(MAKE) lint
	$(VPY) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) sanitize

# The C data path built with ASan+UBSan under the tests that stress it (scripts/sanitize.sh).
sanitize: deps
	bash scripts/sanitize.sh $(VENV) -q

test-unit: deps
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: deps
	$(VPY) -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

bench: deps
	$(VPY) scripts/bench.py

demo: deps
	bash scripts/demo.sh

# `make reliability [ARGS="--kills 5 --soak --soak-minutes 10 ..."]`: kill loops, partitions, disk
# failures, a lossy network and the fuzzers, ending with a table (scripts/reliability.py --help).
reliability: deps
	$(VPY) scripts/reliability.py $(ARGS)

# `make install [PREFIX=/usr/local] [DESTDIR=stage] [UNITDIR=/lib/systemd/system] [SYSCONFDIR=/etc]`:
# a virtualenv in PREFIX/lib/replica-ha, the commands linked into PREFIX/bin, the systemd units,
# /etc/replica/replica.conf from examples/ unless one exists (scripts/install.sh says the rest).
PREFIX ?= /usr/local
UNITDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc
install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" UNITDIR="$(UNITDIR)" SYSCONFDIR="$(SYSCONFDIR)" \
		bash scripts/install.sh "$(PYTHON)"

clean:
	rm -rf $(VENV) build *.egg-info replica/_mirror*.so .pytest_cache .hypothesis
