"""Audit lines cannot be forged (issue 21, server item 4): an encoded newline in the URL path,
or a newline, carriage return, Unicode line separator, escape sequence or space in a slide name
in the body, is written escaped, so each request is exactly one line of five fields."""

from __future__ import annotations

import logging
import re
import time

import httpx

from tests.support.server import Running

FORGED = "token=mallory call=zero-shot slide=x status=200 duration_ms=1.0"
LINE = re.compile(r"token=(\S+) call=(\S+(?: \S+)?) slide=(\S+) status=(\d+) duration_ms=[\d.]+")


def _audit(caplog) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if rec.name == "histoclip.audit"]


def test_no_field_can_start_or_add_a_line(module_server: Running, caplog) -> None:
    caplog.set_level(logging.INFO, logger="histoclip.audit")
    bad_names = [f"a\n{FORGED}", f"b\r\n{FORGED}", f"c\u2028{FORGED}", f"d\x1b[2K\r{FORGED}", f"e\x00 {FORGED}", "f\\x0a"]
    with httpx.Client(base_url=module_server.url, headers=module_server.headers(), timeout=30) as http:
        r = http.get(f"/v1/slides/zz%0A{FORGED.replace(' ', '%20')}")
        assert r.status_code == 404
        for name in bad_names:
            r = http.post("/v1/calls/zero-shot", json={"slide": {"path": name}, "model": "test-tiny", "labels": ["a", "b"]})
            assert r.status_code == 404, r.text
    deadline = time.monotonic() + 5
    while len(_audit(caplog)) < 1 + len(bad_names) and time.monotonic() < deadline:
        time.sleep(0.02)  # a line is written once its response has gone out
    lines = _audit(caplog)
    assert len(lines) == 1 + len(bad_names), lines  # one line per request, none forged
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x1b" not in line and "\x00" not in line
        match = LINE.fullmatch(line)
        assert match and match.group(1) == "alice", line  # five fields; the first is the real token
    assert lines[0].startswith("token=alice call=GET /v1/slides/zz\\x0atoken=mallory\\x20call=zero-shot"), lines[0]
    slides = [LINE.fullmatch(line).group(3) for line in lines[1:]]
    assert slides[0] == "a\\x0atoken=mallory\\x20call=zero-shot\\x20slide=x\\x20status=200\\x20duration_ms=1.0"
    assert slides[2].startswith("c\\u2028token=mallory") and slides[3].startswith("d\\x1b[2K\\x0dtoken")
    assert slides[5] == "f\\\\x0a"  # a literal backslash is doubled: no escape can be faked either



def test_metrics_labels_carry_no_control_characters(module_server: Running) -> None:
    with httpx.Client(base_url=module_server.url, headers=module_server.headers(), timeout=30) as http:
        assert http.get("/v1/slides/q%0Dr%E2%80%A8s%1B").status_code == 404
        text = http.get("/v1/metrics").text
    assert "\r" not in text and "\u2028" not in text and "\x1b" not in text
    assert 'call="GET /v1/slides/q\\\\x0dr\\\\u2028s\\\\x1b",status="404"' in text, text
