"""The qgpu device ABI, read from the shared C header.

``qemu-device/include/hw/misc/qgpu_hw.h`` is the single source of truth for
the register map, descriptor layout and error codes; the device model and the
Linux driver compile it, and this module parses it, so Python can never drift
from C. Constants are reachable without their ``QGPU_`` prefix::

    from qgpu.abi import ABI
    ABI.REG_DOORBELL                      # 0x34
    ABI.struct("qgpu_desc").pack(opcode=ABI.OP_FILL, length=4096)
"""

from __future__ import annotations

import ast
import functools
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from qgpu import paths
from qgpu.errors import AbiError

_FIELD_TYPES = {"qgpu_le32": ("I", 4), "qgpu_le64": ("Q", 8)}
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_DEFINE = re.compile(r"^#define\s+(QGPU_\w+)\s+(.+?)\s*$", re.MULTILINE)
_STRUCT = re.compile(r"struct\s+(qgpu_\w+)\s*\{(.*?)\};", re.DOTALL)
_MEMBER = re.compile(r"^\s*(\w+)\s+(\w+)\s*;\s*$")
_BINOPS = (ast.LShift, ast.RShift, ast.BitOr, ast.BitAnd, ast.Add, ast.Sub, ast.Mult)


@dataclass(frozen=True)
class Field:
    """One member of a C struct: its name, ``struct`` format code and offset."""

    name: str
    fmt: str
    offset: int
    size: int


@dataclass(frozen=True)
class StructLayout:
    """Byte layout of a little-endian C struct from the ABI header."""

    name: str
    fields: tuple[Field, ...]
    size: int

    @property
    def _format(self) -> str:
        return "<" + "".join(f.fmt for f in self.fields)

    def offset(self, field: str) -> int:
        """Return the byte offset of ``field``."""
        for f in self.fields:
            if f.name == field:
                return f.offset
        raise AbiError(f"struct {self.name} has no field {field!r}")

    def pack(self, **values: int) -> bytes:
        """Encode the struct; fields not given are zero."""
        names = {f.name for f in self.fields}
        unknown = set(values) - names
        if unknown:
            raise AbiError(f"struct {self.name} has no field(s) {sorted(unknown)}")
        return struct.pack(self._format, *(values.get(f.name, 0) for f in self.fields))

    def unpack(self, data: bytes) -> dict[str, int]:
        """Decode ``data`` (exactly ``size`` bytes) into a field -> value dict."""
        if len(data) != self.size:
            raise AbiError(f"struct {self.name} is {self.size} bytes, got {len(data)}")
        return dict(zip((f.name for f in self.fields), struct.unpack(self._format, data),
                        strict=True))


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _evaluate(expr: str, known: dict[str, int], where: str) -> int:
    source = _INT_SUFFIX.sub(r"\1", expr)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise AbiError(f"{where}: cannot parse {expr!r}") from exc

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in known:
                raise AbiError(f"{where}: {node.id} is used before it is defined")
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert | ast.USub):
            operand = value(node.operand)
            return ~operand if isinstance(node.op, ast.Invert) else -operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
            left, right = value(node.left), value(node.right)
            ops = {ast.LShift: left << right, ast.RShift: left >> right,
                   ast.BitOr: left | right, ast.BitAnd: left & right,
                   ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
            return ops[type(node.op)]
        raise AbiError(f"{where}: {expr!r} is not an integer expression this parser accepts")

    return value(tree.body)


class Abi:
    """Constants and struct layouts of the qgpu ABI header."""

    def __init__(self, header: Path) -> None:
        """Parse ``header``; raise :class:`AbiError` if it is missing or malformed."""
        try:
            raw = header.read_text()
        except OSError as exc:
            raise AbiError(f"cannot read the ABI header {header}: {exc}") from exc
        text = _strip_comments(raw)
        self.header = header
        self.constants: dict[str, int] = {}
        for match in _DEFINE.finditer(text):
            name, expr = match.groups()
            if name == "QGPU_HW_H":
                continue
            self.constants[name] = _evaluate(expr, self.constants, f"{header.name}: {name}")
        self.structs: dict[str, StructLayout] = {}
        for match in _STRUCT.finditer(text):
            self.structs[match.group(1)] = self._layout(match.group(1), match.group(2))

    def _layout(self, name: str, body: str) -> StructLayout:
        fields: list[Field] = []
        offset = 0
        for line in filter(str.strip, body.splitlines()):
            member = _MEMBER.match(line)
            if not member or member.group(1) not in _FIELD_TYPES:
                raise AbiError(f"{self.header.name}: struct {name}: cannot parse {line.strip()!r}")
            fmt, size = _FIELD_TYPES[member.group(1)]
            if offset % size:
                raise AbiError(f"struct {name}.{member.group(2)} would need padding")
            fields.append(Field(member.group(2), fmt, offset, size))
            offset += size
        size_name = "QGPU_" + name.removeprefix("qgpu_").upper() + "_SIZE"
        if size_name in self.constants and self.constants[size_name] != offset:
            raise AbiError(f"struct {name} is {offset} bytes but {size_name} says "
                           f"{self.constants[size_name]}")
        return StructLayout(name, tuple(fields), offset)

    def __getattr__(self, name: str) -> int:
        """Return constant ``QGPU_<name>``, e.g. ``ABI.REG_ID``."""
        try:
            return self.constants["QGPU_" + name]
        except KeyError:
            raise AttributeError(f"the qgpu ABI has no QGPU_{name}") from None

    def struct(self, name: str) -> StructLayout:
        """Return the layout of ``struct <name>``."""
        try:
            return self.structs[name]
        except KeyError:
            raise AbiError(f"the qgpu ABI has no struct {name}") from None

    def names(self, prefix: str) -> dict[int, str]:
        """Map the values of constants ``QGPU_<prefix>*`` back to their names."""
        full = "QGPU_" + prefix
        out: dict[int, str] = {}
        for name, value in self.constants.items():
            # The first name wins, so QGPU_ERR_MAX does not hide the last code.
            if name.startswith(full) and value not in out:
                out[value] = name.removeprefix(full)
        return out


@functools.cache
def load(header: Path | None = None) -> Abi:
    """Return the (cached) ABI parsed from ``header`` or the checkout's header."""
    return Abi(header or paths.abi_header())


class _LazyAbi:
    """Module-level ``ABI`` that parses the header on first use."""

    def __getattr__(self, name: str) -> int:
        value: int = getattr(load(), name)
        return value

    def struct(self, name: str) -> StructLayout:
        """Return the layout of ``struct <name>``."""
        return load().struct(name)

    def names(self, prefix: str) -> dict[int, str]:
        """Map values of ``QGPU_<prefix>*`` constants back to their names."""
        return load().names(prefix)


ABI = _LazyAbi()
