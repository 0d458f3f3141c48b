"""What ``vgpuctl`` prints: exit codes per error class, error reports, JSON of proto messages, tables.

Every runtime error reaches the user as the domain error the server raised
(:mod:`vgpusim.common.errors`); :func:`exit_code_for` picks the exit status from its class (one
table, :data:`EXIT_CODES`), :func:`report_error` prints it (``Error: <message>`` and
``reason: <REASON>``, or one JSON object with ``--json``).  :func:`message_to_json` turns proto
messages into the JSON ``--json`` prints.

Glossary:
- exit code: 0 success, 2 usage error (argparse); runtime errors exit 1 for the mdevctl verbs
  (as mdevctl 1.2.0, whose callers such as libvirt expect it) and one code per error class for the
  simulator's own verbs (see :data:`EXIT_CODES`; 1 for anything without its own code).
- JSON mapping: proto field names as is, enums by name, 64-bit integers as numbers (not strings as
  in the canonical proto3 mapping), bytes as base64, timestamps as RFC 3339 strings.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from vgpusim.common import errors

__all__ = [
    "EXIT_BUSY",
    "EXIT_CODES",
    "EXIT_EXHAUSTED",
    "EXIT_EXISTS",
    "EXIT_GENERIC",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_SUPPORTED",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "EXIT_WRONG_STATE",
    "dump_json",
    "enum_label",
    "exit_code_for",
    "message_to_json",
    "report_error",
    "table",
]

EXIT_OK = 0
EXIT_GENERIC = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_EXISTS = 4
EXIT_INVALID = 5
EXIT_EXHAUSTED = 6
EXIT_BUSY = 7
EXIT_PERMISSION = 8
EXIT_TIMEOUT = 9
EXIT_WRONG_STATE = 10
EXIT_NOT_SUPPORTED = 11
EXIT_INTERRUPTED = 130

# The one table from error class to exit status; subclasses inherit their base's code (TooBig ->
# InvalidArgument's), anything absent (VgpusimError itself, INTERNAL) is EXIT_GENERIC.
EXIT_CODES: dict[type[errors.VgpusimError], int] = {
    errors.NotFound: EXIT_NOT_FOUND,
    errors.AlreadyExists: EXIT_EXISTS,
    errors.InvalidArgument: EXIT_INVALID,
    errors.Exhausted: EXIT_EXHAUSTED,
    errors.Busy: EXIT_BUSY,
    errors.Unavailable: EXIT_BUSY,
    errors.Aborted: EXIT_BUSY,
    errors.PermissionDenied: EXIT_PERMISSION,
    errors.TimedOut: EXIT_TIMEOUT,
    errors.WrongState: EXIT_WRONG_STATE,
    errors.NotSupported: EXIT_NOT_SUPPORTED,
}


def exit_code_for(error: errors.VgpusimError) -> int:
    """The exit status of ``error``: the code of the nearest class in :data:`EXIT_CODES`."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_GENERIC


def error_from_os(exc: OSError, message: str, reason: str) -> errors.VgpusimError:
    """The domain error for a local file problem (NotFound, PermissionDenied, else generic)."""
    cls: type[errors.VgpusimError] = errors.VgpusimError
    if isinstance(exc, FileNotFoundError):
        cls = errors.NotFound
    elif isinstance(exc, PermissionError):
        cls = errors.PermissionDenied
    return cls(f"{message}: {exc.strerror or exc}", reason=reason, errno=exc.errno)


def report_error(
    error: errors.VgpusimError,
    *,
    as_json: bool = False,
    stream: TextIO | None = None,
    exit_code: int | None = None,
) -> int:
    """Print ``error`` to ``stream`` (stderr) and return its exit status (``exit_code`` if given)."""
    out = sys.stderr if stream is None else stream
    code = exit_code_for(error) if exit_code is None else exit_code
    if as_json:
        body = {
            "error": {
                "message": error.message,
                "reason": error.reason,
                "code": type(error).code.name,
                "class": type(error).__name__,
                "metadata": dict(sorted(error.metadata.items())),
                "exit_code": code,
            }
        }
        out.write(dump_json(body) + "\n")
    else:
        out.write(f"Error: {error.message}\nreason: {error.reason}\n")
    out.flush()
    return code


def dump_json(value: Any) -> str:
    """``value`` as mdevctl prints JSON (serde_json's pretty printer: 2-space indent, no ASCII escaping)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def enum_label(message_enum: Any, value: int, prefix: str) -> str:
    """A short lower-case label for an enum value: ``DEVICE_STATE_OPEN`` -> ``open``."""
    try:
        name = str(message_enum.Name(value))
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _scalar_to_json(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value)
    return value


def message_to_json(message: Message) -> Any:
    """``message`` as a JSON-ready dict, every field present (see the module's JSON mapping)."""
    if isinstance(message, Timestamp):
        return message.ToJsonString() if message.seconds or message.nanos else None
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[field.name] = {str(k): _scalar_to_json(value_field, v) for k, v in sorted(value.items())}
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            result[field.name] = [_scalar_to_json(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            result[field.name] = None
        else:
            result[field.name] = _scalar_to_json(field, value)
    return result


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
