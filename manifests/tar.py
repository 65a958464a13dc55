"""The USTAR stream of a WebDataset shard: byte-identical to what ``tarfile`` writes, faster.

Hand-written because no library writes it well enough here: ``webdataset.TarWriter`` pulls
in torch at import and gives every member a PAX header; ``tarfile`` spends ~25 us per
header. :func:`ustar_header` splices name, size and checksum into a header ``tarfile``
itself built (byte-for-byte equality is tested), and :class:`TarSink` hashes the stream
on a helper thread as it goes by.

Reading is hand-written too (:func:`iter_members`): ``tarfile`` keeps a ``TarInfo`` of every
member it has passed (``TarFile.members``; ~100k objects for a 1 GB shard of small images)
and spends ~20 us per header, where the dataset tools need a forward pass that holds one
member at a time, can skip unwanted data by seeking, and checks each header's checksum;
:class:`ShardImages` reads a stored shard's members forward through it (exports, ``show``,
the report's contact sheets).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, NamedTuple

from manifests.files import open_read

__all__ = [
    "BackgroundSha256",
    "ShardImages",
    "TarFormatError",
    "TarMember",
    "TarSink",
    "iter_members",
    "ustar_header",
]


def _ustar_member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.uname = info.gname = "mifa"
    # mtime stays 0: identical input gives byte-identical tars (and checksums).
    return info


def _ustar_template() -> tuple[bytes, int]:
    """tarfile's own header for an empty name and size 0, and its checksum without the
    name and size fields (the only fields that differ between our members)."""
    header = bytearray(_ustar_member_info("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    header[124:136] = bytes(12)
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    return bytes(header), sum(header)


_USTAR_TEMPLATE, _USTAR_BASE_CHKSUM = _ustar_template()


def ustar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile`` writes for one of our members, byte for byte.

    ``TarInfo.tobuf`` takes ~25 us per header (about half a plain tarfile loop's time on
    small members); this splices name, size and checksum into a template built by tarfile
    itself. Names over 100 bytes (which USTAR splits into prefix + name) go to tarfile.
    """
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or size >= 8**11:
        return _ustar_member_info(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    chksum = _USTAR_BASE_CHKSUM + sum(encoded) + sum(size_field)
    return b"".join(
        (
            encoded,
            _USTAR_TEMPLATE[len(encoded) : 124],
            size_field,
            _USTAR_TEMPLATE[136:148],
            b"%06o\0 " % chksum,
            _USTAR_TEMPLATE[156:],
        )
    )


class TarSink:
    """Streams USTAR members to a file, hashing and counting the bytes on the way.

    Why not ``webdataset.TarWriter``: ``import webdataset`` imports torch (about 8 s and
    hundreds of MB per process on this machine), and TarWriter ignores its ``format``
    argument, so every member gets a 1 kB PAX header for its float mtime. Why not
    ``tarfile.addfile``: it copies each member through 16 kB reads and spends ~25 us on each
    header; here a member is one write of header (:func:`ustar_header`, tarfile's bytes),
    data and padding, the same layout tarfile writes. webdataset and tarfile read the
    result (tested), and the sha256 is computed on a helper thread as the bytes go by.
    """

    def __init__(self, fh: BinaryIO, checksum: bool) -> None:
        self.fh = fh
        self.hash = BackgroundSha256() if checksum else None
        self.size = 0
        self.discarded = False

    def _write(self, data: bytes) -> None:
        if self.discarded:
            return
        self.fh.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.size += len(data)

    def add_block(self, block: bytes) -> None:
        """A member exactly as another tar stores it (header, data, padding): a copy."""
        self._write(block)

    def add(self, name: str, data: bytes) -> None:
        # One write per member: header, bytes and padding joined (a copy of a few kB is
        # cheaper than three trips through the buffered writer).
        padding = tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)
        self._write(b"".join((ustar_header(name, len(data)), data, padding)))

    def close(self) -> None:
        """End-of-archive blocks, padded to a full record (as tarfile does)."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        remainder = self.size % tarfile.RECORDSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))

    def hexdigest(self) -> str | None:
        """sha256 of everything written (waits for the hashing thread); None without checksum."""
        return self.hash.hexdigest() if self.hash is not None else None

    def discard(self) -> None:
        self.discarded = True
        if self.hash is not None:
            self.hash.cancel()


class BackgroundSha256:
    """sha256 of a byte stream, computed on one helper thread in batches of a few MB.

    hashlib releases the GIL on large buffers, so hashing overlaps the writer's own work
    (label JSON, tar headers, writes) instead of adding to it. Batches, not per-member
    hand-offs: one thread switch per ~4 MB costs nothing, one per member measured slower
    than hashing inline. One worker thread runs batches in submission order.
    """

    BATCH_BYTES = 4 << 20

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sha256")
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def update(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if self._pending:
            self._pool.submit(self._consume, self._pending)
            self._pending = []
            self._pending_bytes = 0

    def _consume(self, pieces: list[bytes]) -> None:
        # One update per batch: each update releases the GIL and must win it back, which a
        # busy writer thread delays; thousands of small updates would queue on it.
        self._hash.update(b"".join(pieces))

    def hexdigest(self) -> str:
        self._submit()
        self._pool.shutdown(wait=True)
        return self._hash.hexdigest()

    def cancel(self) -> None:
        self._pending = []
        self._pool.shutdown(wait=False, cancel_futures=True)


_ZERO_BLOCK = tarfile.NUL * tarfile.BLOCKSIZE


class TarFormatError(ValueError):
    """A tar stream is truncated or a header is damaged; the message says where."""


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _header_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip()
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    return sum(header) - sum(header[148:156]) + 8 * 32 == expected


def _read_exact(fh: BinaryIO, size: int, where: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise TarFormatError(f"{where}: the tar ends early (truncated)")
    return data


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header, if any."""
    for record in data.decode("utf-8", "surrogateescape").split("\n"):
        _, _, keyvalue = record.partition(" ")
        if keyvalue.startswith("path="):
            return keyvalue[5:]
    return None


class TarMember(NamedTuple):
    name: str
    size: int
    data: bytes | None  # None when not wanted
    block: bytes | None  # header + data + padding as stored (with ``blocks=True``): copied as is


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if header[257:262] == b"ustar" and header[345]:
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        name = f"{prefix}/{name}"
    return name


def iter_members(
    fh: BinaryIO,
    wanted: Callable[[str], bool] | None = None,
    *,
    seek: bool = True,
    check: bool = True,
    blocks: bool = False,
) -> Iterator[TarMember]:
    """Every regular member of a tar stream, in order.

    ``data`` is read only when ``wanted(name)`` is true (always without ``wanted``); other
    members' data is skipped by seeking (``seek=True``) or read and dropped (``seek=False``,
    for a stream that must see every byte, e.g. one being hashed). ``check`` verifies each
    header's checksum (a copy of already verified shards may skip it); ``blocks`` also gives a
    read member's stored bytes. PAX ``path`` records and GNU long names are honoured. Raises
    :class:`TarFormatError` on a damaged header or a truncated stream.
    """
    pending_name: str | None = None
    while True:
        header = fh.read(tarfile.BLOCKSIZE)
        if header == _ZERO_BLOCK:
            return  # the end-of-archive blocks
        where = f"member header at byte {fh.tell() - len(header)}" if seek else "a member header"
        if not header:
            raise TarFormatError(f"{where}: the tar ends without its end-of-archive blocks (truncated)")
        if len(header) != tarfile.BLOCKSIZE:
            raise TarFormatError(f"{where}: the tar ends early (truncated)")
        if check and not _header_ok(header):
            raise TarFormatError(f"{where}: header checksum mismatch (corrupt)")
        size = _octal(header[124:136])
        kind = header[156:157]
        padded = size + (-size % tarfile.BLOCKSIZE)
        if kind in (b"x", b"L"):  # the next member's name
            data = _read_exact(fh, padded, where)[:size]
            pending_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = _name(header) if pending_name is None else pending_name
        pending_name = None
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global headers: no data to yield
            _skip(fh, padded, seek, where)
            continue
        if wanted is None or wanted(name):
            data = _read_exact(fh, padded, where)
            yield TarMember(name, size, data[:size], header + data if blocks else None)
        else:
            _skip(fh, padded, seek, where)
            yield TarMember(name, size, None, None)


def _skip(fh: BinaryIO, size: int, seek: bool, where: str) -> None:
    if not size:
        return
    if seek:
        fh.seek(size, 1)
        # A seek past the end succeeds and the next read finds nothing; a whole tar always
        # has its end-of-archive blocks after the last member, so nothing here = truncated.
        if fh.read(1) == b"":
            raise TarFormatError(f"{where}: the tar ends early (truncated)")
        fh.seek(-1, 1)
        return
    remaining = size
    while remaining:
        block = fh.read(min(remaining, 1 << 20))
        if not block:
            raise TarFormatError(f"{where}: the tar ends early (truncated)")
        remaining -= len(block)


class ShardImages:
    """The members of one source tar, read forward in member order (others skipped by seeking)."""

    def __init__(self, path: Path, *, blocks: bool = False) -> None:
        self.path = path
        self._fh: BinaryIO = open_read(path)
        self._wanted: tuple[str, ...] = ()
        self._members = iter_members(self._fh, lambda name: name in self._wanted, blocks=blocks)

    def get(self, member: str) -> bytes:
        data = self.get_all((member,))[0].data
        assert data is not None
        return data

    def get_all(self, members: tuple[str, ...]) -> list[TarMember]:
        """``members`` (in any order within the tar, after the previous ones)."""
        self._wanted = members
        found: dict[str, TarMember] = {}
        try:
            for member in self._members:
                if member.data is not None and member.name in members:
                    found[member.name] = member
                    if len(found) == len(members):
                        return [found[m] for m in members]
        except TarFormatError as exc:
            raise OSError(f"cannot read source shard {self.path} ({exc}); run `factory verify` on the source") from exc
        missing = [m for m in members if m not in found]
        raise FileNotFoundError(
            f"{self.path} has no member {missing[0]} after the previous one (the manifest names it); "
            "run `factory verify` on the source dataset"
        )

    def close(self) -> None:
        self._fh.close()
