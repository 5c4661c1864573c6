# SPDX-License-Identifier: GPL-2.0-or-later
"""authkeys: heartbeat's file format, permission check and exact digests."""
import os
import pathlib
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError
from hbd.authkeys import AuthKeys, AuthMethod, crc32_heartbeat, load_authkeys, parse_authkeys

SEED = pathlib.Path(__file__).resolve().parents[2] / "examples" / "seed"
# heartbeat-reference.md 1.4 test vector
BODY = b"t=status\nst=active\nsrc=ha1\nseq=1\nhg=3\nts=3e8a1b2c\nld=0.00 0.01 0.05 1/60 1234\nttl=3\n"
DOC_EXAMPLE = "auth 2\n1 crc\n2 sha1 HI!\n3 md5 Hello!\n"


def test_crc_is_posix_crc32_without_length():
    assert crc32_heartbeat(b"123456789") == 0x765E7680
    assert AuthMethod(1, "crc").digest(BODY) == "949be3ce"


def test_crc_is_not_zero_padded():
    # heartbeat prints "%lx": find an input whose crc has a leading zero nibble
    for i in range(10000):
        d = AuthMethod(1, "crc").digest(b"x%d" % i)
        if len(d) < 8:
            assert not d.startswith("0") and int(d, 16) < 0x10000000
            break
    else:
        pytest.fail("no short crc found")


def test_hmac_vectors_from_reference():
    assert AuthMethod(2, "sha1", b"HI!").digest(BODY) == "9d5bf122c70e5daeb85e362c619afa567da0a32d"
    assert AuthMethod(3, "md5", b"Hello!").digest(BODY) == "805faa43d604fe7dbcb1475b9ba6d42f"


def test_heartbeat_doc_example():
    keys = parse_authkeys(DOC_EXAMPLE)
    assert keys.active == AuthMethod(2, "sha1", b"HI!")
    assert sorted(keys.methods) == [1, 2, 3]
    assert keys.methods[3] == AuthMethod(3, "md5", b"Hello!")
    assert keys.methods[1] == AuthMethod(1, "crc", b"")
    assert keys.warnings == ()


def test_sign_and_verify_any_configured_entry():
    keys = parse_authkeys(DOC_EXAMPLE)
    assert keys.sign(BODY) == "2 9d5bf122c70e5daeb85e362c619afa567da0a32d"
    assert keys.verify(BODY, keys.sign(BODY))
    assert keys.verify(BODY, "1 949be3ce")
    assert keys.verify(BODY, "3 805faa43d604fe7dbcb1475b9ba6d42f")
    assert not keys.verify(BODY + b"x", keys.sign(BODY))
    assert not keys.verify(BODY, "4 949be3ce")           # unknown entry
    assert not keys.verify(BODY, "2 9D5BF122C70E5DAEB85E362C619AFA567DA0A32D")  # heartbeat strcmp: exact
    for bad in ("", "2", "2  x", "x 949be3ce", "1 949be3ce extra", "-1 949be3ce", "0001 949be3ce"):
        assert not keys.verify(BODY, bad), bad


def test_wrong_key_does_not_verify():
    ours = parse_authkeys("auth 2\n2 sha1 HI!\n")
    theirs = parse_authkeys("auth 2\n2 sha1 other\n")
    assert not ours.verify(BODY, theirs.sign(BODY))


def test_sha256_extension():
    keys = parse_authkeys("auth 4\n4 sha256 s3cret\n")
    sig = keys.sign(BODY)
    assert sig.startswith("4 ") and len(sig) == 2 + 64
    assert keys.verify(BODY, sig)


def test_seed_file_verbatim_parses(tmp_path):
    shutil.copy(SEED / "authkeys", tmp_path / "authkeys")
    os.chmod(tmp_path / "authkeys", 0o600)
    keys = load_authkeys(tmp_path)
    assert keys.active == AuthMethod(2, "sha1", b"mahnamahna")
    assert list(keys.methods) == [2]
    assert len(keys.warnings) == 1
    assert keys.warnings[0].endswith("authkeys:8: method line without an entry number taken as entry 2 "
                                     "(from 'auth 2'); heartbeat itself needs '2 sha1 mahnamahna'")
    # the seed key is the one heartbeat-wire.md's captures were signed with
    assert keys.sign(b"t=status\n").startswith("2 ")


def test_comment_only_at_line_start_key_may_contain_hash():
    keys = parse_authkeys("# comment\n  # indented comment\nauth 1\n1 sha1 pass#word\n")
    assert keys.active.key == b"pass#word"


def test_extra_key_words_use_first_word_like_heartbeat():
    keys = parse_authkeys("auth 1\n1 sha1 my secret phrase\n")
    assert keys.active.key == b"my"
    assert keys.warnings == ("authkeys:2: entry 1: only the first word of the key is used, as heartbeat does; "
                             "ignored 'secret phrase'",)


def test_method_name_case_insensitive_and_any_order():
    keys = parse_authkeys("3 MD5 k\nauth 3\n")
    assert keys.active == AuthMethod(3, "md5", b"k")


@pytest.mark.parametrize("text, message", [
    ("1 crc\n", "authkeys: missing 'auth N' line: it names the entry used to sign messages"),
    ("auth 2\n1 crc\n", "authkeys:1: auth 2: no entry 2 defined (expected a line like '2 sha1 KEY')"),
    ("auth 1\nauth 1\n1 crc\n", "authkeys:2: auth: duplicate 'auth' line (first one on line 1)"),
    ("auth\n", "authkeys:1: auth: expected 'auth N' with one entry number, got 'auth'"),
    ("auth x\n", "authkeys:1: expected an entry number 0..15, got 'x'"),
    ("auth 1\n16 crc\n", "authkeys:2: expected an entry number 0..15, got '16'"),
    ("auth 1\n1 blowfish k\n", "authkeys:2: entry 1: unknown method 'blowfish': expected one of crc, md5, sha1, sha256"),
    ("auth 1\n1 crc key\n", "authkeys:2: entry 1: crc takes no key, got 'key'"),
    ("auth 1\n1 sha1\n", "authkeys:2: entry 1: sha1 needs a key: expected '1 sha1 KEY'"),
    ("auth 1\n1\n", "authkeys:2: entry 1: missing method: expected one of crc, md5, sha1, sha256"),
    ("auth 1\n1 crc\n1 md5 k\n", "authkeys:3: entry 1: defined twice"),
    ("auth 1\nhello world\n", "authkeys:2: expected 'auth N' or 'N METHOD [KEY]', got 'hello world'"),
    ("sha1 k\n", "authkeys:1: method line without an entry number: expected 'N sha1 KEY', got 'sha1 k'"),
    ("auth 1\n1 crc\nsha1 k\n", "authkeys:3: method line without an entry number: entry 1 is already defined, "
                                "expected 'N sha1 KEY'"),
])
def test_errors_name_file_line_and_expectation(text, message):
    with pytest.raises(ConfigError) as e:
        parse_authkeys(text)
    assert str(e.value) == message


def test_load_refuses_group_or_world_readable(tmp_path):
    path = tmp_path / "authkeys"
    path.write_text("auth 1\n1 crc\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(path, mode)
        with pytest.raises(ConfigError) as e:
            load_authkeys(tmp_path)
        assert str(e.value) == (f"{path}: bad permissions {mode:04o}: must not be readable by group or others, "
                                f"as heartbeat requires (chmod 600 {path})")
    assert load_authkeys(tmp_path, check_mode=False).active.name == "crc"
    os.chmod(path, 0o600)
    assert load_authkeys(tmp_path).active.name == "crc"
    os.chmod(path, 0o400)
    assert load_authkeys(str(tmp_path)).active.index == 1


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"authkeys: cannot read: No such file or directory$"):
        load_authkeys(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("auth 0123456789crcmd5sha1256 #\n\tkKey-!")), max_size=120))
def test_fuzz_parser_only_raises_config_error(text):
    try:
        keys = parse_authkeys(text)
    except ConfigError as e:
        assert str(e).startswith("authkeys")
    else:
        assert isinstance(keys, AuthKeys) and keys.active.index in keys.methods


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=80))
def test_fuzz_verify_never_raises(data, value):
    keys = parse_authkeys(DOC_EXAMPLE)
    assert keys.verify(data, value) in (True, False)
    assert keys.verify(data, keys.sign(data))
