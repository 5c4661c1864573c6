# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat 3.0.6 datagram codec against golden datagrams from the real daemon."""
import base64
import hashlib
import hmac
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import LocalProtocolError, RemoteProtocolError
from hbd.authkeys import parse_authkeys
from hbd.protocol.packets import BadPacket, HbMessage, decode_message, encode_message, nvpair_text

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SHA1 = parse_authkeys("auth 2\n2 sha1 mahnamahna\n")
MD5 = parse_authkeys("auth 3\n3 md5 mahnamahna\n")
CRC = parse_authkeys("auth 1\n1 crc\n")
KEYS = {"sha1": SHA1, "md5": MD5, "crc": CRC}
UUID = b"\x90\x9d\xd2:O\xdeN2\xba0\xcbg\xa0\x8e\x81\xde"
# heartbeat-wire.md section 2: run1, ha1's first packet, 306 bytes
DOC_FIELDS = (("t", "status"), ("st", "init"), ("dt", "1b58"), ("protocol", "1"), ("src", "ha1"),
              ("srcuuid", UUID), ("seq", "1"), ("hg", "6b05fad0"), ("ts", "6b05facf"),
              ("ld", "0.49 0.67 0.35 1/97 16872"), ("ttl", "3"))
DOC_INNER = "2 40dbbdc4719bd13aa7292dcea6d1bd1b6875b5b9"
DOC_TRAILER = b"42:2 9e78a84e0fb2123ae17f1e0c74d6cd675b47cdae,"
REAL = sorted(DATA.glob("hb_real_*.bin"))


def keys_for(path):
    return KEYS[path.name.split("_")[2]]


def test_golden_from_wire_doc_decodes():
    data = (DATA / "hb_status_init_sha1.bin").read_bytes()
    assert len(data) == 306 and data.endswith(DOC_TRAILER)
    msg = decode_message(data, SHA1)
    assert msg.fields == DOC_FIELDS + (("auth", DOC_INNER),)
    assert (msg.type, msg.origin, msg.status, msg.seq) == ("status", "ha1", "init", 1)
    assert (msg.generation, msg.timestamp, msg.deadtime_ms) == (0x6B05FAD0, 0x6B05FACF, 7000)
    assert msg.src_uuid == UUID and msg.dest is None and msg.wire_format == "netstring"
    assert msg.get("ld") == "0.49 0.67 0.35 1/97 16872" and "protocol" in msg and "dest" not in msg


def test_golden_digests_are_textbook_hmac():
    data = (DATA / "hb_status_init_sha1.bin").read_bytes()
    body = data[:data.index(b"%%%\n") + 4]
    assert hmac.new(b"mahnamahna", body, hashlib.sha1).hexdigest() == "9e78a84e0fb2123ae17f1e0c74d6cd675b47cdae"
    text = nvpair_text(DOC_FIELDS)
    assert b"(1)srcuuid=" + base64.b64encode(UUID) + b"\n" in text
    assert text.startswith(b"t=status\nst=init\n")
    assert SHA1.verify(text, DOC_INNER)
    assert SHA1.sign(text) == DOC_INNER


def test_encode_is_byte_identical_to_heartbeat():
    data = (DATA / "hb_status_init_sha1.bin").read_bytes()
    assert encode_message(DOC_FIELDS, SHA1) == data
    assert encode_message(decode_message(data, SHA1).fields, SHA1) == data  # old auth replaced


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_daemon_captures_roundtrip(path):
    data = path.read_bytes()
    keys = keys_for(path)
    msg = decode_message(data, keys)
    assert msg.origin == "ha1" and msg.generation is not None
    assert keys.verify(nvpair_text(msg.fields), msg.get("auth"))   # inner auth is right too
    assert encode_message(msg.fields, keys) == data
    if msg.type.startswith("NS_"):
        assert msg.seq is None and "ld" not in msg
    else:
        assert msg.seq >= 1 and "ld" in msg
    other = MD5 if keys is not MD5 else SHA1
    with pytest.raises(BadPacket) as e:
        decode_message(data, other)
    assert e.value.reason == "bad_auth"


def test_real_crc_trailer_is_not_zero_padded():
    data = (DATA / "hb_real_crc_ackmsg_short_crc.bin").read_bytes()
    assert data.endswith(b"%%%\n9:1 d6a0abc,")
    msg = decode_message(data, CRC)
    assert msg.type == "NS_ackmsg" and msg.get("ackseq") is not None


def test_real_reqnodes_and_ackmsg_fields():
    msg = decode_message((DATA / "hb_real_crc_reqnodes.bin").read_bytes(), CRC)
    assert msg.type == "reqnodes" and msg.dest == "ha2" and isinstance(msg.get("destuuid"), bytes)
    assert [k for k, _ in msg.fields] == ["t", "dest", "destuuid", "src", "srcuuid", "seq", "hg", "ts", "ld",
                                           "ttl", "auth"]


def test_encode_field_order_and_types():
    data = encode_message([("t", "x"), ("bin", b"\x00\xff,"), ("s", "a b,c=d")], CRC)
    assert data.startswith(b"###\n6:(0)t=x,10:(1)bin=\x00\xff,,12:(0)s=a b,c=d,")
    with pytest.raises(BadPacket, match="x message without originator field 'src'$"):
        decode_message(data, CRC)


@pytest.mark.parametrize("fields, message", [
    ([("t", "a\nb")], "heartbeat encode: field 't': value must not contain newline, carriage return or NUL: 'a\\nb'"),
    ([("", "x")], "heartbeat encode: invalid field name: ''"),
    ([("a=b", "x")], "heartbeat encode: invalid field name: 'a=b'"),
    ([("t", 5)], "heartbeat encode: field 't': value must be str or bytes, got int"),
])
def test_encode_misuse_is_local_error(fields, message):
    with pytest.raises(LocalProtocolError) as e:
        encode_message(fields, SHA1)
    assert str(e.value) == message


def classic(lines, keys, auth=None, nul=True):
    body = b"".join(line + b"\n" for line in lines)
    value = auth if auth is not None else keys.sign(body).encode()
    return b">>>\n" + body + b"auth=" + value + b"\n<<<\n" + (b"\0" if nul else b"")


CLASSIC_LINES = [b"t=status", b"st=active", b"dt=1388", b"src=ha2", b"(1)srcuuid=" + base64.b64encode(UUID),
                 b"seq=2b", b"hg=4", b"ts=3e8a1b2c", b"ld=0.00 0.01 0.05 1/60 1234", b"ttl=3"]


@pytest.mark.parametrize("nul", [True, False])
def test_classic_format_accepted_like_the_real_daemon(nul):
    msg = decode_message(classic(CLASSIC_LINES, SHA1, nul=nul), SHA1)
    assert msg.wire_format == "classic"
    assert (msg.type, msg.origin, msg.seq, msg.generation, msg.src_uuid) == ("status", "ha2", 0x2B, 4, UUID)
    assert msg.fields[-1][0] == "auth"


def test_classic_bad_or_missing_auth():
    with pytest.raises(BadPacket) as e:
        decode_message(classic(CLASSIC_LINES, SHA1, auth=b"2 " + b"0" * 40), SHA1)
    assert e.value.reason == "bad_auth"
    with pytest.raises(BadPacket) as e:
        decode_message(b">>>\n" + b"".join(x + b"\n" for x in CLASSIC_LINES) + b"<<<\n", SHA1)
    assert e.value.reason == "unsigned"


GOLDEN = (DATA / "hb_status_init_sha1.bin").read_bytes()


@pytest.mark.parametrize("data, reason, text", [
    (GOLDEN[:GOLDEN.index(b"%%%\n") + 4], "unsigned", "netstring message without authentication trailer"),
    (GOLDEN.replace(b"st=init", b"st=actv"), "bad_auth", "authentication trailer does not match"),
    (GOLDEN.replace(b"42:2 9e78", b"42:3 9e78"), "bad_auth", "authentication trailer does not match"),
    (GOLDEN + b"\0", "malformed", "1 unexpected bytes after the authentication trailer"),
    (GOLDEN[:100], "malformed", "overruns the datagram"),
    (GOLDEN.replace(b"11:(0)t=status", b"12:(0)t=status"), "malformed", "lacks the closing ','"),
    (GOLDEN.replace(b"11:(0)t=", b"x1:(0)t="), "malformed", "bad length"),
    (GOLDEN.replace(b"11:(0)t=", b"11:(7)t="), "malformed", "unsupported field type 7"),
    (GOLDEN.replace(b"11:(0)t=status", b"11:(0)tXstatus"), "malformed", "expected name=value"),
    (b"hello world", "malformed", "not a heartbeat message"),
    (b"", "malformed", "not a heartbeat message"),
    (b"###\n", "malformed", "missing end marker"),
    (b">>>\nt=x\n", "malformed", "missing end line"),
])
def test_malformed_and_forged(data, reason, text):
    with pytest.raises(BadPacket) as e:
        decode_message(data, SHA1)
    assert e.value.reason == reason
    assert text in str(e.value)
    assert str(e.value).startswith("heartbeat packet: ")
    assert isinstance(e.value, RemoteProtocolError)


@pytest.mark.parametrize("fields, text", [
    ([("src", "ha1"), ("hg", "1"), ("seq", "1")], "message without type field 't'"),
    ([("t", "x"), ("src", "ha1"), ("seq", "1")], "no generation field 'hg'"),
    ([("t", "x"), ("src", "ha1"), ("hg", "1")], "no sequence field 'seq'"),
    ([("t", "x"), ("src", "ha1"), ("hg", "1"), ("seq", "zz")], "field 'seq' is not hex"),
    ([("t", "x"), ("src", "ha1"), ("hg", "-1"), ("seq", "1")], "field 'hg' is not hex"),
    ([("t", "x"), ("src", "ha1"), ("hg", "1"), ("seq", b"1")], "field 'seq' is not hex"),
])
def test_control_fields_checked(fields, text):
    with pytest.raises(BadPacket) as e:
        decode_message(encode_message(fields, SHA1), SHA1)
    assert e.value.reason == "malformed" and text in str(e.value)


def test_ns_messages_need_no_seq():
    msg = decode_message(encode_message([("t", "NS_ackmsg"), ("src", "ha1"), ("hg", "1")], SHA1), SHA1)
    assert msg.seq is None and msg.type == "NS_ackmsg"


CHECKED = ("t", "src", "seq", "hg", "ts", "dt", "ackseq", "auth")  # validated control fields
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
values = st.one_of(st.text(max_size=30).filter(lambda s: not any(c in s for c in "\n\r\0")), st.binary(max_size=30))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=8), st.sampled_from(["sha1", "md5", "crc"]))
def test_fuzz_roundtrip(extra, method):
    keys = KEYS[method]
    fields = [("t", "x"), ("src", "ha1"), ("seq", "a"), ("hg", "5")] + [(k, v) for k, v in extra if k not in CHECKED]
    data = encode_message(fields, keys)
    msg = decode_message(data, keys)
    assert msg.fields[:-1] == tuple(fields)
    assert msg.fields[-1] == ("auth", keys.sign(nvpair_text(fields)))
    assert encode_message(msg.fields, keys) == data


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_only_badpacket(data):
    try:
        msg = decode_message(data, CRC)
    except BadPacket as e:
        assert e.reason in ("malformed", "unsigned", "bad_auth")
    else:
        assert isinstance(msg, HbMessage)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_mutated_golden_only_badpacket(data):
    raw = bytearray(GOLDEN)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:i + data.draw(st.integers(1, 20))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        msg = decode_message(bytes(raw), SHA1)
    except BadPacket:
        return
    # anything that still decodes must be authentic: only the signed bytes are accepted
    assert bytes(raw) == GOLDEN or msg.fields[:-1] == DOC_FIELDS


def signed_netstring(fields_raw, keys=SHA1):
    """A netstring datagram from raw field payloads, with a correct trailer (for decoder edge cases)."""
    body = b"###\n" + b"".join(b"%d:%s," % (len(f), f) for f in fields_raw) + b"%%%\n"
    trailer = keys.sign(body).encode()
    return body + b"%d:%s," % (len(trailer), trailer)


@pytest.mark.parametrize("fields_raw, text", [
    ([b"(0)t=a\nb", b"(0)src=ha1"], "field 't': string value contains a newline or NUL"),
    ([b"(0)t=a\0", b"(0)src=ha1"], "field 't': string value contains a newline or NUL"),
    ([b"(2)t=nested"], "field 't': unsupported field type 2"),
    ([b"(0)=x"], "expected name=value"),
    ([b"(0)a b=x"], "invalid field name"),
    ([b"0)t=x"], "expected '(type)name=value'"),
])
def test_signed_but_malformed_netstring(fields_raw, text):
    with pytest.raises(BadPacket) as e:
        decode_message(signed_netstring(fields_raw), SHA1)
    assert e.value.reason == "malformed" and text in str(e.value)


def test_percent_marker_inside_a_value_does_not_confuse_the_parser():
    data = encode_message([("t", "x"), ("src", "ha1"), ("hg", "1"), ("seq", "1"), ("info", "50% %%% done")], SHA1)
    assert decode_message(data, SHA1).get("info") == "50% %%% done"
    tricky = signed_netstring([b"(0)t=x", b"(0)src=ha1", b"(0)hg=1", b"(0)seq=1", b"(1)blob=%%%\n,1:x"])
    assert decode_message(tricky, SHA1).get("blob") == b"%%%\n,1:x"


@pytest.mark.parametrize("data, reason, text", [
    (b">>>\nt=x<<<\n", "malformed", "last field line is not terminated"),
    (b">>>\n(x)t=x\n<<<\n", "malformed", "bad type prefix"),
    (b">>>\nt=a\0b\n<<<\n", "malformed", "value contains NUL"),
    (b">>>\n(1)srcuuid=***\nauth=1 0\n<<<\n", "malformed", "binary value is not base64"),
    (b">>>\n(4)z=x\n<<<\n", "malformed", "unsupported field type 4"),
    (b">>>\n\nt=x\n<<<\n", "unsigned", "classic message without auth field"),
])
def test_classic_edge_cases(data, reason, text):
    with pytest.raises(BadPacket) as e:
        decode_message(data, SHA1)
    assert e.value.reason == reason and text in str(e.value)


def test_size_limits():
    with pytest.raises(BadPacket, match="datagram too long: 262145 bytes"):
        decode_message(b"###\n" + b"x" * (256 * 1024 - 3), SHA1)
    with pytest.raises(LocalProtocolError, match="message too long"):
        encode_message([("t", "x"), ("big", "y" * (256 * 1024))], SHA1)


def test_without_and_accessors():
    msg = decode_message(GOLDEN, SHA1)
    assert [k for k, _ in msg.without("auth", "srcuuid", "ld")] == ["t", "st", "dt", "protocol", "src", "seq", "hg",
                                                                    "ts", "ttl"]
    assert msg.get("nope", "dflt") == "dflt" and msg.get_str("srcuuid") is None
