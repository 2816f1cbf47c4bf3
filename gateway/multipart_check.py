"""Checking a buffered multipart body in one pass: its files (within the limits) and its plain fields.

The gateway forwards the body it received, byte for byte, to the detection service; it only needs to know that
the body is within its limits and that each file is an image. python-multipart's parser reports each part's
data as offsets into the buffer: no spooling to temporary files through a thread pool, no re-encoding."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.uploads import Upload, mib
from services.contracts.problems import Problem


@dataclass
class _FilePart:
    filename: str
    content_type: str
    size: int = 0
    pieces: list[bytes] = field(default_factory=list)


@dataclass
class MultipartSummary:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


class _Scanner:
    def __init__(self, file_field: str, max_files: int, max_file_bytes: int, max_fields: int,
                 max_field_bytes: int) -> None:
        self.file_field, self.max_files, self.max_file_bytes = file_field, max_files, max_file_bytes
        self.max_fields, self.max_field_bytes = max_fields, max_field_bytes
        self.summary = MultipartSummary()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._file: _FilePart | None = None
        self._field_name = ""
        self._field_value = bytearray()
        self._files = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self._headers, self._file, self._field_value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise Problem(400, "Malformed multipart body", "a part has no Content-Disposition name",
                          type_="bad-multipart")
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if name != self.file_field:
                raise Problem(422, "Unexpected file field", f"files go in the `{self.file_field}` field, not "
                              f"`{name}`", type_="validation-error")
            if self._files >= self.max_files:
                raise Problem(413, "Too many files", f"at most {self.max_files} files per request",
                              type_="too-many-files")
            self._file = _FilePart(options[b"filename"].decode("utf-8", "replace") or f"image{self._files}",
                                   self._headers.get(b"content-type", b"").decode("latin-1"))
            self._files += 1
        else:
            if len(self.summary.fields) >= self.max_fields:
                raise Problem(400, "Malformed multipart body", f"more than {self.max_fields} form fields",
                              type_="bad-multipart")
            self._field_name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.size += end - start
            if self._file.size > self.max_file_bytes:
                raise Problem(413, "File too large", f"{self._file.filename} is larger than "
                              f"{mib(self.max_file_bytes)}", type_="file-too-large")
            self._file.pieces.append(data[start:end])
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > self.max_field_bytes:
                raise Problem(400, "Malformed multipart body", f"the `{self._field_name}` field is larger than "
                              f"{mib(self.max_field_bytes)}", type_="bad-multipart")

    def on_part_end(self) -> None:
        if self._file is None:
            self.summary.fields[self._field_name] = self._field_value.decode("utf-8", "replace")
        else:
            f = self._file
            data = f.pieces[0] if len(f.pieces) == 1 else b"".join(f.pieces)
            self.summary.files.append(Upload(f.filename, f.content_type, data))


def scan_multipart(body: bytes, content_type: str, *, max_files: int, max_file_bytes: int,
                   file_field: str = "images", max_fields: int = 100,
                   max_field_bytes: int = 64 * 1024) -> MultipartSummary:
    """The files and plain fields of a whole multipart body, within the given limits."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise Problem(400, "Malformed multipart body", "the Content-Type has no boundary", type_="bad-multipart")
    scanner = _Scanner(file_field, max_files, max_file_bytes, max_fields, max_field_bytes)
    try:
        parser = MultipartParser(boundary, scanner.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise Problem(400, "Malformed multipart body", f"invalid multipart data: {e}", type_="bad-multipart") from e
    return scanner.summary
