# SPDX-License-Identifier: GPL-2.0-or-later
# Thin wrapper: everything real lives in scripts/ and the Python package.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages. `make deps`: what the product needs to build and run: Python with venv and
# headers, the C extension's compiler and libraries (FUSE 3, libcrypto), `ip`, the FUSE tools,
# e2fsprogs (ext3/ext4 on a resource), psmisc (`fuser`, Filesystem's stop), Mon (hbmon runs its
# monitors and alerts). README "Two commands" lists both sets; tests/unit/test_deps_lists.py
# keeps them apart.
APT_RUNTIME := python3 python3-venv python3-dev gcc make pkg-config libfuse3-dev libssl-dev \
	fuse3 iproute2 e2fsprogs psmisc mon
# `make test-deps` (`make test`, `make demo`, `make bench` run it): real peers for the tests and
# the demos (libnbd, qemu, nbdkit, the original heartbeat, DRBD's tools, Pacemaker, a web server
# and a database for the service demos) and measuring tools.
APT_TEST := python3-libnbd libnbd-bin nbdkit qemu-utils qemu-system-x86 nbd-client busybox-static cpio \
	fio tcpdump iperf3 sockperf iputils-ping arping curl heartbeat drbd-utils resource-agents \
	pacemaker corosync pacemaker-cli-utils kmod nginx mariadb-server
# pip: the runtime packages are setup.py's install_requires (scripts/install.sh installs the same);
# these are for tests and `make lint` only (linters pinned: a new release with new rules must not
# turn a clean tree red by itself).
PIP_TEST := pytest pytest-timeout hypothesis ruff==0.17.6 mypy==2.4.1
PYTEST_ARGS ?=
# `make lint`: what is clean now stays clean. Each list is one word away from covering more:
# mypy type-checks these packages (add `replica` once it reports 0 errors; pyproject.toml [tool.mypy]
# holds the options, strict for the protocol packages);
MYPY_PACKAGES := replica hbd hacommon hbmon
# ruff checks the whole tree but these;
RUFF_EXCLUDE :=
# the C data path compiles without a warning (gcc, the same flags the extension is held to).
C_WARNINGS := -std=gnu11 -Wall -Wextra -Wshadow -Wmissing-prototypes -Werror

.PHONY: deps test-deps lint test test-unit test-integration sanitize bench demo reliability clean install

deps: $(VENV)/.deps-done

$(VENV)/.deps-done: setup.py pyproject.toml csrc/*.c csrc/*.h csrc/build_mirror.py scripts/deps.sh
	bash scripts/deps.sh runtime "$(PYTHON)" "$(VENV)" $(APT_RUNTIME)
	touch $@

test-deps: $(VENV)/.test-deps-done

$(VENV)/.test-deps-done: $(VENV)/.deps-done scripts/deps.sh
	PIP_PACKAGES="$(PIP_TEST)" bash scripts/deps.sh test "$(PYTHON)" "$(VENV)" $(APT_TEST)
	touch $@

lint: test-deps
	$(VENV)/bin/ruff check $(foreach d,$(RUFF_EXCLUDE),--extend-exclude $(d)) .
	$(VPY) -m mypy $(MYPY_PACKAGES)
	# the OCF agent: a Python script without .py (installed as resource.d/replica-ha/replica)
	$(VENV)/bin/ruff check scripts/ocf/replica
	$(VPY) -m mypy --scripts-are-modules scripts/ocf/replica
	gcc -fsyntax-only $(C_WARNINGS) -Icsrc $(shell pkg-config --cflags fuse3) csrc/*.c
	@echo "lint: ruff, mypy ($(MYPY_PACKAGES)) and C warnings clean"

test: test-deps
	$(MAKE) lint
	$(VPY) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) sanitize

# The C data path built with ASan+UBSan under the tests that stress it (scripts/sanitize.sh).
sanitize: test-deps
	bash scripts/sanitize.sh $(VENV) -q

test-unit: test-deps
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: test-deps
	$(VPY) -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

bench: test-deps
	$(VPY) scripts/bench.py

# `make demo [ARGS=--keep|--down|--tour]` (scripts/demo.sh says what each shows)
demo: test-deps
	bash scripts/demo.sh $(ARGS)

# `make reliability [ARGS="--kills 5 --soak --soak-minutes 10 ..."]`: kill loops, partitions, disk
# failures, a lossy network and the fuzzers, ending with a table (scripts/reliability.py --help).
reliability: test-deps
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
