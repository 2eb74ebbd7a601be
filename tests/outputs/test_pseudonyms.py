"""Keyed pseudonyms and UIDs: stable under one key, unrelated under another, valid DICOM UIDs."""

import os
import re
import stat

import pytest

from medcf.outputs.pseudonyms import KEY_FILE, Pseudonyms

UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+")


def test_the_same_key_gives_the_same_names_and_another_key_other_names(tmp_path):
    first = Pseudonyms.for_output(tmp_path / "a")
    again = Pseudonyms.for_output(tmp_path / "a")
    other = Pseudonyms.for_output(tmp_path / "b")
    for make in (
        lambda p: p.image("files/p1/s1/x.dcm"),
        lambda p: p.patient("10000032"),
        lambda p: p.uid("study", "1.2.3"),
    ):
        assert make(first) == make(again) != make(other)
    assert first.key_id == again.key_id != other.key_id


def test_the_key_is_generated_once_readable_by_its_owner_only(tmp_path):
    Pseudonyms.for_output(tmp_path)
    key = tmp_path / KEY_FILE
    text = key.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    Pseudonyms.for_output(tmp_path)
    assert key.read_text() == text


def test_a_key_file_setting_is_used_and_checked(tmp_path):
    given = tmp_path / "site.key"
    given.write_text("0f" * 32)
    a, b = Pseudonyms.for_output(tmp_path / "out1", given), Pseudonyms.for_output(tmp_path / "out2", given)
    assert a.image("x") == b.image("x") and not (tmp_path / "out1" / KEY_FILE).exists()
    given.write_text("not hex")
    with pytest.raises(ValueError, match=r"pseudonym_key .*site\.key: the file must hold one hexadecimal key"):
        Pseudonyms.for_output(tmp_path, given)
    with pytest.raises(ValueError, match="cannot read the key file"):
        Pseudonyms.for_output(tmp_path, tmp_path / "missing.key")


def test_names_look_like_what_they_are():
    p = Pseudonyms(b"k" * 32)
    assert re.fullmatch(r"img-[0-9a-f]{16}", p.image("files/p1/s1/x.dcm"))
    assert re.fullmatch(r"CF-[0-9A-F]{12}", p.patient("10000032"))
    assert p.image("a") != p.image("b") and p.uid("study", "1.2") != p.uid("series", "1.2")


@pytest.mark.parametrize("root", [None, "1.2.826.0.1.3680043.10.999", "2.25"])
def test_uids_are_valid_and_fit_64_characters(root):
    p = Pseudonyms(b"k" * 32, root)
    uids = {p.uid("instance", str(k)) for k in range(200)}
    assert len(uids) == 200
    assert all(UID.fullmatch(uid) and len(uid) <= 64 for uid in uids)
    assert all(uid.startswith(f"{root or '2.25'}.") for uid in uids)


@pytest.mark.parametrize("root", ["1.02.3", "abc", "1..2", "1." * 30])
def test_a_bad_uid_root_is_refused(root):
    with pytest.raises(ValueError, match="uid_root"):
        Pseudonyms(b"k" * 32, root)
