"""Reader for CTranslate2's `model.bin`, without the ctranslate2 package.

Layout (little-endian; what CTranslate2's `ModelSpec.save` writes, binary versions 4+):

    uint32 binary_version
    string spec_name                      e.g. "WhisperSpec"
    uint32 spec_revision
    uint32 num_variables
    num_variables x:
        string name                       e.g. "encoder/layer_0/self_attention/linear_0/weight"
        uint8  rank
        uint32 dims[rank]
        uint8  dtype_id                   see `DTYPE_IDS`
        uint32 nbytes
        bytes  data[nbytes]
    uint32 num_aliases
    num_aliases x: string alias, string target

where `string` is a uint16 byte length *including* the trailing NUL, then the bytes and the NUL.
Versions before 4 stored an item size instead of a dtype id; they predate Whisper support and are
refused rather than guessed at.

Every read is bounds-checked, so a truncated or corrupt file raises `CT2FormatError` naming the
variable being read and the offset, instead of a numpy error or a giant allocation.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CTranslate2's `DataType` enum order (include/ctranslate2/types.h). bfloat16 has no numpy dtype:
# it is read as raw uint16 bits and widened to float32 (a bfloat16 is the top half of a float32).
DTYPE_IDS: dict[int, str] = {
    0: "float32",
    1: "int8",
    2: "int16",
    3: "int32",
    4: "float16",
    5: "bfloat16",
}
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}

MIN_BINARY_VERSION = 4
# Newest layout this reader was checked against (the packaged Whisper base is version 6). A newer
# version may add fields; refusing is safer than misreading weights silently.
MAX_BINARY_VERSION = 6
# Sanity caps on header fields: far above any real model, low enough that a corrupt count
# cannot drive a huge loop or allocation before the bounds checks catch it.
MAX_RANK = 8
MAX_VARIABLES = 1_000_000


class CT2FormatError(ValueError):
    """The file is not a readable CTranslate2 model.bin (truncated, corrupt, unsupported)."""


@dataclass
class CT2Model:
    """A parsed model.bin.

    `variables` maps every name, aliases included, to its array (aliases share the target's array).
    `aliases` records alias -> target as stored in the file.
    """

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf: memoryview | bytes | mmap.mmap, context: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.context = context

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CT2FormatError(
                f"{self.context}: truncated or corrupt at byte {self.pos} reading {what} "
                f"(need {n} bytes, {self.size - self.pos} left)"
            )

    def unpack(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self._need(n, what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return values

    def u8(self, what: str) -> int:
        return self.unpack("<B", what)[0]

    def u16(self, what: str) -> int:
        return self.unpack("<H", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def string(self, what: str) -> str:
        length = self.u16(f"{what} length")
        if length == 0:
            raise CT2FormatError(f"{self.context}: zero-length string for {what} at byte {self.pos}")
        self._need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        if raw[-1] != 0:
            raise CT2FormatError(f"{self.context}: {what} at byte {self.pos - length} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CT2FormatError(f"{self.context}: {what} is not valid UTF-8") from e

    def skip(self, n: int, what: str) -> int:
        """Bounds-check `n` bytes, step over them and return their start offset."""
        self._need(n, what)
        start = self.pos
        self.pos += n
        return start


def _to_array(buf, offset: int, dtype_name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = _NUMPY_DTYPES[dtype_name]
    count = int(np.prod(shape, dtype=np.int64))
    # Copy out at once: the arrays must outlive the mapped file, and no view of the mapping may
    # linger (an exported buffer would make closing the mmap fail).
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).copy()
    if dtype_name == "bfloat16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.reshape(shape)


def parse_ct2(buf: bytes | memoryview | mmap.mmap, *, source: str = "model.bin") -> CT2Model:
    """Parse a whole model.bin held in `buf`. `source` names it in error messages."""
    cur = _Cursor(buf, source)
    version = cur.u32("binary version")
    if not MIN_BINARY_VERSION <= version <= MAX_BINARY_VERSION:
        raise CT2FormatError(
            f"{source}: unsupported binary version {version} "
            f"(this reader handles {MIN_BINARY_VERSION}..{MAX_BINARY_VERSION})"
        )
    spec_name = cur.string("spec name")
    revision = cur.u32("spec revision")
    num_variables = cur.u32("variable count")
    if num_variables > MAX_VARIABLES:
        raise CT2FormatError(f"{source}: implausible variable count {num_variables}")

    variables: dict[str, np.ndarray] = {}
    for index in range(num_variables):
        name = cur.string(f"name of variable #{index}")
        rank = cur.u8(f"rank of {name!r}")
        if rank > MAX_RANK:
            raise CT2FormatError(f"{source}: variable {name!r} has implausible rank {rank}")
        shape = cur.unpack(f"<{rank}I", f"shape of {name!r}") if rank else ()
        type_id = cur.u8(f"dtype of {name!r}")
        if type_id not in DTYPE_IDS:
            raise CT2FormatError(f"{source}: variable {name!r} has unknown dtype id {type_id}")
        dtype_name = DTYPE_IDS[type_id]
        nbytes = cur.u32(f"byte count of {name!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * _NUMPY_DTYPES[dtype_name].itemsize
        if nbytes != expected:
            raise CT2FormatError(
                f"{source}: variable {name!r} {dtype_name}{list(shape)} should hold {expected} bytes, "
                f"header says {nbytes}"
            )
        if name in variables:
            raise CT2FormatError(f"{source}: duplicate variable {name!r}")
        offset = cur.skip(nbytes, f"data of {name!r}")
        variables[name] = _to_array(buf, offset, dtype_name, shape)

    aliases: dict[str, str] = {}
    num_aliases = cur.u32("alias count")
    if num_aliases > MAX_VARIABLES:
        raise CT2FormatError(f"{source}: implausible alias count {num_aliases}")
    for index in range(num_aliases):
        alias = cur.string(f"alias #{index}")
        aliases[alias] = cur.string(f"target of alias {alias!r}")
    if cur.pos != cur.size:
        raise CT2FormatError(f"{source}: {cur.size - cur.pos} unexpected trailing bytes after the aliases")

    for alias, target in aliases.items():
        if target not in variables:
            raise CT2FormatError(f"{source}: alias {alias!r} points at missing variable {target!r}")
        variables[alias] = variables[target]
    return CT2Model(version, spec_name, revision, variables, aliases)


def read_ct2(path: str | Path) -> CT2Model:
    """Read a CTranslate2 model.bin from disk (memory-mapped; arrays are copied out)."""
    path = Path(path)
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            raise CT2FormatError(f"{path}: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return parse_ct2(mm, source=str(path))
