#!/usr/bin/env python3
"""Differential HTTP/1 suite: the same raw bytes through Switchyard, HAProxy and nginx.

Starts a recording upstream (a strict HTTP/1.1 framer on loopback that keeps every byte it
receives per connection and answers each request it can frame with `200`, keep-alive),
Switchyard (target/debug/switchyard, static servers), and HAProxy and nginx when installed,
all proxying to it. Each case of cases.py goes to each proxy on a new connection; the runner
records the proxy's responses and what the upstream framed, then sends a clean request on a
new connection and checks that the upstream sees exactly that request (the connection pool is
not poisoned). The verdict is on Switchyard; the peers are the reference.

Switchyard fails a case when (see README.md, "What fails a case"):
  count    the upstream framed another number of requests than Switchyard answered with
           upstream responses (one request became two, or an answer was lost),
  framing  the upstream could not frame bytes Switchyard forwarded,
  left     a half-forwarded request was still sitting on an open upstream connection,
  clean    the clean request after the case was not seen exactly, or got another's response,
  refused  Switchyard forwarded a request (by target) that both peers refused,
  body     Switchyard forwarded a body other than the one both peers agree on,
  field    Switchyard forwarded a field problem (two Hosts, a forbidden trailer...) that
           neither peer forwarded,
  timeout  (timeout family) no 408 within header_timeout + slack,
unless the case is in allowlist.toml. Python 3.11 standard library only.

Usage: python3 tests/differential/run.py [--bin PATH] [--only REGEX] [--no-peers]
       [--results PATH] [--lanes N] [--list]
"""

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ next to cases.py
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import cases as case_defs  # noqa: E402

HEADER_TIMEOUT = 1.0  # Switchyard header_timeout, HAProxy timeout http-request, nginx
RESPONSE_TIMEOUT = 2.0  # upstream response timeouts
CASE_DEADLINE = 1.4  # longest wait for a case's answers (plus its pauses)
TIMEOUT_SLACK = 1.5  # a 408 must arrive within HEADER_TIMEOUT + this
QUIET = 0.15  # no new bytes for this long, every upstream request answered: done
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------------------
# The strict framer (the upstream's parser): RFC 9112 without the leniencies. It answers
# ("need", info) for more bytes, ("err", reason) for bytes it cannot frame, or
# ("req", request, consumed).

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:"
                        + _TOKEN + rb"|" + _QUOTED + rb"))?)*)")
VERSION = re.compile(rb"HTTP/1\.[01]")
CODINGS = {b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"}
TRAILER_FORBIDDEN = {b"content-length", b"transfer-encoding", b"host", b"trailer"}
HOST_VALUE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{1,5})?")
MAX_HEAD = 65536
# Names a back end may read as Content-Length or Transfer-Encoding (CGI-style name mapping).
SUSPICIOUS_NAME = re.compile(rb"(?:content|transfer)[-_.]+(?:length|encoding)")


def bare_cr_lf(region, partial):
    """A CR or LF that is not part of a CRLF (a CR at the very end of a partial read may be)."""
    n = len(region)
    i = region.find(b"\n")
    while i >= 0:
        if i == 0 or region[i - 1] != 0x0D:
            return "bare LF"
        i = region.find(b"\n", i + 1)
    i = region.find(b"\r")
    while i >= 0:
        if i + 1 < n:
            if region[i + 1] != 0x0A:
                return "bare CR"
        elif not partial:
            return "bare CR"
        i = region.find(b"\r", i + 1)
    return None


def parse_fields(lines):
    fields, problems = [], []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            return None, "obs-fold (line starts with whitespace)"
        c = line.find(b":")
        if c < 0:
            return None, "field line without ':' %r" % line[:30]
        if c == 0:
            return None, "empty field name"
        name = line[:c]
        if any(ch not in TCHAR for ch in name):
            return None, "field name %r is not a token" % name[:30]
        value = line[c + 1:].strip(b" \t")
        if 0 in value:
            return None, "NUL in the value of %s" % name.decode("latin-1")
        if any((ch < 0x20 and ch != 9) or ch == 0x7F for ch in value):
            problems.append("CTL in %s" % name.decode("latin-1").lower())
        low = name.lower()
        if SUSPICIOUS_NAME.fullmatch(low) and low not in (b"content-length",
                                                           b"transfer-encoding"):
            problems.append("field %s" % low.decode("latin-1"))
        fields.append((low, value))
    return fields, problems


def frame(buf):
    i = 0
    while buf.startswith(b"\r\n", i):
        i += 2
    end = buf.find(b"\r\n\r\n", i)
    region = buf[i:] if end < 0 else buf[i:end + 4]
    bad = bare_cr_lf(region, end < 0)
    if bad:
        return ("err", bad + " in the head")
    if end < 0:
        if len(buf) - i > MAX_HEAD:
            return ("err", "head over 64 KiB")
        return ("need", None)
    lines = buf[i:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return ("err", "request line is not 'method SP target SP version': %r" % lines[0][:60])
    method, target, version = parts
    if not method or any(ch not in TCHAR for ch in method):
        return ("err", "method %r is not a token" % method[:30])
    if not target or any(ch <= 0x20 or ch >= 0x7F for ch in target):
        return ("err", "request target %r has a byte outside 0x21-0x7e" % target[:60])
    if not VERSION.fullmatch(version):
        return ("err", "version %r" % version[:20])
    fields, problems = parse_fields(lines[1:])
    if fields is None:
        return ("err", problems)
    tes = [v for n, v in fields if n == b"transfer-encoding"]
    cls = [v for n, v in fields if n == b"content-length"]
    hosts = [v for n, v in fields if n == b"host"]
    if version == b"HTTP/1.1" and not hosts:
        problems.append("no Host")
    if len(hosts) > 1:
        problems.append("two Hosts")
    if hosts and not HOST_VALUE.fullmatch(hosts[0]):
        problems.append("Host %r" % hosts[0][:30])
    body_at = end + 4
    expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in fields)
    if tes:
        if version == b"HTTP/1.0":
            return ("err", "Transfer-Encoding on HTTP/1.0")
        if cls:
            return ("err", "both Content-Length and Transfer-Encoding")
        codings = [c.strip(b" \t").lower() for c in b",".join(tes).split(b",")]
        if any(not c for c in codings):
            return ("err", "empty element in Transfer-Encoding %r" % b",".join(tes)[:40])
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            return ("err", "Transfer-Encoding %r does not end in one chunked" % b",".join(tes)[:40])
        if any(c not in CODINGS for c in codings[:-1]):
            return ("err", "unknown transfer coding in %r" % b",".join(tes)[:40])
        r = parse_chunked(buf, body_at)
        if r[0] != "ok":
            return r if r[0] == "err" else ("need", expect)
        _, body, trailers, consumed = r
        for n, _v in trailers:
            if n in TRAILER_FORBIDDEN:
                problems.append("%s in trailers" % n.decode())
        framing = "chunked"
    else:
        if len(cls) > 1:
            return ("err", "%d Content-Length fields" % len(cls))
        n = 0
        if cls:
            if not re.fullmatch(rb"[0-9]+", cls[0]):
                return ("err", "Content-Length %r is not digits" % cls[0][:30])
            n = int(cls[0])
            if n >= 1 << 63:
                return ("err", "Content-Length >= 2^63")
        if len(buf) < body_at + n:
            return ("need", expect)
        body, trailers, consumed = buf[body_at:body_at + n], [], body_at + n
        framing = "cl" if cls else "none"
    headers = dict(fields)
    keep = version == b"HTTP/1.1"
    conn = headers.get(b"connection", b"").lower()
    if b"close" in conn:
        keep = False
    elif b"keep-alive" in conn:
        keep = True
    return ("req", {
        "method": method.decode("latin-1"), "target": target.decode("latin-1"),
        "version": version.decode(), "fields": fields, "body": body, "framing": framing,
        "lead": buf[:i], "problems": problems, "keep": keep, "trailers": trailers,
    }, consumed)


def parse_chunked(buf, p):
    chunks = []
    while True:
        e = buf.find(b"\r\n", p)
        seg = buf[p:] if e < 0 else buf[p:e]
        bad = bare_cr_lf(seg, e < 0)
        if bad:
            return ("err", bad + " in a chunk-size line")
        if e < 0:
            return ("err", "chunk-size line over 4 KiB") if len(seg) > 4096 else ("need",)
        m = CHUNK_LINE.fullmatch(seg)
        if not m:
            return ("err", "chunk-size line %r" % seg[:40])
        if len(m.group(1).lstrip(b"0")) > 15:
            return ("err", "chunk size >= 2^60")
        size = int(m.group(1), 16)
        p = e + 2
        if size == 0:
            break
        tail = buf[p + size:p + size + 2]
        if tail and not b"\r\n".startswith(tail):
            return ("err", "chunk data not followed by CRLF")
        if len(tail) < 2:
            return ("need",)
        chunks.append(buf[p:p + size])
        p += size + 2
    lines = []
    while True:
        e = buf.find(b"\r\n", p)
        seg = buf[p:] if e < 0 else buf[p:e]
        bad = bare_cr_lf(seg, e < 0)
        if bad:
            return ("err", bad + " in the trailer section")
        if e < 0:
            return ("err", "trailer line over 8 KiB") if len(seg) > 8192 else ("need",)
        p = e + 2
        if seg == b"":
            break
        lines.append(seg)
    fields, problems = parse_fields(lines)
    if fields is None:
        return ("err", "trailer: " + problems)
    return ("ok", b"".join(chunks), fields, p)


def selftest():
    """The strict framer on known inputs (run before every suite run)."""
    def kind(data):
        return frame(data)[0]
    ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    r = frame(ok + b"GET")
    assert r[0] == "req" and r[1]["body"] == b"abc" and r[2] == len(ok), r
    assert kind(ok[:-1]) == "need"
    assert kind(b"GET / HTTP/1.1\r\nHost: a\r\n") == "need"
    r = frame(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r[0] == "req" and r[1]["lead"] == b"\r\n"
    ch = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    r = frame(ch + b"3;x=\"y z\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    assert r[0] == "req" and r[1]["body"] == b"abc" and r[1]["trailers"] == [(b"x-t", b"1")]
    assert kind(ch + b"3\r\nabc\r\n") == "need"
    for bad in [b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",  # bare CR
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
                b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",  # space before colon
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n",
                b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ch + b"0x3\r\nabc\r\n0\r\n\r\n", ch + b" 3\r\nabc\r\n0\r\n\r\n",
                ch + b"3\r\nabcd\r\n0\r\n\r\n", ch + b"3;a\nb\r\nabc\r\n0\r\n\r\n",
                ch + b"10000000000000003\r\nabc", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"]:
        assert kind(bad) == "err", bad
    r = frame(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent_Length: 1\r\n\r\n")
    assert r[0] == "req" and r[1]["problems"] == ["field content_length", "two Hosts"], r
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert [x[0] for x in parse_responses(resp, False)[0]] == [100, 200]
    assert parse_responses(resp + b"\n", True)[1] is True
    assert response_ends(resp, False) == [len(b"HTTP/1.1 100 Continue\r\n\r\n"), len(resp)]
    assert norm_target("http://x/a#b") == "/a" and norm_target("*") == "*"


# ---------------------------------------------------------------------------------------------
# The recording upstream: one listener per proxy lane; every event is kept per listener.

class Upstream:
    def __init__(self):
        self.lock = threading.Lock()
        self.seq = 0
        self.conn_ids = 0
        self.events = {}  # listener name -> [event dict]
        self.conns = {}  # listener name -> {conn id: state dict}
        self.socks = []
        self.stopping = False

    def listen(self, name):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(64)
        s.settimeout(0.2)
        self.events[name] = []
        self.conns[name] = {}
        self.socks.append(s)
        threading.Thread(target=self._accept, args=(name, s), daemon=True).start()
        return s.getsockname()[1]

    def _accept(self, name, s):
        while not self.stopping:
            try:
                c, _ = s.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.conn_ids += 1
                cid = self.conn_ids
                self.conns[name][cid] = {"sock": c, "buf": b"", "open": True}
            threading.Thread(target=self._serve, args=(name, cid, c), daemon=True).start()

    def _event(self, name, **ev):
        ev["t"] = time.monotonic()
        with self.lock:
            if ev["kind"] == "req":
                self.seq += 1
                ev["seq"] = self.seq
            self.events[name].append(ev)
            return ev.get("seq")

    def _serve(self, name, cid, c):
        state = self.conns[name][cid]
        buf = b""
        sent_continue = False
        c.settimeout(0.2)
        try:
            while not self.stopping and state["open"]:
                while buf:
                    r = frame(buf)
                    if r[0] == "need":
                        if r[1] and not sent_continue:
                            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                            sent_continue = True
                        break
                    if r[0] == "err":
                        self._event(name, kind="error", conn=cid, reason=r[1], data=buf[:300])
                        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
                        return
                    _, rq, used = r
                    rq["raw_len"] = used
                    seq = self._event(name, kind="req", conn=cid, **rq)
                    buf = buf[used:]
                    state["buf"] = buf
                    sent_continue = False
                    status = b"405 Method Not Allowed" if rq["method"] == "CONNECT" else b"200 OK"
                    c.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nX-Up-Seq: %d\r\n"
                              % seq + (b"" if rq["keep"] else b"Connection: close\r\n") + b"\r\n")
                    if not rq["keep"]:
                        return
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    if buf and state["open"]:
                        self._event(name, kind="partial", conn=cid, data=buf[:300], n=len(buf))
                    return
                buf += data
                state["buf"] = buf
        except OSError:
            if buf and state["open"]:
                self._event(name, kind="partial", conn=cid, data=buf[:300], n=len(buf))
        finally:
            state["open"] = False
            try:
                c.close()
            except OSError:
                pass

    def mark(self, name):
        with self.lock:
            return len(self.events[name])

    def since(self, name, mark):
        with self.lock:
            return list(self.events[name][mark:])

    def requests_since(self, name, mark):
        with self.lock:
            return sum(1 for e in self.events[name][mark:] if e["kind"] == "req")

    def pending(self, name):
        with self.lock:
            return [(cid, st["buf"]) for cid, st in self.conns[name].items()
                    if st["open"] and st["buf"]]

    def reset(self, name):
        """Close every connection of this listener (isolates one case from the next)."""
        with self.lock:
            states = list(self.conns[name].items())
            self.conns[name] = {cid: st for cid, st in states if st["open"]}
        for cid, st in states:
            if st["open"]:
                if st["buf"]:
                    self._event(name, kind="partial", conn=cid, data=st["buf"][:300],
                                n=len(st["buf"]), at_reset=True)
                st["open"] = False
                st["buf"] = b""
                try:
                    st["sock"].shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self.lock:
            self.conns[name] = {}

    def stop(self):
        self.stopping = True
        for s in self.socks:
            s.close()


# ---------------------------------------------------------------------------------------------
# The client: sends a case, reads what comes back.

def response_ends(buf, closed):
    """The offset in buf where each complete response ends."""
    return parse_responses(buf, closed, ends=True)


def parse_responses(buf, closed, ends=False):
    """Complete responses in buf: [(status, headers)], and whether bytes are left over."""
    out, p = [], 0
    if ends:
        res, _ = parse_responses(buf, closed)
        offsets, p = [], 0
        for i in range(1, len(res) + 1):
            # the shortest prefix holding i complete responses
            lo, hi = p, len(buf)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(parse_responses(buf[:mid], False)[0]) >= i:
                    hi = mid
                else:
                    lo = mid + 1
            offsets.append(lo)
            p = lo
        return offsets
    while p < len(buf):
        e = buf.find(b"\r\n\r\n", p)
        if e < 0:
            break
        lines = buf[p:e].split(b"\r\n")
        m = re.match(rb"HTTP/\d\.\d (\d{3})", lines[0])
        if not m:
            return out, True
        status = int(m.group(1))
        headers = {}
        for line in lines[1:]:
            n, _, v = line.partition(b":")
            headers.setdefault(n.strip().lower(), v.strip())
        q = e + 4
        if 100 <= status < 200 and status != 101:
            out.append((status, headers))
            p = q
            continue
        if status == 101:
            out.append((status, headers))
            return out, False
        if status in (204, 304):
            pass
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            while True:
                le = buf.find(b"\r\n", q)
                if le < 0:
                    return out, True
                try:
                    size = int(buf[q:le].split(b";")[0], 16)
                except ValueError:
                    return out, True
                q = le + 2
                if size == 0:
                    te = buf.find(b"\r\n\r\n", q - 2)
                    if te < 0:
                        return out, True
                    q = te + 4
                    break
                q += size + 2
                if q > len(buf):
                    return out, True
        elif b"content-length" in headers:
            try:
                n = int(headers[b"content-length"])
            except ValueError:
                return out, True
            if len(buf) < q + n:
                return out, True
            q += n
        elif closed:
            q = len(buf)
        else:
            return out, True
        out.append((status, headers))
        p = q
    return out, p < len(buf)


def h2_frames(buf):
    out, p = [], 0
    while len(buf) - p >= 9:
        n = int.from_bytes(buf[p:p + 3], "big")
        if len(buf) - p < 9 + n:
            break
        out.append((buf[p + 3], buf[p + 4], int.from_bytes(buf[p + 5:p + 9], "big") & 0x7FFFFFFF,
                    buf[p + 9:p + 9 + n]))
        p += 9 + n
    return out, p


HUFF_DIGITS = {"00000": "0", "00001": "1", "00010": "2", "011001": "3", "011010": "4",
               "011011": "5", "011100": "6", "011101": "7", "011110": "8", "011111": "9"}
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def h2_status(block):
    """The :status of a response header block when it comes first (the usual encoding)."""
    if not block:
        return None
    b0 = block[0]
    if b0 & 0x80:
        return STATIC_STATUS.get(b0 & 0x7F)
    if (b0 & 0xC0 == 0x40 and b0 & 0x3F == 8) or (b0 & 0xF0 in (0x00, 0x10) and b0 & 0x0F == 8):
        huff, v = block[1] & 0x80, block[2:2 + (block[1] & 0x7F)]
        if not huff:
            return int(v) if v.isdigit() else None
        bits, out, cur = "".join(format(x, "08b") for x in v), "", ""
        for bit in bits:
            cur += bit
            if cur in HUFF_DIGITS:
                out += HUFF_DIGITS[cur]
                cur = ""
                if len(out) == 3:
                    return int(out)
    return None


class Run:
    """One case through one proxy: what the client saw and what the upstream framed."""

    def __init__(self):
        self.responses = []  # [(status, headers)]
        self.h2 = []  # h2: ["HEADERS 200", "RST 1", ...]
        self.end = "open"  # "close", "reset", "open" (we stopped), "hang" (nothing, deadline)
        self.leftover = False
        self.elapsed = 0.0
        self.first_status_at = None
        self.events = []
        self.clean = None  # None = fine, else a reason
        self.left_open = []  # (conn, bytes) half-forwarded at the end
        self.raw = b""  # the bytes the proxy sent back
        self.times = []  # when each response was complete (seconds since the start)
        self.stopped_at = None  # when the client stopped reading (time.monotonic())


def exchange(port, case, up_count, deadline):
    run = Run()
    t0 = time.monotonic()
    s = socket.create_connection((HOST, port), timeout=2)
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    plan = [(t0 + i * case.pause, seg) for i, seg in enumerate(case.segments)]
    end_at = t0 + deadline + case.pause * (len(case.segments) - 1)
    buf, last_rx, closed, sent_all = b"", t0, False, False
    h2_used, h2_done = 0, False
    arrivals = []  # (bytes received so far, seconds since the start)
    try:
        while True:
            now = time.monotonic()
            while plan and plan[0][0] <= now:
                _, seg = plan.pop(0)
                try:
                    s.settimeout(2.0)
                    s.sendall(seg)
                except OSError:
                    plan = []
                finally:
                    s.setblocking(False)
                last_rx = time.monotonic()  # the quiet period starts after the last send
                if not plan:
                    sent_all = True
            if closed or now >= end_at:
                break
            if sent_all and case.kind != "timeout":
                if case.kind == "h2":
                    if h2_done and now - last_rx >= QUIET:
                        break
                else:
                    resp, left = parse_responses(buf, False)
                    finals = [r for r in resp if not (100 <= r[0] < 200)]
                    answered = sum(1 for r in resp if b"x-up-seq" in r[1])
                    if finals and not left and now - last_rx >= QUIET \
                            and answered >= up_count():
                        break
            wait = min(end_at, plan[0][0] if plan else end_at) - now
            for _key, _ in sel.select(timeout=max(0.0, min(wait, 0.02))):
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    closed, run.end = True, "reset"
                    break
                except BlockingIOError:
                    continue
                if not data:
                    closed, run.end = True, "close"
                    break
                buf += data
                last_rx = time.monotonic()
                arrivals.append((len(buf), last_rx - t0))
                if run.first_status_at is None and b"\r\n\r\n" in buf and case.kind != "h2":
                    run.first_status_at = last_rx - t0
                if case.kind == "h2":
                    frames, used = h2_frames(buf[h2_used:])
                    for ftype, flags, stream, payload in frames:
                        if ftype == 4 and not flags & 1:  # SETTINGS: acknowledge
                            try:
                                s.settimeout(2.0)
                                s.sendall(cases_h2_frame(4, 1, 0, b""))
                            except OSError:
                                pass
                            finally:
                                s.setblocking(False)
                        elif ftype == 1:
                            st = h2_status(payload)
                            run.h2.append("HEADERS %s" % (st if st is not None else "?"))
                            if run.first_status_at is None:
                                run.first_status_at = last_rx - t0
                            h2_done |= bool(flags & 1) and stream == 1
                        elif ftype == 0 and stream == 1:
                            h2_done |= bool(flags & 1)
                        elif ftype == 3:
                            run.h2.append("RST %d" % int.from_bytes(payload[:4], "big"))
                            h2_done = True
                        elif ftype == 7:
                            run.h2.append("GOAWAY %d" % int.from_bytes(payload[4:8], "big"))
                            h2_done = True
                    h2_used += used
    finally:
        run.stopped_at = time.monotonic()
        sel.close()
        s.close()
    run.elapsed = run.stopped_at - t0
    run.raw = buf
    if case.kind != "h2":
        run.responses, run.leftover = parse_responses(buf, closed)
        ends = response_ends(buf, closed)
        run.times = [next((t for n, t in arrivals if n >= e), None) for e in ends]
    if run.end == "open" and not buf:
        run.end = "hang"
    return run


def cases_h2_frame(ftype, flags, stream, payload):
    return case_defs.h2_frame(ftype, flags, stream, payload)


def clean_request(port, target):
    """A clean GET on a new connection: (status, x-up-seq) or (None, why)."""
    try:
        s = socket.create_connection((HOST, port), timeout=2)
    except OSError as e:
        return None, "connect: %s" % e
    s.settimeout(0.1)
    buf, end = b"", time.monotonic() + 1.5
    try:
        s.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: clean.test\r\n\r\n")
        while time.monotonic() < end:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            resp, _ = parse_responses(buf, False)
            finals = [r for r in resp if r[0] >= 200]
            if finals:
                return finals[0][0], finals[0][1].get(b"x-up-seq")
    finally:
        s.close()
    return None, "no response (%d bytes)" % len(buf)


# ---------------------------------------------------------------------------------------------
# The proxies.

def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Proxy:
    def __init__(self, name, lanes):
        self.name = name
        self.ports = [free_port() for _ in range(lanes)]
        self.proc = None
        self.log = None

    def lane_name(self, lane):
        return "%s.%d" % (self.name, lane)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_switchyard(binary, tmp, up_ports, lanes):
    p = Proxy("switchyard", lanes)
    cfg = ['[global]', 'threads = 1', 'shutdown_grace = "1s"', '',
           '[admin]', 'listen = "%s:%d"' % (HOST, free_port()), '']
    for i in range(lanes):
        cfg += ['[[frontend]]', 'name = "diff%d"' % i, 'bind = "%s:%d"' % (HOST, p.ports[i]),
                'mode = "http"', 'backend = "up%d"' % i,
                'header_timeout = "%gs"' % HEADER_TIMEOUT, 'idle_timeout = "5s"', '',
                '[[backend]]', 'name = "up%d"' % i, 'servers = ["%s:%d"]' % (HOST, up_ports[i]),
                'response_timeout = "%gs"' % RESPONSE_TIMEOUT, '',
                '[backend.check]', 'type = "none"', '',
                '[backend.passive]', 'error_limit = 0', '']
    path = tmp / "switchyard.toml"
    path.write_text("\n".join(cfg))
    p.log = open(tmp / "switchyard.log", "wb")
    p.proc = subprocess.Popen([str(binary), "run", "--config", str(path)], stdout=p.log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="warn"))
    return p


def find_exe(name):
    """The program on PATH, or in /usr/sbin (not on a non-root PATH on Debian)."""
    return shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/sbin/" + name)
                                       if os.access(p, os.X_OK)), None)


def start_haproxy(tmp, up_ports, lanes):
    exe = find_exe("haproxy")
    if not exe:
        return None
    p = Proxy("haproxy", lanes)
    cfg = ["global", "  maxconn 1000", "", "defaults", "  mode http", "  option http-keep-alive",
           "  timeout connect 2s", "  timeout client 5s", "  timeout server %gs" % RESPONSE_TIMEOUT,
           "  timeout http-request %gs" % HEADER_TIMEOUT, "  timeout http-keep-alive 5s", ""]
    for i in range(lanes):
        cfg += ["frontend fe%d" % i, "  bind %s:%d" % (HOST, p.ports[i]),
                "  default_backend be%d" % i, "", "backend be%d" % i, "  http-reuse always",
                "  server up %s:%d" % (HOST, up_ports[i]), ""]
    path = tmp / "haproxy.cfg"
    path.write_text("\n".join(cfg))
    p.log = open(tmp / "haproxy.log", "wb")
    p.proc = subprocess.Popen([exe, "-db", "-f", str(path)], stdout=p.log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return p


def start_nginx(tmp, up_ports, lanes):
    exe = find_exe("nginx")
    if not exe:
        return None
    p = Proxy("nginx", lanes)
    d = tmp / "nginx"
    for sub in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (d / sub).mkdir(exist_ok=True)
    cfg = ["worker_processes 1;", "daemon off;", "pid %s/nginx.pid;" % d,
           "error_log %s/logs/error.log info;" % d]
    if os.geteuid() == 0:
        cfg.append("user root;")
    cfg += ["events { worker_connections 256; }", "http {", "  access_log off;",
            "  client_body_temp_path %s/body;" % d, "  proxy_temp_path %s/proxy;" % d,
            "  fastcgi_temp_path %s/fastcgi;" % d, "  uwsgi_temp_path %s/uwsgi;" % d,
            "  scgi_temp_path %s/scgi;" % d,
            "  client_header_timeout %gs;" % HEADER_TIMEOUT,
            "  client_body_timeout %gs;" % HEADER_TIMEOUT, "  keepalive_timeout 5s;"]
    for i in range(lanes):
        cfg += ["  upstream up%d { server %s:%d; keepalive 8; }" % (i, HOST, up_ports[i]),
                "  server {", "    listen %s:%d;" % (HOST, p.ports[i]), "    location / {",
                "      proxy_pass http://up%d;" % i, "      proxy_http_version 1.1;",
                '      proxy_set_header Connection "";',
                "      proxy_read_timeout %gs;" % RESPONSE_TIMEOUT,
                "      proxy_connect_timeout 2s;", "    }", "  }"]
    cfg.append("}")
    path = d / "nginx.conf"
    path.write_text("\n".join(cfg) + "\n")
    p.log = open(tmp / "nginx.log", "wb")
    p.proc = subprocess.Popen([exe, "-p", str(d), "-c", str(path), "-e",
                               "%s/logs/error.log" % d], stdout=p.log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    return p


def wait_ready(proxy, upstream, lanes, limit=15.0):
    end = time.monotonic() + limit
    for lane in range(lanes):
        while True:
            if proxy.proc.poll() is not None:
                return "exited with status %s" % proxy.proc.returncode
            st, seq = clean_request(proxy.ports[lane], "/__ready")
            if st == 200 and seq:
                break
            if time.monotonic() > end:
                return "not answering 200 through lane %d (last: %s %s)" % (lane, st, seq)
            time.sleep(0.2)
    return None


# ---------------------------------------------------------------------------------------------
# Running and judging.

def norm_target(t):
    """The origin-form path of a target (absolute-form and a #fragment removed)."""
    t = t.split("#")[0]
    m = re.match(r"(?i)https?://[^/]*(/.*)?$", t)
    if m:
        return m.group(1) or "/"
    return t


def run_lane(proxy, lane, todo, upstream, results):
    name = proxy.lane_name(lane)
    port = proxy.ports[lane]
    for n, case in todo:
        mark = upstream.mark(name)

        def up_count(mark=mark):
            return sum(1 for e in upstream.since(name, mark)
                       if e["kind"] == "req" and not e["target"].startswith("/__clean/"))

        if case.kind == "timeout":
            deadline = HEADER_TIMEOUT + TIMEOUT_SLACK + 0.5
        else:
            deadline = CASE_DEADLINE
        try:
            run = exchange(port, case, up_count, deadline)
        except OSError as e:
            run = Run()
            run.end = "connect error: %s" % e
        time.sleep(0.03)
        target = "/__clean/%s/%d" % (name, n)
        st, seq = clean_request(port, target)
        # A half-forwarded request may stay open briefly while the proxy notices the client left.
        grace = time.monotonic() + 0.3
        while upstream.pending(name) and time.monotonic() < grace:
            time.sleep(0.02)
        run.left_open = upstream.pending(name)
        evs = upstream.since(name, mark)
        clean = [e for e in evs if e["kind"] == "req" and e["target"] == target]
        if st is None:
            run.clean = "clean request: %s" % seq
        elif st != 200 or not seq:
            run.clean = "clean request answered %s without an upstream response" % st
        else:
            got = [e for e in evs if e["kind"] == "req" and str(e["seq"]) == seq.decode()]
            if not got or got[0]["target"] != target:
                run.clean = "clean request got the response of %s" % (
                    got[0]["target"] if got else "a request of an earlier case")
            elif len(clean) != 1:
                run.clean = "upstream saw the clean request %d times" % len(clean)
            elif clean[0]["lead"] or clean[0]["body"] or clean[0]["method"] != "GET":
                run.clean = "clean request framed with %d leading bytes, body %d" % (
                    len(clean[0]["lead"]), len(clean[0]["body"]))
        run.events = [e for e in evs if not (e["kind"] == "req"
                                             and e["target"].startswith("/__clean/"))]
        results[(case.id, proxy.name)] = run
        upstream.reset(name)
        time.sleep(0.02)


def problems_of(case, run):
    """Consistency problems between a proxy's answers and what the upstream framed."""
    out = []
    reqs = [e for e in run.events if e["kind"] == "req"]
    errs = [e for e in run.events if e["kind"] == "error"]
    if case.kind == "h2":
        if len(reqs) > 1:
            out.append(("count", "one HTTP/2 stream, %d upstream requests" % len(reqs)))
    else:
        seqs = {str(e["seq"]) for e in reqs}
        answered = [r[1][b"x-up-seq"].decode() for r in run.responses if b"x-up-seq" in r[1]]
        foreign = [a for a in answered if a not in seqs]
        if foreign:
            out.append(("count", "answered with the response of a request of another case"))
        # A request the proxy forwarded after the client stopped reading (it stopped on its own,
        # the connection still open) cannot have been answered to it: not counted.
        counted = reqs if run.end not in ("open", "hang") or run.stopped_at is None else \
            [e for e in reqs if e["t"] <= run.stopped_at]
        if len(answered) != len(counted):
            out.append(("count", "answered %d upstream response(s), upstream framed %d request(s)"
                        % (len(answered), len(counted))))
    for e in errs:
        out.append(("framing", "upstream could not frame what was forwarded: %s" % e["reason"]))
    for cid, data in run.left_open:
        out.append(("left", "%d bytes of an unfinished request on an open upstream connection"
                    % len(data)))
    if run.clean:
        out.append(("clean", run.clean))
    return out


def leftover_bytes(run):
    ends = response_ends(run.raw, run.end in ("close", "reset"))
    return run.raw[ends[-1] if ends else 0:]


def describe(case, run):
    if run is None:
        return "skipped"
    if case.kind == "h2":
        client = " ".join(run.h2) or "-"
    else:
        client = ",".join(str(r[0]) for r in run.responses) or "-"
        if run.leftover:
            client += "+junk"
    client += " " + run.end
    ups = []
    for e in run.events:
        if e["kind"] == "req":
            flag = ("!" + "/".join(e["problems"])) if e["problems"] else ""
            ups.append("%s %s[%d]%s" % (e["method"][:16], norm_target(e["target"])[:24],
                                        len(e["body"]), flag))
        elif e["kind"] == "error":
            ups.append("ERR(%s)" % e["reason"][:40])
        elif e["kind"] == "partial":
            ups.append("partial[%d]" % e["n"])
    return "%s; up: %s" % (client, ", ".join(ups) if ups else "-")


def judge(case, runs, peers):
    """Switchyard's failures in this case: [(class, message)]."""
    sy = runs.get("switchyard")
    if sy is None:
        return [("missing", "no Switchyard run")]
    fails = problems_of(case, sy)
    if case.kind != "h2" and sy.leftover and sy.end in ("close", "reset"):
        fails.append(("answer", "its response bytes do not frame: %r left after %d response(s)"
                      % (leftover_bytes(sy)[:40], len(sy.responses))))
    if case.kind == "timeout":
        st = [r[0] for r in sy.responses]
        at = [t for r, t in zip(sy.responses, sy.times) if r[0] == 408]
        limit = HEADER_TIMEOUT + TIMEOUT_SLACK
        if not at or at[0] is None or at[0] > limit:
            fails.append(("timeout", "no 408 within %.1fs (got %s, %s after %.1fs)" % (
                limit, ",".join(map(str, st)) or "nothing", sy.end, sy.elapsed)))
    pr = [runs.get(p) for p in peers]
    if len(peers) == 2 and all(pr):
        def targets(run):
            return [norm_target(e["target"]) for e in run.events if e["kind"] == "req"]
        peer_targets = set(targets(pr[0])) | set(targets(pr[1]))
        extra = [t for t in targets(sy) if t not in peer_targets]
        if extra:
            fails.append(("refused", "forwarded %s, which both peers refused"
                          % ", ".join(sorted(set(extra)))))

        def bodies(run):
            out = {}
            for e in run.events:
                if e["kind"] == "req":
                    out.setdefault(norm_target(e["target"]), e["body"])
            return out
        b0, b1, bs = bodies(pr[0]), bodies(pr[1]), bodies(sy)
        for t, body in bs.items():
            if t in b0 and t in b1 and b0[t] == b1[t] and body != b0[t]:
                fails.append(("body", "forwarded %s with a %d-byte body; both peers %d bytes"
                              % (t, len(body), len(b0[t]))))

        def field_problems(run):
            return {p for e in run.events if e["kind"] == "req" for p in e["problems"]}
        extra_p = field_problems(sy) - field_problems(pr[0]) - field_problems(pr[1])
        if extra_p:
            fails.append(("field", "forwarded %s, which neither peer forwarded"
                          % ", ".join(sorted(extra_p))))
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "switchyard"))
    ap.add_argument("--only", help="regex: run only the cases whose id matches")
    ap.add_argument("--no-peers", action="store_true", help="Switchyard only")
    ap.add_argument("--results", default=str(HERE / "results.txt"))
    ap.add_argument("--allowlist", default=str(HERE / "allowlist.toml"))
    ap.add_argument("--lanes", type=int, default=2, help="cases in flight per proxy")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--show", action="store_true",
                    help="print every run's response bytes and upstream events (with --only)")
    args = ap.parse_args()

    selftest()
    todo = [c for c in case_defs.CASES if not args.only or re.search(args.only, c.id)]
    if args.list:
        for c in todo:
            print("%-40s %-9s %-11s %s" % (c.id, c.family, c.source, c.note))
        return 0
    with open(args.allowlist, "rb") as f:
        allow = tomllib.load(f).get("allow", {})
    unknown = sorted(set(allow) - {c.id for c in case_defs.CASES})
    binary = Path(args.bin)
    if not binary.exists():
        print("error: %s not found; build it first (cargo build)" % binary, file=sys.stderr)
        return 2

    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-differential-"))
    upstream = Upstream()
    proxies = []
    crashed = []
    try:
        lanes = max(1, args.lanes)
        up = {}
        for name in ("switchyard", "haproxy", "nginx"):
            up[name] = [upstream.listen("%s.%d" % (name, i)) for i in range(lanes)]
        proxies.append(start_switchyard(binary, tmp, up["switchyard"], lanes))
        notes = []
        if args.no_peers:
            notes.append("peers skipped (--no-peers): the refused/body/field checks are off")
        else:
            for name, start in (("haproxy", start_haproxy), ("nginx", start_nginx)):
                p = start(tmp, up[name], lanes)
                if p is None:
                    notes.append("%s is not installed: peer SKIPPED (apt-get install %s); the "
                                 "refused/body/field checks need both peers and are off"
                                 % (name, name))
                else:
                    proxies.append(p)
        for p in list(proxies):
            why = wait_ready(p, upstream, lanes)
            if why:
                if p.name == "switchyard":
                    print("error: Switchyard %s; log:\n%s" % (why, (tmp / "switchyard.log")
                                                             .read_text(errors="replace")[-3000:]))
                    return 2
                notes.append("%s %s: peer SKIPPED" % (p.name, why))
                p.stop()
                proxies.remove(p)
        for n in notes:
            print("NOTE: " + n)
        for name in up:
            for i in range(lanes):
                upstream.reset("%s.%d" % (name, i))
        peers = [p.name for p in proxies if p.name != "switchyard"]

        results = {}
        threads = []
        for p in proxies:
            for lane in range(lanes):
                share = [(i, c) for i, c in enumerate(todo) if i % lanes == lane]
                th = threading.Thread(target=run_lane, args=(p, lane, share, upstream, results))
                th.start()
                threads.append(th)
        for th in threads:
            th.join()
        crashed = [p.name for p in proxies if p.proc.poll() is not None]
    finally:
        for p in proxies:
            p.stop()
        upstream.stop()

    names = ["switchyard", "haproxy", "nginx"]
    rows, failed, passed, allowed, stale = [], [], 0, [], []
    for c in todo:
        runs = {p: results.get((c.id, p)) for p in names if (c.id, p) in results}
        fails = judge(c, runs, peers)
        if not fails:
            passed += 1
            verdict = "ok"
            if c.id in allow:
                stale.append(c.id)
                verdict = "ok (allowlisted, passes now%s)" % (
                    ": remove it" if len(peers) == 2 else " without both peers")
        elif c.id in allow:
            allowed.append(c.id)
            verdict = "allowlisted: " + "; ".join("%s: %s" % f for f in fails)
        else:
            failed.append(c.id)
            verdict = "FAIL: " + "; ".join("%s: %s" % f for f in fails)
        peer_marks = []
        for p in peers:
            if runs.get(p) and problems_of(c, runs[p]):
                peer_marks.append("%s: %s" % (p, "; ".join(m for _, m in problems_of(c, runs[p]))))
        rows.append((c, [describe(c, runs.get(p)) if p in runs else "skipped" for p in names],
                     verdict, peer_marks))

    lines = ["# Differential HTTP/1 suite: tests/differential/run.py (see README.md).",
             "# One block per case: the bytes' family and source, then for each proxy the",
             "# statuses it answered (how the connection ended) and what the recording upstream",
             "# framed: METHOD target[body bytes], !field problems, ERR(reason), partial[bytes].",
             "# haproxy: %s; nginx: %s" % (tool_version("haproxy"), tool_version("nginx"))]
    lines += ["# NOTE: " + n for n in notes]
    lines.append("")
    for c, descs, verdict, peer_marks in rows:
        lines.append("%s  [%s, %s]%s" % (c.id, c.family, c.source,
                                        ("  -- " + c.note) if c.note else ""))
        for p, d in zip(names, descs):
            lines.append("  %-10s %s" % (p, d))
        for m in peer_marks:
            lines.append("  (peer inconsistency, not a failure) %s" % m)
        lines.append("  => " + verdict)
    summary = "%d passed, %d failed" % (passed, len(failed))
    lines += ["", "%d allowlisted (known Switchyard bugs, allowlist.toml)" % len(allowed), summary]
    Path(args.results).write_text("\n".join(lines) + "\n")

    if args.show:
        for c in todo:
            print("== %s %r" % (c.id, b"".join(c.segments)[:300]))
            for p in names:
                r = results.get((c.id, p))
                if r:
                    print("  %-10s %.2fs %s %r" % (p, r.elapsed, r.end, r.raw[:400]))
                    for e in r.events:
                        print("      upstream %s" % {k: v for k, v in e.items()
                                                     if k not in ("fields", "t")})
    for c, descs, verdict, _ in rows:
        if verdict.startswith("FAIL"):
            print("%s  [%s]" % (c.id, c.family))
            for p, d in zip(names, descs):
                print("  %-10s %s" % (p, d))
            print("  => " + verdict)
    if len(peers) == 2:
        for cid in stale:
            print("NOTE: allowlisted case %s passes now: remove it from allowlist.toml" % cid)
    elif stale:
        print("NOTE: %d allowlisted case(s) pass without both peers; run with HAProxy and nginx "
              "to tell which entries are stale" % len(stale))
    for cid in unknown:
        print("ERROR: allowlist.toml names %s, which is not a case" % cid)
    for name in crashed:
        print("ERROR: %s exited during the run" % name)
    for n in notes:
        print("NOTE: " + n)
    print("%d cases x %d proxies in %.0fs; table: %s" % (len(todo), len(proxies),
                                                         time.monotonic() - t_start, args.results))
    print("%d allowlisted (known Switchyard bugs, allowlist.toml)" % len(allowed))
    print(summary)
    if "switchyard" in crashed:
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed or unknown else 0


def tool_version(name):
    exe = find_exe(name)
    if not exe:
        return "not installed"
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).decode(errors="replace")
    m = re.search(r"(?:HAProxy version|nginx version: nginx/)\s*([0-9][^\s]*)", text)
    return m.group(1) if m else text.strip().split("\n")[0][:60]


if __name__ == "__main__":
    sys.exit(main())
