"""Pseudonyms and DICOM UIDs derived with a keyed hash, so that outputs never show a source path or UID and
nobody without the key can link them back.

Every name is HMAC-SHA256 under a secret key of (kind, source value): the same key and input give the same
pseudonym on every run, so re-runs and resumed runs agree; without the key, a pseudonym cannot be recomputed
from a metadata table of the export (an unkeyed hash of a path could). The key is a setting: a file holding
at least 32 hexadecimal digits. When none is given, a new key is generated once into the output folder
(``pseudonym.key``, readable by its owner only); give the same key file to several runs to get the same
pseudonyms across their output folders. Treat the key like the source data: whoever holds it and the
export can link pseudonyms back.

UIDs are ``<uid_root>.<number>``. The default root ``2.25`` is the ISO/ITU-T arc for UUID-derived UIDs
(PS3.5 B.2): the number is a version-4-formatted UUID made from the keyed hash, so no registered root is
needed. An organisation's own root can be set instead; the number then fills the UID up to 64 characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from pathlib import Path

from medcf.runtime.files import atomic_path

KEY_FILE = "pseudonym.key"
UUID_ROOT = "2.25"
MIN_KEY_HEX = 32
_UID_ROOT = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")


class Pseudonyms:
    """Keyed pseudonyms (see the module docstring).

    Args:
        key: the secret key (at least 16 bytes).
        uid_root: the root of generated UIDs (default ``2.25``, UUID-derived).
    """

    def __init__(self, key: bytes, uid_root: str | None = None) -> None:
        if len(key) < MIN_KEY_HEX // 2:
            raise ValueError(f"pseudonym key: {len(key)} bytes is too short; at least {MIN_KEY_HEX // 2} needed")
        root = UUID_ROOT if uid_root in (None, "") else str(uid_root).strip().rstrip(".")
        if not _UID_ROOT.fullmatch(root) or len(root) > 40:
            raise ValueError(
                f"uid_root: {uid_root!r} is not a DICOM UID root (digits and dots, no leading zeros, at most 40 chars)"
            )
        self._key, self.uid_root = key, root

    @classmethod
    def for_output(cls, output_dir: str | Path, key_file: str | Path | None = None, uid_root: str | None = None):
        """The pseudonyms of a job: the key from ``key_file``, else ``output_dir/pseudonym.key`` (made when missing).

        Args:
            output_dir: the job's output folder.
            key_file: a file holding one hexadecimal key of at least 32 digits (an even number); None: the
                output folder's ``pseudonym.key``, made with a random 64-digit key, readable by its owner only,
                when missing.
            uid_root: the root of generated UIDs (default ``2.25``, UUID-derived).

        Returns:
            The pseudonyms under that key.

        Raises:
            ValueError: the key file cannot be read, does not hold one such key, or ``uid_root`` is not a DICOM
                UID root.
        """
        path = Path(key_file) if key_file else Path(output_dir) / KEY_FILE
        if key_file is None and not path.exists():
            with atomic_path(path) as temporary:
                temporary.touch(mode=0o600)
                os.chmod(temporary, 0o600)
                temporary.write_text(secrets.token_hex(32) + "\n", encoding="ascii")
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"pseudonym_key {path}: cannot read the key file ({error})") from None
        if not re.fullmatch(r"[0-9a-fA-F]+", text) or len(text) < MIN_KEY_HEX or len(text) % 2:
            raise ValueError(
                f"pseudonym_key {path}: the file must hold one hexadecimal key of at least {MIN_KEY_HEX} digits "
                "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return cls(bytes.fromhex(text), uid_root)

    def _digest(self, kind: str, *parts: str) -> bytes:
        message = "\x1f".join((kind, *(str(p) for p in parts))).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key (tells two keys apart; reveals nothing about either)."""
        return self._digest("key-id").hex()[:16]

    def image(self, source: str) -> str:
        """The pseudonym of an input file, from its path relative to the data set folder: ``img-<16 hex>``.

        Args:
            source: the file's path relative to the data set folder.

        Returns:
            The pseudonym.
        """
        return "img-" + self._digest("image", source).hex()[:16]

    def patient(self, patient_id: str) -> str:
        """The pseudonymous Patient ID of a source Patient ID: ``CF-<12 HEX>`` (one per patient).

        Args:
            patient_id: the source's Patient ID (0010,0020), or another value standing for the patient.

        Returns:
            The pseudonymous Patient ID.
        """
        return "CF-" + self._digest("patient", patient_id).hex()[:12].upper()

    def short(self, kind: str, value: str, length: int = 8) -> str:
        """A short keyed code, e.g. for a Study ID (SH, at most 16 characters).

        Args:
            kind: what the code is for (e.g. ``"study-id"``); other kinds give other codes for one value.
            value: the source value.
            length: hexadecimal digits (default 8).

        Returns:
            The code, upper-case hexadecimal.
        """
        return self._digest(kind, value).hex()[:length].upper()

    def uid(self, kind: str, *parts: str) -> str:
        """A DICOM UID for ``kind`` (study, series, instance, ...) of the given source values.

        Args:
            kind: what the UID identifies (e.g. ``"study"``, ``"series"``, ``"instance"``).
            *parts: the source values it stands for.

        Returns:
            ``2.25.<UUID as an integer>`` under the default root, else ``<uid_root>.<number>`` of at most 64
            characters.
        """
        digest = self._digest(f"uid:{kind}", *parts)
        if self.uid_root == UUID_ROOT:
            return f"{UUID_ROOT}.{uuid.UUID(bytes=digest[:16], version=4).int}"
        room = 64 - len(self.uid_root) - 1
        number = int.from_bytes(digest, "big") % (10**room)
        return f"{self.uid_root}.{number}"
