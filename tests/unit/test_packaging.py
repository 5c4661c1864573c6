# SPDX-License-Identifier: GPL-2.0-or-later
"""Running replica-ha as a service: the systemd units pass `systemd-analyze verify`, replicad
tells systemd READY=1 (sd_notify's datagram) once every resource is up and fails the unit when
one cannot come up, log files are reopened on SIGHUP (logrotate), and `make install` lays out a
tree that runs from PREFIX without overwriting an existing /etc/replica/replica.conf."""
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import requires_commands

from hacommon import logfiles, sdnotify
from replica.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "packaging" / "systemd").glob("*.service"))
BINDIR = Path(sys.executable).parent       # make deps' venv: replicad, hbd, hbmon are there
COMMANDS = ("replicad", "replicactl", "hbd", "hbctl", "hbmon", "replica-fence-peer",
            "replica-unfence-peer", "replica-crm-fence-peer", "replica-crm-unfence-peer")


def render(unit: Path, out_dir: Path, bindir: Path = BINDIR) -> Path:
    """What scripts/install.sh does to a unit: the paths filled in."""
    out = out_dir / unit.name
    out.write_text(unit.read_text().replace("@BINDIR@", str(bindir))
                   .replace("@DOCDIR@", "/usr/share/doc/replica-ha"))
    return out


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)


# --- the units -----------------------------------------------------------------------------

def test_units_are_the_three_daemons():
    assert [u.name for u in UNITS] == ["hbd.service", "hbmon.service", "replicad.service"]
    replicad = (REPO / "packaging/systemd/replicad.service").read_text()
    assert "Type=notify" in replicad and "ExecStart=@BINDIR@/replicad -f --startup all" in replicad
    assert "After=network-online.target replicad.service" in (REPO / "packaging/systemd/hbd.service").read_text()


def test_units_pass_systemd_analyze_verify(tmp_path):
    requires_commands("systemd-analyze")
    rendered = [render(u, tmp_path) for u in UNITS]
    result = verify(rendered)
    assert (result.returncode, result.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt type and a missing command are reported."""
    requires_commands("systemd-analyze")
    unit = render(REPO / "packaging/systemd/replicad.service", tmp_path, bindir=tmp_path / "nowhere")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    result = verify([unit])
    assert result.returncode != 0
    assert "notfy" in result.stderr and f"{tmp_path}/nowhere/replicad is not executable" in result.stderr


def test_example_config_parses_for_both_hosts():
    config = load_config(str(REPO / "examples/replica.conf"))
    r0 = config.resource("r0")
    assert [r0.host(n).name for n in ("alpha", "beta")] == ["alpha", "beta"]
    assert r0.startup == {"wfc-timeout": "120", "degr-wfc-timeout": "60"}


# --- sd_notify ------------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def test_notify_sends_one_datagram_to_a_path_or_an_abstract_name(notify_socket, monkeypatch):
    sock, path = notify_socket
    assert sdnotify.notify("READY=1", "STATUS=two\nlines", socket_path=path)
    assert sock.recv(4096) == b"READY=1\nSTATUS=two lines"
    name = f"replica-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind(b"\0" + name.encode())
        assert sdnotify.notify("STOPPING=1", socket_path="@" + name)
        assert abstract.recv(4096) == b"STOPPING=1"
    monkeypatch.setattr(sdnotify, "_taken", None)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False           # not under systemd: nothing to do
    with pytest.raises(ValueError, match="neither an absolute path"):
        sdnotify.notify("READY=1", socket_path="relative/notify")


def test_take_notify_socket_hides_it_from_children(monkeypatch, notify_socket):
    sock, path = notify_socket
    monkeypatch.setattr(sdnotify, "_taken", None)
    env = {"NOTIFY_SOCKET": path, "PATH": "/bin"}
    assert sdnotify.take_notify_socket(env) == path
    assert "NOTIFY_SOCKET" not in env
    assert sdnotify.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


# --- replicad under systemd's protocol ------------------------------------------------------

def _conf(tmp_path: Path, names: list[str], missing: str | None = None) -> Path:
    node = os.uname().nodename
    lines = []
    for name in names:
        img = tmp_path / f"{name}.img"
        if name != missing:
            img.write_bytes(b"")
            os.truncate(img, 4 << 20)
        lines.append(f"resource {name} {{ on {node} {{ disk {img}; export unix:{tmp_path}/{name}.sock; }} }}")
    conf = tmp_path / "replica.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@pytest.fixture
def start_replicad(tmp_path, notify_socket):
    procs: list[subprocess.Popen[str]] = []

    def start(conf: Path, *extra: str) -> subprocess.Popen[str]:
        env = dict(os.environ, NOTIFY_SOCKET=notify_socket[1])
        env.pop("JOURNAL_STREAM", None)
        proc = subprocess.Popen([sys.executable, "-m", "replica.daemon", "-f", "--config", str(conf),
                                 "--run-dir", str(tmp_path / "run"), *extra],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        procs.append(proc)
        return proc
    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _status(tmp_path: Path, conf: Path) -> str:
    return subprocess.run([str(BINDIR / "replicactl"), "--config", str(conf), "--run-dir",
                           str(tmp_path / "run"), "status"], capture_output=True, text=True,
                          timeout=30).stdout


def test_replicad_startup_all_is_ready_once_every_resource_is_up(tmp_path, notify_socket, start_replicad):
    sock, _ = notify_socket
    conf = _conf(tmp_path, ["r0", "r1"])
    proc = start_replicad(conf, "--startup", "all", "--log-file", str(tmp_path / "replicad.log"))
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 resource(s) up: r0 r1"
    # READY=1 came after both were up: they are, and Primary (a standalone resource is)
    status = _status(tmp_path, conf)
    assert "r0 role:Primary" in status and "r1 role:Primary" in status
    proc.terminate()
    assert sock.recv(4096) == b"STOPPING=1"
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "r0: down" in out and "r1: down" in out
    assert "r1: down" in (tmp_path / "replicad.log").read_text()


def test_replicad_startup_fails_the_unit_when_a_resource_cannot_come_up(tmp_path, notify_socket,
                                                                        start_replicad):
    sock, _ = notify_socket
    conf = _conf(tmp_path, ["r0", "r1"], missing="r1")
    proc = start_replicad(conf, "--startup", "all")
    message = sock.recv(4096).decode()
    assert message.startswith("STATUS=startup all: r1 not up (replicactl startup exited with status")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1                 # systemd marks the unit failed, no READY=1 sent
    assert f"{tmp_path}/r1.img" in out          # replicactl's own error names the disk
    assert "r0: down" in out                    # what did come up is taken down again


def test_replicad_startup_is_ready_when_wait_connect_times_out(tmp_path, notify_socket, start_replicad):
    """As DRBD's boot goes on after degr-wfc-timeout: the resource is up (Connecting), the unit
    is started, and its STATUS says that startup did not finish cleanly."""
    sock, _ = notify_socket
    with socket.socket() as probe:            # a free loopback port for the peer link
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    img = tmp_path / "r0.img"
    img.write_bytes(b"")
    os.truncate(img, 8 << 20)
    conf = tmp_path / "replica.conf"
    conf.write_text(f"""resource r0 {{
  startup {{ wfc-timeout 1; degr-wfc-timeout 1; }}
  on {os.uname().nodename} {{ disk {img}; meta-disk internal; address 127.0.0.1:{port}; }}
  on peer {{ disk {img}; meta-disk internal; address 127.0.0.2:{port}; }}
}}
""")
    md = subprocess.run([str(BINDIR / "replicactl"), "--config", str(conf), "--run-dir",
                         str(tmp_path / "run"), "create-md", "r0"], capture_output=True, text=True,
                        timeout=60)
    assert md.returncode == 0, md.stderr
    proc = start_replicad(conf, "--startup", "all")
    assert sock.recv(4096) == (b"READY=1\nSTATUS=1 resource(s) up: r0 (replicactl startup exited "
                               b"with status 1: see the log)")
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert "r0: wait-connect: not Connected after 1 s (degr-wfc-timeout; now Connecting)" in out


def test_replicad_without_startup_is_ready_when_listening(tmp_path, notify_socket, start_replicad):
    sock, _ = notify_socket
    conf = _conf(tmp_path, ["r0"])
    start_replicad(conf)
    assert sock.recv(4096) == f"READY=1\nSTATUS=listening on {tmp_path}/run/replicad.sock".encode()
    # nothing was brought up: that is left to replicactl (or hbd's datadisk) as before
    assert _status(tmp_path, conf) == ""


def test_replicad_reopens_its_log_file_on_sighup(tmp_path, notify_socket, start_replicad):
    """logrotate moves the file and sends SIGHUP: replicad lives on and writes the new file
    (before this, SIGHUP's default action killed it)."""
    sock, _ = notify_socket
    log_path = tmp_path / "replicad.log"
    proc = start_replicad(_conf(tmp_path, ["r0"]), "--log-file", str(log_path))
    assert sock.recv(4096).startswith(b"READY=1")
    log_path.rename(tmp_path / "replicad.log.1")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while not (log_path.exists() and "SIGHUP: reopened" in log_path.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "no reopened log after SIGHUP"
        time.sleep(0.05)
    assert f"SIGHUP: reopened {log_path}" in log_path.read_text()
    assert "started: node" in (tmp_path / "replicad.log.1").read_text()
    assert proc.poll() is None


def test_replicad_refuses_an_unknown_syslog_facility(tmp_path):
    result = subprocess.run([sys.executable, "-m", "replica.daemon", "-f", "--syslog-facility",
                             "local9", "--config", str(_conf(tmp_path, ["r0"])), "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=30,
                            cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.startswith("replicad: unknown syslog facility 'local9' (known: ")


# --- log files and the journal --------------------------------------------------------------

def test_reopening_file_handler_follows_rotation_and_reopen(tmp_path):
    logger = logging.getLogger("test-packaging-reopen")
    logger.propagate = False
    path = tmp_path / "x.log"
    handler = logfiles.ReopeningFileHandler(str(path))
    logger.addHandler(handler)
    try:
        logger.warning("one")
        path.rename(tmp_path / "x.log.1")
        logger.warning("two")                            # moved away: a new file at the path
        os.truncate(path, 0)
        assert logfiles.reopen_all(logger) == [str(path)]
        logger.warning("three")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / "x.log.1").read_text() == "one\n"
    assert path.read_text() == "three\n"


def test_hbd_logfile_is_reopenable(tmp_path):
    from hbd import daemon as hbd_daemon
    cfg = SimpleNamespace(logfacility=None, logfile=str(tmp_path / "ha-log"),
                          debugfile=str(tmp_path / "ha-debug"))
    hbd_daemon.setup_logging(cfg, "ha1", foreground=False)   # type: ignore[arg-type]
    try:
        assert sorted(logfiles.reopen_all(hbd_daemon.log)) == [cfg.debugfile, cfg.logfile]
    finally:
        for h in list(hbd_daemon.log.handlers):
            hbd_daemon.log.removeHandler(h)
            h.close()


def test_journal_stream_detection_and_priority_prefix(tmp_path):
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert logfiles.journal_stderr({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not logfiles.journal_stderr({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)
        assert not logfiles.journal_stderr({"JOURNAL_STREAM": "garbage"}, f)
        assert not logfiles.journal_stderr({}, f)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logfiles.JournalFormatter("%(message)s"))
    logger = logging.getLogger("test-packaging-journal")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    logger.info("up")
    logger.error("disk failed")
    assert out.getvalue() == "<6>up\n<3>disk failed\n"


# --- make install ---------------------------------------------------------------------------

@pytest.mark.slow
def test_make_install_into_destdir(tmp_path):
    """The tree under DESTDIR runs once copied to / : units point at PREFIX/bin, which links into
    the virtualenv in PREFIX/lib/replica-ha, whose scripts name PREFIX, not DESTDIR."""
    requires_commands("make")
    stage, prefix = tmp_path / "stage", "/opt/replica-test"

    def make_install() -> str:
        result = subprocess.run(["make", "-s", "install", f"DESTDIR={stage}", f"PREFIX={prefix}",
                                 f"PYTHON={shutil.which('python3') or 'python3'}"], cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    make_install()
    venv = stage / prefix.lstrip("/") / "lib/replica-ha"
    for command in COMMANDS:
        link = stage / prefix.lstrip("/") / "bin" / command
        assert os.readlink(link) == f"{prefix}/lib/replica-ha/bin/{command}"
        assert (venv / "bin" / command).read_text().splitlines()[0] == f"#!{prefix}/lib/replica-ha/bin/python"
    assert not subprocess.run(["grep", "-rlF", str(stage), str(venv / "bin")],
                              capture_output=True, text=True).stdout
    # the package, its C extension and hbd's resource scripts, found from the installed venv
    probe = subprocess.run([str(venv / "bin/python"), "-c",
                            "import replica, replica._mirror, hbd.resources as r; "
                            "print(replica.__file__); print(r.builtin_resource_dir())"],
                           cwd="/", capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    package, scripts = probe.stdout.split()
    assert package.startswith(str(venv)) and scripts == str(venv / "share/replica-ha/resource.d")
    assert {"datadisk", "Filesystem", "IPaddr2"} <= set(os.listdir(scripts))
    for unit in UNITS:
        text = (stage / "lib/systemd/system" / unit.name).read_text()
        assert "@BINDIR@" not in text and "@DOCDIR@" not in text
        assert f"ExecStart={prefix}/bin/" in text
    conf = stage / "etc/replica/replica.conf"
    assert conf.read_text() == (REPO / "examples/replica.conf").read_text()
    assert (stage / prefix.lstrip("/") / "share/doc/replica-ha/examples/ha.d/haresources").exists()
    # an existing configuration is never overwritten
    conf.write_text("# mine\n")
    assert "replica.conf exists: left as it is" in make_install()
    assert conf.read_text() == "# mine\n"
