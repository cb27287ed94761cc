"""The raw-byte cases of the differential suite (tests/differential/run.py), by family.

Every case is written here in our own code; no file of the projects below was copied. Each
family names where its ideas come from and that source's licence (also in README.md):

  smuggler   defparam/smuggler, configs/default.py and configs/exhaustive.py: the
             Transfer-Encoding mutation lists (MIT, Copyright (c) 2020 Evan Custodio)
  hdg        aws/http-desync-guardian, tests/*.yaml (severe, ambiguous, edge-cases):
             header-name and value test vectors (Apache-2.0)
  garden     narfindustries/http-garden, TROPHIES.md: the server and transducer bug classes
             (GPL-3.0; only the bug classes are used, every payload is our own)
  portswigger  PortSwigger Research, James Kettle: "HTTP Desync Attacks: Request Smuggling
             Reborn" (CL.TE, TE.CL, TE.TE), "HTTP/2: The Sequel is Always Worse" (H2.CL,
             H2.TE, header injection), "Browser-Powered Desync Attacks" (CL.0, pause-based),
             "HTTP/1.1 Must Die" (0.CL, Expect-based); articles, no code (classes only)
  funky      "Funky chunks" (Jeppe Bonde Weikop, w4ke.info): ambiguous chunk-line terminators
             TERM.EXT, EXT.TERM, TERM.SPILL, SPILL.TERM; article, no code (classes only)
  rfc9112    RFC 9112 sections 2.2, 3, 5, 6, 7 (grammar and MUST-reject rules)
  own        written for this suite

A case is a list of byte segments sent on one new connection (with `pause` seconds between
them), then silence while the runner reads. Request targets are fixed so that the three proxies
can be compared: `/a` is the case's request, `/b` a pipelined one, `/smuggled` a request that
exists only if some parser reads the bytes before it as a shorter (or no) body.
"""

from dataclasses import dataclass, field

CRLF = b"\r\n"
# The request that appears when a parser stops reading a body early.
SMUG = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Case:
    id: str
    family: str
    source: str
    segments: list
    pause: float = 0.0
    kind: str = "h1"  # "h1", "h2" (prior-knowledge HTTP/2 frames) or "timeout"
    note: str = ""
    extra: dict = field(default_factory=dict)


def head(lines, reqline=b"POST /a HTTP/1.1"):
    return reqline + CRLF + b"".join(line + CRLF for line in lines) + CRLF


def req(lines, body=b"", reqline=b"POST /a HTTP/1.1", host=True):
    return head(([b"Host: x"] if host else []) + list(lines), reqline) + body


CASES = []
_seen = {}


def add(cid, family, source, data, note="", pause=0.0, kind="h1", **extra):
    segs = data if isinstance(data, list) else [data]
    key = (kind, tuple(segs), pause)
    if key in _seen:  # the same bytes under another name: keep the first
        return
    _seen[key] = cid
    assert all(c.id != cid for c in CASES), cid
    CASES.append(Case(cid, family, source, segs, pause, kind, note, extra))


# ---------------------------------------------------------------------------------------------
# cl: Content-Length values. Body "0123456789" (10 bytes) then a pipelined GET /smuggled: a
# proxy that reads another length forwards a different body or a broken second request.
# Sources: hdg severe.yaml/ambiguous.yaml (lists, duplicates, 2^64, CTL), garden server bugs
# 10, 16, 23, 26, 29, 32, 33, 38, 42 and transducer bugs 1, 5, 11, 22; rfc9112 6.3; own.
BODY10 = b"0123456789"


def cl_case(cid, source, values, body=BODY10 + SMUG, note="", reqline=b"POST /a HTTP/1.1"):
    lines = [b"Content-Length: " + v for v in values]
    add("cl-" + cid, "cl", source, req(lines, body, reqline), note)


cl_case("valid", "rfc9112", [b"10"], note="baseline: body 10 + pipelined GET")
cl_case("leading-zero", "garden", [b"010"], note="decimal 10 (strtoll base 0 reads octal 8)")
cl_case("many-zeros", "garden", [b"0" * 30 + b"10"])
cl_case("plus", "garden", [b"+10"])
cl_case("minus", "garden", [b"-10"])
cl_case("negative-48", "garden", [b"-48"])
cl_case("underscore", "garden", [b"1_0"])
cl_case("hex", "garden", [b"0x0a"])
cl_case("hex-upper", "garden", [b"0XA"])
cl_case("suffix-letter", "garden", [b"10Z"])
cl_case("empty", "garden", [b""])
cl_case("empty-then-10", "garden", [b"", b"10"], note="HAProxy CVE-2023-40225 class")
cl_case("10-then-empty", "garden", [b"10", b""])
cl_case("dup-same", "hdg", [b"10", b"10"])
cl_case("dup-10-0", "garden", [b"10", b"0"])
cl_case("dup-0-10", "garden", [b"0", b"10"])
cl_case("list-same", "hdg", [b"10, 10"])
cl_case("list-same-nospace", "hdg", [b"10,10"])
cl_case("list-diff", "hdg", [b"10, 0"])
cl_case("list-trailing-comma", "own", [b"10,"])
cl_case("list-leading-comma", "own", [b",10"])
cl_case("space-inside", "hdg", [b"1 0"])
cl_case("dot", "hdg", [b"10.0"])
cl_case("ctl-0x11", "hdg", [b"10\x11"])
cl_case("nul", "hdg", [b"10\x00"])
cl_case("semicolon", "own", [b"10;"])
cl_case("quoted", "own", [b'"10"'])
cl_case("e-notation", "own", [b"1e1"])
cl_case("ows-tab", "rfc9112", [b"\t10\t"], note="OWS around the value is allowed")
cl_case("ows-trailing-space", "rfc9112", [b"10 "])
cl_case("nbsp", "garden", [b"\xa010"])
cl_case("vtab", "smuggler", [b"\x0b10"])
cl_case("i64-max", "own", [b"9223372036854775807"], note="valid, the body never completes")
cl_case("2p63", "own", [b"9223372036854775808"])
cl_case("2p64", "hdg", [b"18446744073709551616"])
cl_case("2p64-plus-10", "own", [b"18446744073709551626"], note="wraps to 10 in 64 bits")
cl_case("2p32-plus-10", "own", [b"4294967306"], note="wraps to 10 in 32 bits")
cl_case("30-digits", "own", [b"1" + b"0" * 29])
cl_case("zero-body-follows", "rfc9112", [b"0"], body=SMUG, note="CL 0 then a pipelined GET")
cl_case("short-body", "own", [b"20"], body=BODY10, note="10 of 20 bytes, then silence")
cl_case("on-get", "portswigger", [b"10"], reqline=b"GET /a HTTP/1.1", note="CL.0 class")
cl_case("on-head", "hdg", [b"10"], reqline=b"HEAD /a HTTP/1.1")
cl_case("on-http10", "own", [b"10"], reqline=b"POST /a HTTP/1.0")

# ---------------------------------------------------------------------------------------------
# te: Transfer-Encoding mutations, each sent with a Content-Length as in smuggler's template.
#   clte: body "0\r\n\r\n" + GET /smuggled, CL = whole body. By CL: one POST /a with that body;
#         by chunked: POST /a with an empty body, then GET /smuggled.
#   tecl: CL covers only the chunk-size line; the chunk carries GET /smuggled with a
#         Content-Length that swallows the rest. By chunked: one POST /a; by CL: POST /a with
#         body "2d\r\n", then GET /smuggled.
# Sources: smuggler configs/default.py (the character x position grid) and configs/exhaustive.py
# (the named mutations); hdg (names with whitespace, UTF-8 look-alikes, CTL in value, HTTP/1.0);
# garden server bugs 11, 12, 21, 37, 44, 46 and transducer bugs 9, 15, 18, 25; own.
CLTE_BODY = b"0\r\n\r\n" + SMUG
_TECL_CHUNK = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n"
TECL_BODY = b"%x\r\n" % len(_TECL_CHUNK) + _TECL_CHUNK + b"\r\n0\r\n\r\n"
TECL_CL = len(b"%x\r\n" % len(_TECL_CHUNK))
assert len(b"\r\n0\r\n\r\n") == 7


def te_clte(cid, source, gadget, note="", reqline=b"POST /a HTTP/1.1"):
    data = reqline + CRLF + gadget + CRLF + b"Host: x" + CRLF
    data += b"Content-Length: %d" % len(CLTE_BODY) + CRLF + CRLF + CLTE_BODY
    add("te-" + cid + "-clte", "te", source, data, note)


def te_tecl(cid, source, gadget, note="", reqline=b"POST /a HTTP/1.1"):
    data = reqline + CRLF + gadget + CRLF + b"Host: x" + CRLF
    data += b"Content-Length: %d" % TECL_CL + CRLF + CRLF + TECL_BODY
    add("te-" + cid + "-tecl", "te", source, data, note)


TE = b"Transfer-Encoding"
te_clte("plain", "portswigger", TE + b": chunked", note="classic CL.TE: CL and TE both present")
te_tecl("plain", "portswigger", TE + b": chunked", note="classic TE.CL")

# The named mutations of smuggler's exhaustive config, rewritten.
NAMED = [
    ("nameprefix1", b" " + TE + b": chunked"),
    ("tabprefix1", TE + b":\tchunked"),
    ("tabprefix2", TE + b"\t:\tchunked"),
    ("spacejoin1", b"Transfer Encoding: chunked"),
    ("underjoin1", b"Transfer_Encoding: chunked"),
    ("smashed", b"Transfer Encoding:chunked"),
    ("space1", TE + b" : chunked"),
    ("valueprefix1", TE + b":  chunked"),
    ("vertprefix1", TE + b":\x0bchunked"),
    ("commacow", TE + b": chunked, cow"),
    ("cowcomma", TE + b": cow, chunked"),
    ("contentenc", b"Content-Encoding: chunked"),
    ("linewrapped1", TE + b":\n chunked"),
    ("quoted", TE + b': "chunked"'),
    ("aposed", TE + b": 'chunked'"),
    ("lazygrep", TE + b": chunk"),
    ("sarcasm", b"TrAnSFer-EnCODinG: cHuNkeD"),
    ("yelling", b"TRANSFER-ENCODING: CHUNKED"),
    ("0dsuffix", TE + b": chunked\r"),
    ("tabsuffix", TE + b": chunked\t"),
    ("revdualchunk", TE + b": cow\r\n" + TE + b": chunked"),
    ("0dspam", b"Transfer\r-Encoding: chunked"),
    ("nested", TE + b": cow chunked bar"),
    ("spaceff", TE + b":\xffchunked"),
    ("accentch", TE + b": ch\x96nked"),
    ("accentte", b"Transf\x82r-Encoding: chunked"),
    ("x-rout", b"X: X\r" + TE + b": chunked"),
    ("x-nout", b"X: X\n" + TE + b": chunked"),
]
for name, gadget in NAMED:
    te_clte(name, "smuggler", gadget)
    te_tecl(name, "smuggler", gadget)

# smuggler's default grid: these characters in ten positions around the header.
for ch in [0x01, 0x04, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1F, 0x20, 0x7F, 0xA0, 0xFF]:
    c = bytes([ch])
    grid = [
        ("midspace", TE + b":" + c + b"chunked"),
        ("postspace", TE + c + b": chunked"),
        ("prespace", c + TE + b": chunked"),
        ("endspace", TE + b": chunked" + c),
        ("xprespace", b"X: X" + c + TE + b": chunked"),
        ("endspacex", TE + b": chunked" + c + b"X: X"),
        ("rxprespace", b"X: X\r" + c + TE + b": chunked"),
        ("xnprespace", b"X: X" + c + b"\n" + TE + b": chunked"),
        ("endspacerx", TE + b": chunked\r" + c + b"X: X"),
        ("endspacexn", TE + b": chunked" + c + b"\nX: X"),
    ]
    for pos, gadget in grid:
        te_clte("%s-%02x" % (pos, ch), "smuggler", gadget)

# Further Transfer-Encoding values and names.
MORE_TE = [
    ("xchunked", "hdg", TE + b": xchunked"),
    ("chunked-0x11", "hdg", TE + b": chunked\x11"),
    ("chunked-0x7f", "hdg", TE + b": chunked\x7f"),
    ("chunked-0x80", "hdg", TE + b": chunked\x80"),
    ("two-lines-chunked", "hdg", TE + b": chunked\r\n" + TE + b": chunked"),
    ("chunked-chunked", "hdg", TE + b": chunked,chunked"),
    ("name-trailing-space", "hdg", TE + b" : chunked"),
    ("name-0x01x2", "hdg", b"\x01\x01" + TE + b": chunked"),
    ("name-inner-space", "hdg", b"Transfer- Encoding: chunked"),
    ("name-long-s", "hdg", b"Tran\xc5\xbffer-Encoding: chunked"),
    ("name-dotless-i", "hdg", b"Transfer-Encod\xc4\xb1ng: chunked"),
    ("name-hyphens", "hdg", b"Transfer---Encoding: chunked"),
    ("name-underscores", "hdg", b"Transfer___Encoding: chunked"),
    ("name-utf8-space", "hdg", b"\xe2\x80\x83" + TE + b": chunked"),
    ("name-utf8-dash", "hdg", b"Transfer\xe2\x80\x95Encoding: chunked"),
    ("name-0x88", "hdg", TE + b"\x88: chunked"),
    ("name-space-x", "hdg", TE + b" x: chunked"),
    ("comma-chunked", "garden", TE + b": ,chunked"),
    ("chunked-comma", "own", TE + b": chunked,"),
    ("chunked-identity", "rfc9112", TE + b": chunked, identity"),
    ("identity-chunked", "rfc9112", TE + b": identity, chunked"),
    ("identity", "rfc9112", TE + b": identity"),
    ("gzip-chunked", "rfc9112", TE + b": gzip, chunked"),
    ("chunked-gzip", "rfc9112", TE + b": chunked, gzip"),
    ("gzip", "hdg", TE + b": gzip"),
    ("chunked-params", "rfc9112", TE + b": chunked;q=1"),
    ("nbsp-wrapped", "garden", TE + b": \xa0chunked\xa0"),
    ("0x85-wrapped", "garden", TE + b": \x85chunked\x85"),
    ("ff-wrapped", "garden", TE + b": \xffchunked\xff"),
    ("unknown-blegh", "garden", TE + b": blegh"),
    ("name-split-lines", "garden", b"Transfer-\r\nEncoding: chunked"),
    ("no-colon", "garden", TE + b" chunked"),
    ("lines-chunked-identity", "own", TE + b": chunked\r\n" + TE + b": identity"),
    ("lines-identity-chunked", "own", TE + b": identity\r\n" + TE + b": chunked"),
    ("lines-chunked-empty", "own", TE + b": chunked\r\n" + TE + b":"),
    ("empty-value", "own", TE + b":"),
    ("lowercase-name", "rfc9112", b"transfer-encoding: chunked"),
    ("value-tab-both", "rfc9112", TE + b":\tchunked\t"),
]
for name, source, gadget in MORE_TE:
    te_clte(name, source, gadget)
te_tecl("comma-chunked", "garden", TE + b": ,chunked")
te_tecl("two-lines-chunked", "hdg", TE + b": chunked\r\n" + TE + b": chunked")
te_tecl("xchunked", "hdg", TE + b": xchunked")
te_tecl("chunked-identity", "rfc9112", TE + b": chunked, identity")
te_clte("http10", "hdg", TE + b": chunked", reqline=b"POST /a HTTP/1.0")
te_tecl("http10", "hdg", TE + b": chunked", reqline=b"POST /a HTTP/1.0")
te_clte("on-get", "hdg", TE + b": chunked", reqline=b"GET /a HTTP/1.1")
te_clte("on-head", "hdg", TE + b": chunked", reqline=b"HEAD /a HTTP/1.1")


# A chunked request without Content-Length whose TE line is mutated: by chunked, POST /a with
# body "hello" then GET /smuggled; a proxy that does not see TE reads no body.
def te_only(cid, source, gadget, note=""):
    data = b"POST /a HTTP/1.1\r\nHost: x\r\n" + gadget + CRLF + CRLF
    data += b"5\r\nhello\r\n0\r\n\r\n" + SMUG
    add("te-only-" + cid, "te", source, data, note)


te_only("plain", "rfc9112", TE + b": chunked")
te_only("underscore", "hdg", b"Transfer_Encoding: chunked")
te_only("space-before-colon", "smuggler", TE + b" : chunked")
te_only("obs-fold", "smuggler", TE + b":\r\n chunked")
te_only("comma-chunked", "garden", TE + b": ,chunked")
te_only("two-lines", "garden", TE + b": chunked\r\n" + TE + b": chunked")
te_only("xchunked", "hdg", TE + b": xchunked")

# ---------------------------------------------------------------------------------------------
# chunk: chunk-size lines and chunk data. POST /a, "Transfer-Encoding: chunked", no CL.
# Sources: garden server bugs 1, 17, 22, 25, 31, 47 and transducer bugs 2, 3, 4, 7, 13, 19, 24;
# funky (TERM.EXT, EXT.TERM, TERM.SPILL, SPILL.TERM); rfc9112 7.1, 7.1.1; own.
CHUNKED_HEAD = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk_case(cid, source, body, note="", tail=SMUG):
    add("chunk-" + cid, "chunk", source, CHUNKED_HEAD + body + tail, note)


chunk_case("valid", "rfc9112", b"5\r\nhello\r\n0\r\n\r\n", note="baseline")
chunk_case("valid-two-chunks", "rfc9112", b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n")
chunk_case("valid-upper-hex", "rfc9112", b"A\r\n0123456789\r\n0\r\n\r\n")
chunk_case("valid-ext", "rfc9112", b"5;a=b\r\nhello\r\n0;c\r\n\r\n")
chunk_case("valid-ext-quoted", "rfc9112", b'5;a="b c"\r\nhello\r\n0\r\n\r\n')
chunk_case("valid-ext-bws", "rfc9112", b"5 ; a = b\r\nhello\r\n0\r\n\r\n")
chunk_case("valid-last-zeros", "rfc9112", b"5\r\nhello\r\n000\r\n\r\n")
chunk_case("valid-leading-zeros", "own", b"0" * 30 + b"5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-empty", "garden", b"\r\n5\r\nhello\r\n0\r\n\r\n", note="empty chunk-size line")
chunk_case("size-empty-only", "garden", b"\r\n\r\n", note="empty size as a last chunk")
chunk_case("size-ext-only", "own", b";x\r\n5\r\nhello\r\n0\r\n\r\n", note="no hex digit, ext")
chunk_case("size-spaces-only", "own", b"  \r\n5\r\nhello\r\n0\r\n\r\n", note="no hex digit")
chunk_case("size-tab-only", "own", b"\t\r\n5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-0x", "garden", b"0x5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-plus", "garden", b"+5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-minus", "garden", b"-5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-minus-0x0", "garden", b"-0x0\r\n\r\n")
chunk_case("size-underscore", "garden", b"0_5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-leading-space", "garden", b" 5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-leading-tab", "garden", b"\t5\r\nhello\r\n0\r\n\r\n")
chunk_case("size-trailing-space", "own", b"5 \r\nhello\r\n0\r\n\r\n")
chunk_case("size-trailing-tab", "own", b"5\t\r\nhello\r\n0\r\n\r\n")
chunk_case("size-last-trailing-space", "own", b"5\r\nhello\r\n0 \r\n\r\n")
chunk_case("size-prefix-valid", "garden", b"5hello-bytes\r\nhello\r\n0\r\n\r\n",
           note="longest valid prefix")
chunk_case("size-letters", "garden", b"Z\r\nZZ\r\nZZZ\r\n\r\n")
chunk_case("size-invalid-then-request", "garden", b"INVALID!!!\r\n")
chunk_case("size-2p64-minus-1", "own", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n")
chunk_case("size-2p64-plus-5", "own", b"10000000000000005\r\nhello\r\n0\r\n\r\n",
           note="wraps to 5 in 64 bits")
chunk_case("size-2p32-plus-5", "own", b"100000005\r\nhello\r\n0\r\n\r\n",
           note="wraps to 5 in 32 bits")
chunk_case("size-i64-max", "own", b"7fffffffffffffff\r\nhello\r\n0\r\n\r\n")
chunk_case("size-bare-lf", "funky", b"5\nhello\r\n0\r\n\r\n", note="TERM.EXT class")
chunk_case("size-bare-cr", "funky", b"5\rhello\r\n0\r\n\r\n")
chunk_case("ext-bare-lf", "funky", b"5;a\nhello\r\n0\r\n\r\n", note="TERM.EXT / EXT.TERM")
chunk_case("ext-bare-lf-smuggle", "funky",
           b"2;\nxx\r\n47\r\n" + b"0" * 0x47 + b"\r\n0\r\n\r\n",
           note="LF ends the line for one parser, is extension text for another")
chunk_case("ext-bare-cr", "funky", b"5;a\rhello\r\n0\r\n\r\n")
chunk_case("ext-cr-cr", "garden", b"5\r\r;abcd\r\nhello\r\n0\r\n\r\n")
chunk_case("ext-nul", "rfc9112", b"5;\x00x\r\nhello\r\n0\r\n\r\n")
chunk_case("ext-ctl-0x01", "rfc9112", b"5;a=\x01\r\nhello\r\n0\r\n\r\n")
chunk_case("ext-del", "rfc9112", b"5;a=\x7f\r\nhello\r\n0\r\n\r\n")
chunk_case("ext-bare-semicolon", "rfc9112", b"5;\r\nhello\r\n0\r\n\r\n")
chunk_case("ext-quoted-crlf", "rfc9112", b'5;a="x\r\ny"\r\nhello\r\n0\r\n\r\n')
chunk_case("ext-8k", "own", b"5;a=" + b"b" * 8192 + b"\r\nhello\r\n0\r\n\r\n")
chunk_case("data-bare-lf", "funky", b"5\r\nhello\n0\r\n\r\n", note="TERM.SPILL class")
chunk_case("data-bare-cr", "funky", b"5\r\nhello\r0\r\n\r\n")
chunk_case("data-no-crlf", "rfc9112", b"5\r\nhello0\r\n\r\n")
chunk_case("data-spill", "funky", b"5\r\nhelloXX\r\n0\r\n\r\n", note="SPILL.TERM class")
chunk_case("data-short", "funky", b"5\r\nhel\r\n0\r\n\r\n")
chunk_case("last-bare-lf", "funky", b"5\r\nhello\r\n0\n\r\n")
chunk_case("end-bare-lf", "funky", b"5\r\nhello\r\n0\r\n\n")
chunk_case("end-missing", "own", b"5\r\nhello\r\n0\r\n", tail=b"",
           note="no final CRLF, then silence")
chunk_case("stops-mid-chunk", "own", b"a\r\nhello", tail=b"", note="then silence")
chunk_case("extra-crlf-before-last", "garden", b"5\r\nhello\r\n\r\n0\r\n\r\n")
chunk_case("extra-byte-after", "garden", b"5\r\nhello\r\n0\r\n\r\n\x00", tail=b"")

# ---------------------------------------------------------------------------------------------
# trailer: the trailer section after the last chunk, then a pipelined GET /smuggled.
# Sources: rfc9112 7.1.2 (fields that must not be in trailers), garden server bug 39, own.


def trailer_case(cid, source, trailer, note=""):
    body = b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n"
    add("trailer-" + cid, "trailer", source, CHUNKED_HEAD + body + SMUG, note)


trailer_case("valid", "rfc9112", b"X-T: 1\r\n")
trailer_case("content-length", "rfc9112", b"Content-Length: 50\r\n")
trailer_case("content-length-0", "rfc9112", b"Content-Length: 0\r\n")
trailer_case("transfer-encoding", "rfc9112", b"Transfer-Encoding: chunked\r\n")
trailer_case("host", "rfc9112", b"Host: evil\r\n")
trailer_case("no-colon", "own", b"garbage\r\n")
trailer_case("obs-fold", "rfc9112", b"X-T: 1\r\n 2\r\n")
trailer_case("bare-lf", "funky", b"X-T: 1\n")
trailer_case("nul", "rfc9112", b"X-T: a\x00b\r\n")
trailer_case("request-line", "garden", b"X:GET /smuggled2 HTTP/1.1\r\n")
trailer_case("many", "own", b"".join(b"X-T%d: %d\r\n" % (i, i) for i in range(200)))
add("trailer-unterminated", "trailer", "garden",
    CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + SMUG,
    note="no empty line after the last chunk: GET /smuggled is trailer lines for some")

# ---------------------------------------------------------------------------------------------
# header: field-name and field-value oddities. POST /a, body BODY10 then GET /smuggled.
# Sources: hdg severe.yaml/ambiguous.yaml/edge-cases.yaml; garden server bugs 2, 3, 4, 8, 13,
# 14, 18, 20, 27, 28, 34, 35, 43 and transducer bugs 6, 10, 12, 14, 20; rfc9112 5; own.


def hdr_case(cid, source, lines, note="", body=BODY10 + SMUG, reqline=b"POST /a HTTP/1.1"):
    add("header-" + cid, "header", source, req(lines, body, reqline), note)


CL10 = b"Content-Length: 10"
hdr_case("cl-underscore", "hdg", [b"Content_Length: 10"], note="only an underscore CL")
hdr_case("cl-underscore-and-cl", "hdg", [b"Content_Length: 20", CL10])
hdr_case("te-underscore-chunked-body", "hdg", [b"Transfer_Encoding: chunked"],
         body=b"5\r\nhello\r\n0\r\n\r\n" + SMUG)
hdr_case("cl-space-before-colon", "garden", [b"Content-Length : 10"])
hdr_case("cl-tab-before-colon", "hdg", [b"Content-Length\t: 10"])
hdr_case("cl-folded-onto-host", "garden", [b" Content-Length: 10"],
         note="a line starting with SP: obs-fold onto the Host line before it")
add("header-first-line-leading-space", "header", "garden",
    b"POST /a HTTP/1.1\r\n Content-Length: 10\r\nHost: x\r\n\r\n" + BODY10 + SMUG,
    note="whitespace before the first field name")
add("header-first-line-leading-tab", "header", "garden",
    b"POST /a HTTP/1.1\r\n\tContent-Length: 10\r\nHost: x\r\n\r\n" + BODY10 + SMUG)
hdr_case("cl-obs-fold-value", "portswigger", [b"Content-Length:", b" 10"], note="0.CL class")
hdr_case("cl-obs-fold-continues", "own", [b"Content-Length: 1", b" 0"])
hdr_case("obs-fold-custom", "hdg", [CL10, b"X-A: a", b" b"])
hdr_case("obs-fold-tab", "hdg", [CL10, b"X-A: a", b"\tb"])
hdr_case("obs-fold-hides-te", "hdg", [CL10, b"X-A: a", b" Transfer-Encoding: chunked"])
hdr_case("empty-name", "garden", [CL10, b": ignored"])
hdr_case("empty-name-value", "garden", [b":", CL10])
hdr_case("whitespace-name", "hdg", [CL10, b"   \t\t  : chunked"])
hdr_case("name-starts-colon", "hdg", [CL10, b":SomeHeader:Transfer-Encoding: chunked"])
hdr_case("nul-in-name", "hdg", [CL10, b"X-Bad\x00: 1"])
hdr_case("cr-in-name", "hdg", [CL10, b"X-Bad\r: 1"])
hdr_case("lf-in-name", "hdg", [b"X-Bad\n: Content-Length: 99", CL10])
hdr_case("cr-in-value", "garden", [CL10, b"X-A: va\rlue"])
hdr_case("cr-in-value-hides-cl", "hdg", [CL10, b"X-A: v\rContent-Length: 0"])
hdr_case("lf-in-value", "hdg", [CL10, b"X-A: v\n content-length: 0"])
hdr_case("lf-in-value-new-field", "garden", [CL10, b"X-A: v\nContent-Length: 0"])
hdr_case("nul-in-value", "garden", [CL10, b"X-A: v\x00alue"])
hdr_case("nul-start-value", "hdg", [CL10, b"X-A: \x00value"])
hdr_case("nul-end-value", "garden", [CL10, b"X-A: value\x00"])
hdr_case("nul-start-line", "hdg", [CL10, b"\x00X-A: value"])
hdr_case("ctl-in-value", "hdg", [CL10, b"X-A: Non-Rfc Compliant\x12"])
hdr_case("del-in-value", "own", [CL10, b"X-A: a\x7fb"])
hdr_case("no-colon-cl", "garden", [b"Content-Length 10"])
hdr_case("no-colon-other", "garden", [CL10, b"Te\nst: test"])
hdr_case("no-colon-plain", "own", [CL10, b"NoColonHere"])
hdr_case("name-0xef", "garden", [CL10, b"\xefoo: bar"])
hdr_case("cl-name-0x85", "garden", [b"Content-Length\x85: 10"])
hdr_case("name-0x85", "garden", [CL10, b"Header\x85: value"])
hdr_case("cl-name-nbsp-prefix", "hdg", [b"\xa0Content-Length: 10"])
hdr_case("cl-name-ctl-prefix", "hdg", [b"\x01Content-Length: 10"])
hdr_case("name-paren", "garden", [CL10, b"X(y): z"])
hdr_case("name-at", "garden", [CL10, b"X@y: z"])
hdr_case("name-slash", "garden", [CL10, b"X/y: z"])
hdr_case("name-space", "rfc9112", [CL10, b"X y: z"])
hdr_case("name-brace", "garden", [CL10, b"X{y}: z"])
hdr_case("value-obs-text", "rfc9112", [CL10, b"X-A: caf\xe9"], note="obs-text is allowed")
hdr_case("fields-101", "own", [CL10] + [b"X-%d: %d" % (i, i) for i in range(100)])
hdr_case("field-9k", "own", [CL10, b"X-A: " + b"a" * 9000])

# ---------------------------------------------------------------------------------------------
# reqline: request lines. Sources: garden server bugs 5, 6, 7, 9, 15, 24, 40 and transducer bug
# 16; rfc9112 2.2, 3, 3.2; portswigger (absolute-form host confusion); own.


def rl_case(cid, source, data, note=""):
    add("reqline-" + cid, "reqline", source, data, note)


GET_A = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
rl_case("valid", "rfc9112", GET_A, note="baseline")
rl_case("leading-crlf", "rfc9112", b"\r\n" + GET_A, note="one empty line may be ignored")
rl_case("leading-crlf-x3", "rfc9112", b"\r\n\r\n\r\n" + GET_A)
rl_case("leading-lf", "rfc9112", b"\n" + GET_A)
rl_case("leading-cr", "own", b"\r" + GET_A)
rl_case("leading-space", "own", b" " + GET_A)
rl_case("all-bare-lf", "garden", b"GET /a HTTP/1.1\nHost: x\n\n" + SMUG.replace(b"\r\n", b"\n"),
        note="LF-only lines (MAY be accepted; must be forwarded as CRLF)")
rl_case("bare-lf-reqline-only", "rfc9112", b"GET /a HTTP/1.1\nHost: x\r\n\r\n")
rl_case("bare-lf-end-of-head", "rfc9112", b"GET /a HTTP/1.1\r\nHost: x\r\n\n" + SMUG)
rl_case("bare-cr-reqline", "rfc9112", b"GET /a HTTP/1.1\rHost: x\r\n\r\n")
rl_case("lf-inside-reqline", "garden", b"GET /a\nHTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("cr-inside-version", "garden", b"GET /a HTTP/\r\r1.1\r\nHost: x\r\n\r\n")
rl_case("version-1.32", "garden", b"GET /a HTTP/1.32\r\nHost: x\r\n\r\n")
rl_case("version-overflow", "garden", b"GET /a HTTP/4294967295.255\r\nHost: x\r\n\r\n")
rl_case("version-2.0", "rfc9112", b"GET /a HTTP/2.0\r\nHost: x\r\n\r\n")
rl_case("version-1.2", "rfc9112", b"GET /a HTTP/1.2\r\nHost: x\r\n\r\n")
rl_case("version-0.9", "rfc9112", b"GET /a\r\n\r\n")
rl_case("version-lowercase", "rfc9112", b"GET /a http/1.1\r\nHost: x\r\n\r\n")
rl_case("version-leading-zero", "own", b"GET /a HTTP/01.1\r\nHost: x\r\n\r\n")
rl_case("version-suffix", "own", b"GET /a HTTP/1.1x\r\nHost: x\r\n\r\n")
rl_case("trailing-space", "rfc9112", b"GET /a HTTP/1.1 \r\nHost: x\r\n\r\n")
rl_case("double-space", "rfc9112", b"GET  /a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("tab-separators", "rfc9112", b"GET\t/a\tHTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("method-junk", "garden", b'G=":<>(e),[T];? /a HTTP/1.1\r\nHost: x\r\n\r\n')
rl_case("method-nul", "garden", b"\x00 /a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("method-lowercase", "rfc9112", b"get /a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("method-long", "own", b"G" * 1000 + b" /a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-bang", "garden", b"GET ! HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-space", "rfc9112", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-del", "rfc9112", b"GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-0xff", "rfc9112", b"GET /a\xff HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-star-get", "rfc9112", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-options-star", "rfc9112", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-no-slash", "rfc9112", b"GET a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("target-fragment", "rfc9112", b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("absolute-same-host", "rfc9112", b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("absolute-other-host", "portswigger", b"GET http://evil/a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("absolute-no-host", "rfc9112", b"GET http://x/a HTTP/1.1\r\n\r\n")
rl_case("absolute-https", "rfc9112", b"GET https://x/a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("absolute-upper-scheme", "rfc9112", b"GET HTTP://x/a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("absolute-userinfo", "rfc9112", b"GET http://u@x/a HTTP/1.1\r\nHost: x\r\n\r\n")
rl_case("connect", "rfc9112", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")
rl_case("connect-with-body", "own",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nContent-Length: 10\r\n\r\n" + BODY10 + SMUG)
rl_case("upgrade-h2c", "rfc9112",
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        note="h2c upgrade (RFC 7540 3.2), removed from RFC 9113")
rl_case("upgrade-h2c-post-body", "own",
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 10\r\n\r\n"
        + BODY10 + SMUG)
rl_case("upgrade-h2c-no-connection", "own",
        b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"
        b"\r\n\r\n" + SMUG)
rl_case("preface-as-h1", "own", b"PRI * HTTP/2.0\r\nHost: x\r\n\r\n")

# ---------------------------------------------------------------------------------------------
# host: Host fields. Sources: garden transducer bug 12 and server bug 46 ("host of troubles");
# rfc9112 3.2 (exactly one Host); hdg; own.


def host_case(cid, source, lines, note="", reqline=b"GET /a HTTP/1.1"):
    add("host-" + cid, "host", source, head(lines, reqline) + SMUG, note)


host_case("two-same", "rfc9112", [b"Host: x", b"Host: x"])
host_case("two-different", "rfc9112", [b"Host: x", b"Host: evil"])
host_case("space-inside", "own", [b"host: a b"])
host_case("list", "rfc9112", [b"Host: a, b"])
host_case("empty", "rfc9112", [b"Host:"])
host_case("nul", "garden", [b"Host: x\x00.evil"])
host_case("ff-wrapped", "garden", [b"Host: \xffx\xff"])
host_case("port-too-big", "own", [b"Host: x:99999"])
host_case("port-letters", "own", [b"Host: x:abc"])
host_case("ipv6", "rfc9112", [b"Host: [::1]:80"])
host_case("userinfo", "own", [b"Host: u@x"])
host_case("slash", "own", [b"Host: x/evil"])
host_case("tab-value", "rfc9112", [b"Host:\tx"])
host_case("space-before-colon", "garden", [b"Host : x"])
host_case("missing-http11", "rfc9112", [])
host_case("missing-http10", "rfc9112", [], reqline=b"GET /a HTTP/1.0")

# ---------------------------------------------------------------------------------------------
# pipeline: several requests in one write. Sources: garden server bugs 45, 48; rfc9112 9.3; own.


def pl_case(cid, source, data, note=""):
    add("pipeline-" + cid, "pipeline", source, data, note)


GET_B = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
pl_case("two-gets", "rfc9112", GET_A + GET_B)
pl_case("ten-gets", "rfc9112", GET_A * 9 + GET_B)
pl_case("post-cl-then-get", "rfc9112", req([CL10], BODY10) + GET_B)
pl_case("post-chunked-then-get", "rfc9112", CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n" + GET_B)
pl_case("valid-then-invalid", "garden", GET_A + b"Invalid\r\n\r\n")
pl_case("valid-invalid-valid", "own", GET_A + b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1"
        b"\r\n\r\n" + GET_B)
pl_case("close-then-more", "rfc9112", b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        + GET_B, note="nothing after a Connection: close request may be forwarded")
pl_case("http10-then-more", "rfc9112", b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n" + GET_B)
pl_case("http10-keepalive-then-more", "rfc9112",
        b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" + GET_B)
pl_case("cl0-then-post", "garden",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 34\r\n\r\n" + GET_A)
pl_case("get-with-body-then-get", "garden", req([CL10], BODY10, b"GET /a HTTP/1.1") + GET_B)
pl_case("head-then-get", "rfc9112", b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n" + GET_B)

# ---------------------------------------------------------------------------------------------
# desync: PortSwigger's desync classes, in HTTP/1. Sources: portswigger (as listed above),
# garden, own.


def ds_case(cid, source, data, note="", pause=0.0):
    add("desync-" + cid, "desync", source, data, note, pause=pause)


# TE.TE: two Transfer-Encoding lines, one obfuscated (Kettle 2019's list, rewritten).
ds_case("tete-second-x", "portswigger", req([b"Transfer-Encoding: chunked",
        b"Transfer-encoding: x", b"Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY))
ds_case("tete-newline-colon", "portswigger", req([b"Transfer-Encoding\n: chunked",
        b"Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY))
ds_case("tete-tab-and-plain", "portswigger", req([b"Transfer-Encoding:\tchunked",
        b"Transfer-Encoding: x", b"Content-Length: %d" % TECL_CL], TECL_BODY))
ds_case("clte-cl-first", "portswigger", req([b"Content-Length: %d" % len(CLTE_BODY),
        b"Transfer-Encoding: chunked"], CLTE_BODY))
# CL.0: a request the front end gives a body that a back end may ignore.
ds_case("cl0-get", "portswigger", req([b"Content-Length: %d" % len(SMUG)], SMUG,
        b"GET /a HTTP/1.1"))
ds_case("cl0-head", "portswigger", req([b"Content-Length: %d" % len(SMUG)], SMUG,
        b"HEAD /a HTTP/1.1"))
ds_case("cl0-options", "portswigger", req([b"Content-Length: %d" % len(SMUG)], SMUG,
        b"OPTIONS /a HTTP/1.1"))
ds_case("cl0-get-close", "portswigger", req([b"Content-Length: %d" % len(SMUG),
        b"Connection: close"], SMUG, b"GET /a HTTP/1.1"))
# 0.CL: a Content-Length the front end ignores and the back end honours (Kettle 2025).
for cid, line in [("0cl-space-colon", b"Content-Length : %d"),
                  ("0cl-leading-space", b" Content-Length: %d"),
                  ("0cl-vtab-name", b"Content-Length\x0b: %d"),
                  ("0cl-folded", b"Content-Length:\r\n %d"),
                  ("0cl-underscore", b"Content_Length: %d"),
                  ("0cl-nul-name", b"Content-Length\x00: %d")]:
    ds_case(cid, "portswigger", req([b"X-Before: 1", line % len(SMUG)], SMUG,
            b"GET /a HTTP/1.1"))
# Expect-based desyncs (Kettle 2025): bodies sent without waiting for 100 Continue, and
# Expect values a parser may or may not recognise.
ds_case("expect-body-at-once", "portswigger", req([b"Expect: 100-continue", CL10],
        BODY10 + SMUG))
ds_case("expect-body-after-pause", "portswigger",
        [req([b"Expect: 100-continue", CL10]), BODY10 + SMUG], pause=0.3)
ds_case("expect-obfuscated", "portswigger", req([b"Expect: y 100-continue", CL10],
        BODY10 + SMUG))
ds_case("expect-folded", "portswigger", req([b"Expect:", b" 100-continue", CL10],
        BODY10 + SMUG))
ds_case("expect-uppercase", "rfc9112", req([b"Expect: 100-CONTINUE", CL10], BODY10 + SMUG))
ds_case("expect-cl0", "portswigger", req([b"Expect: 100-continue", b"Content-Length: 0"],
        SMUG))
ds_case("expect-chunked", "portswigger", req([b"Expect: 100-continue",
        b"Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n" + SMUG))
ds_case("expect-get-no-body", "portswigger", req([b"Expect: 100-continue"], SMUG,
        b"GET /a HTTP/1.1"))
ds_case("expect-unknown", "rfc9112", req([b"Expect: nonsense", CL10], BODY10 + SMUG))
# Pause-based (Kettle 2022): the request arrives in parts.
ds_case("pause-after-head", "portswigger", [req([CL10]), BODY10 + SMUG], pause=0.3)
ds_case("pause-mid-head", "portswigger", [b"POST /a HTTP/1.1\r\nHost: x\r\nCont",
        b"ent-Length: 10\r\n\r\n" + BODY10 + SMUG], pause=0.3)
ds_case("pause-mid-body", "portswigger", [req([CL10], b"01234"), b"56789" + SMUG], pause=0.3)
ds_case("pause-mid-body-long", "portswigger", [req([CL10], b"01234"), b"56789" + SMUG],
        pause=1.2, note="a 1.2 s pause: beyond header_timeout, within response_timeout")
ds_case("pause-mid-chunk", "portswigger", [CHUNKED_HEAD + b"5\r\nhel", b"lo\r\n0\r\n\r\n" + SMUG],
        pause=0.3)
ds_case("pause-before-smuggled", "portswigger", [req([CL10], BODY10), SMUG], pause=0.3)

# ---------------------------------------------------------------------------------------------
# h2: prior-knowledge HTTP/2 requests that a proxy downgrades to HTTP/1.1 (H2.CL, H2.TE,
# header injection). Source: portswigger ("HTTP/2: The Sequel is Always Worse"), RFC 9113
# 8.2.2 and 8.1.1. The runner answers the server's SETTINGS; one stream per case.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(ftype, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") \
        + payload


def hpack_literal(name, value):
    # Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2).
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def h2_request(headers, data=None, end_stream_on_headers=False):
    block = b"".join(hpack_literal(n, v) for n, v in headers)
    out = H2_PREFACE + h2_frame(4, 0, 0, b"")  # SETTINGS
    flags = 0x4 | (0x1 if data is None or end_stream_on_headers else 0)
    out += h2_frame(1, flags, 1, block)  # HEADERS, END_HEADERS
    if data is not None and not end_stream_on_headers:
        out += h2_frame(0, 0x1, 1, data)  # DATA, END_STREAM
    return out


def h2_case(cid, headers, data=None, note=""):
    add("h2-" + cid, "h2", "portswigger", h2_request(headers, data), note, kind="h2")


H2_BASE = [(b":method", b"POST"), (b":path", b"/a"), (b":scheme", b"http"),
           (b":authority", b"x")]
h2_case("get", [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"http"),
                (b":authority", b"x")], note="baseline")
h2_case("post-cl-match", H2_BASE + [(b"content-length", b"5")], b"hello")
h2_case("cl0-with-data", H2_BASE + [(b"content-length", b"0")], SMUG, note="H2.CL")
h2_case("cl-short", H2_BASE + [(b"content-length", b"3")], b"hello" + SMUG, note="H2.CL")
h2_case("cl-long", H2_BASE + [(b"content-length", b"50")], b"hello", note="H2.CL")
h2_case("te-chunked", H2_BASE + [(b"transfer-encoding", b"chunked")], b"0\r\n\r\n" + SMUG,
        note="H2.TE")
h2_case("crlf-in-value", H2_BASE + [(b"x-a", b"a\r\nTransfer-Encoding: chunked")],
        b"0\r\n\r\n" + SMUG, note="header injection")
h2_case("crlf-in-name", H2_BASE + [(b"x-a: b\r\ntransfer-encoding", b"chunked")],
        b"0\r\n\r\n" + SMUG, note="header injection")
h2_case("connection-header", H2_BASE + [(b"connection", b"keep-alive")], b"hello")
h2_case("path-injection", [(b":method", b"GET"), (b":path", b"/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /smuggled"), (b":scheme", b"http"), (b":authority", b"x")],
        note="request-line injection")
h2_case("method-injection", [(b":method", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET"),
        (b":path", b"/a"), (b":scheme", b"http"), (b":authority", b"x")])
h2_case("uppercase-name", H2_BASE + [(b"Content-Length", b"5")], b"hello")

# ---------------------------------------------------------------------------------------------
# timeout: blank lines or a partial head, then silence. The proxy should answer 408 within
# header_timeout (HAProxy does; nginx closes without a response). Source: rfc9112 2.2 (empty
# lines before a request), own.
add("timeout-crlf-crlf", "timeout", "own", b"\r\n\r\n", kind="timeout")
add("timeout-lf-lf", "timeout", "own", b"\n\n", kind="timeout")
add("timeout-crlf-x1000", "timeout", "own", b"\r\n" * 1000, kind="timeout")
add("timeout-crlf-partial-head", "timeout", "own", b"\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n",
    kind="timeout")
add("timeout-partial-head", "timeout", "own", b"GET /a HTTP/1.1\r\nHost: x\r\n", kind="timeout",
    note="control: no blank lines before the partial head")
add("timeout-crlf-drip", "timeout", "own", [b"\r\n"] * 8, pause=0.4, kind="timeout",
    note="a CRLF every 0.4 s: the timer must not restart on each")
add("timeout-keepalive-crlf-crlf", "timeout", "own", GET_A + b"\r\n\r\n", kind="timeout",
    note="after a first request on the connection")
add("timeout-keepalive-lf-lf", "timeout", "own", GET_A + b"\n\n", kind="timeout")
add("timeout-keepalive-crlf-partial-head", "timeout", "own",
    GET_A + b"\r\n\r\nGET /b HTTP/1.1\r\n", kind="timeout")
add("timeout-keepalive-crlf-drip", "timeout", "own", [GET_A] + [b"\r\n"] * 8, pause=0.4,
    kind="timeout")
add("timeout-keepalive-partial-head", "timeout", "own", GET_A + b"GET /b HTTP/1.1\r\n",
    kind="timeout", note="control: a partial second head without blank lines")

FAMILIES = ["cl", "te", "chunk", "trailer", "header", "reqline", "host", "pipeline", "desync",
            "h2", "timeout"]
assert all(c.family in FAMILIES for c in CASES)
