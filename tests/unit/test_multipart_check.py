"""The gateway's multipart check: files counted from offsets into the body (never copied), limits as problems."""

import httpx
import pytest

from services.contracts.problems import Problem
from gateway.multipart_check import scan_multipart


def body_of(**kw) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/detect", **kw)
    return request.read(), request.headers["content-type"]


def test_files_and_fields_as_httpx_encodes_them():
    body, ctype = body_of(files=[("images", ("a.png", b"x" * 1000, "image/png")), ("images", ("b.jpg", b"yy", ""))],
                          data={"thresh": "0.5", "box_type": "poly"})
    summary = scan_multipart(body, ctype, max_files=4, max_file_bytes=2000)
    assert [(f.filename, f.data) for f in summary.files] == [("a.png", b"x" * 1000), ("b.jpg", b"yy")]
    assert summary.files[0].content_type == "image/png"
    assert summary.fields == {"thresh": "0.5", "box_type": "poly"}


@pytest.mark.parametrize(("kw", "limits", "status", "kind"), [
    ({"files": [("images", ("a.png", b"x" * 10, "image/png"))] * 3}, {"max_files": 2}, 413, "too-many-files"),
    ({"files": [("images", ("a.png", b"x" * 2001, "image/png"))]}, {}, 413, "file-too-large"),
    ({"files": [("photo", ("a.png", b"x", "image/png"))]}, {}, 422, "validation-error"),
])
def test_limits_are_problems(kw, limits, status, kind):
    body, ctype = body_of(**kw)
    with pytest.raises(Problem) as e:
        scan_multipart(body, ctype, **{"max_files": 4, "max_file_bytes": 2000, **limits})
    assert e.value.status == status and kind in e.value.type


def test_malformed_bodies_are_400():
    with pytest.raises(Problem) as e:
        scan_multipart(b"--x\r\n", "multipart/form-data", max_files=4, max_file_bytes=10)
    assert e.value.status == 400  # no boundary
    with pytest.raises(Problem) as e:
        scan_multipart(b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n", "multipart/form-data; boundary=x",
                       max_files=4, max_file_bytes=10)
    assert e.value.status == 400  # a part without a name
