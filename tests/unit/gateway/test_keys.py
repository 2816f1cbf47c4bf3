"""`owner:key` and bare key entries, and the key ring that re-reads the keys file."""

import os

import pytest

from gateway.keys import BadKeyEntry, KeyRing, hash_key, owner_of, parse_key_entries
from gateway.settings import GatewaySettings


def test_named_and_bare_entries():
    table = parse_key_entries(["alice:k1", " alice:k2 ", "plain-key", "# comment", "", "bob:a:b"])
    assert table[hash_key("k1")] == table[hash_key("k2")] == "alice"
    assert table[hash_key("plain-key")] == owner_of(hash_key("plain-key"))  # today's owner id, unchanged
    assert table[hash_key("a:b")] == "bob"  # only the first colon separates the owner


@pytest.mark.parametrize("entries", [["alice:"], ["alice:k", "bob:k"], ["abcdef0123456789abcdef01:k"],
                                     ["anonymous:k"]])
def test_bad_entries_are_refused(entries):
    with pytest.raises(BadKeyEntry):
        parse_key_entries(entries)


def test_settings_refuse_a_bad_entry_at_start():
    with pytest.raises(ValueError, match="DETBOOTH_API_KEYS"):
        GatewaySettings(api_keys="alice:")


def _write(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # how editors and config tools save: a new file renamed over the old one


def test_key_ring_follows_the_file(tmp_path):
    keys = tmp_path / "keys"
    _write(keys, "alice:old\n")
    ring = KeyRing("ops:inline", keys)
    assert ring.owner_for("old") == "alice" and ring.owner_for("inline") == "ops"
    _write(keys, "alice:old\nalice:new\n")
    assert ring.owner_for("new") == "alice"
    _write(keys, "alice:new\n")
    assert ring.owner_for("old") is None and ring.owner_for("new") == "alice"
    _write(keys, "alice:\n")  # a broken edit: the keys read before stay in force
    assert ring.owner_for("new") == "alice"
    _write(keys, "")  # emptied: callers are locked out, the gateway never becomes open
    assert ring.owner_for("new") is None and ring.configured
