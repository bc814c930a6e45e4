#!/usr/bin/env python3
# Writes v2-vectors.json from an implementation of the encoding independent of the Go code:
# run from the repository root: python3 protocol/testdata/gen-v2-vectors.py
# An independent implementation of docs/PROTOCOL.md's v2 encoding, used once to write the vectors.
import json
def lit(c): return 0x20 < c < 0x7f and c not in (ord('%'), ord(':'))
def esc(b): return ''.join(chr(c) if lit(c) else '%%%02X' % c for c in b)
def enc(src, ep, st, seq): return 'rk2:' + esc(src) + ':' + str(ep) + ':' + esc(st) + ':' + str(seq)
valid = []
def v(src, ep, st, seq, note):
    src = src if isinstance(src, bytes) else src.encode()
    st = st if isinstance(st, bytes) else st.encode()
    e = {"note": note, "source_hex": src.hex(), "epoch": str(ep), "stream_hex": st.hex(), "seq": str(seq), "wire": enc(src, ep, st, seq)}
    try:
        e["source"] = src.decode('utf-8'); e["stream"] = st.decode('utf-8')
    except UnicodeDecodeError:
        pass
    assert len(e["wire"]) <= 255
    valid.append(e)
v("billing-1", 4087423915, "payments/captured", 17, "typical: the default stream of exchange payments, key captured")
v("orders-api", 1, "/orders", 1, "default exchange: stream /orders; smallest numbers")
v("svc", 9223372036854775807, "s", 9223372036854775807, "largest epoch and seq (2^63-1)")
v("a:b", 7, "urn:x:y", 3, "':' is the separator and is always escaped")
v("100%", 2, "a%2Fb/c%25d", 5, "'%' is escaped; a default stream of exchange a/b and key c%d")
v("with space", 3, "tab\there", 4, "space and control bytes are escaped")
v("züri-1", 5, "événements/créé", 6, "UTF-8 is escaped byte by byte")
v(b"\x00\xff", 6, b"\x7f~!", 8, "NUL, 0xFF and DEL escaped; '~' and '!' are the literal range's ends")
v("x" * 80, 1, "y" * 130, 1, "longest source (80) and stream (130)")
v("%" * 26 + "ab", 8151, "%" * 43 + "z", 42, "escaped lengths: source 80, stream 130")
v("orders-api-1", 3141592653589793238, "orders.eu/created.v2", 1000000, "a 19-digit epoch")
invalid = [
 ("rk2:", "no fields"),
 ("rk2:src:1:s", "seq field missing"),
 ("rk2:src:1:s:", "empty seq"),
 ("rk2::1:s:1", "empty source"),
 ("rk2:src:1::1", "empty stream"),
 ("rk2:src::s:1", "empty epoch"),
 ("rk2:src:0:s:1", "epoch 0"),
 ("rk2:src:1:s:0", "seq 0"),
 ("rk2:src:01:s:1", "leading zero in epoch"),
 ("rk2:src:1:s:007", "leading zeros in seq"),
 ("rk2:src:-1:s:1", "signed epoch"),
 ("rk2:src:1:s:+1", "signed seq"),
 ("rk2:src:1:s:-5", "negative seq"),
 ("rk2:src:0x10:s:1", "hex number"),
 ("rk2:src:1:s:1e3", "exponent"),
 ("rk2:src:1:s: 1", "space before number"),
 ("rk2:src:1:s:9223372036854775808", "seq overflows int64 (2^63)"),
 ("rk2:src:99999999999999999999:s:1", "epoch overflows int64"),
 ("rk2:src:1:s:1:", "trailing ':'"),
 ("rk2:src:1:s:1x", "trailing bytes after seq"),
 ("rk2:src:1:s:1\n", "trailing newline"),
 ("rk2:src:1:s:t:1", "an unescaped ':' inside the stream"),
 ("rk2:sr c:1:s:1", "a literal space"),
 ("rk2:src:1:s%:1", "truncated escape"),
 ("rk2:src:1:s%4:1", "truncated escape, one digit"),
 ("rk2:src:1:s%zz:1", "not hex"),
 ("rk2:src:1:%c3%a9:1", "lower-case hex"),
 ("rk2:src:1:%41:1", "escaped byte that must be literal ('A')"),
 ("rk2:src:1:%7E:1", "escaped byte that must be literal ('~')"),
 ("rk2:s\u00e9:1:s:1", "a literal non-ASCII byte"),
 ("rk3:src:1:s:1", "unsupported version 3"),
 ("rk1:src:1:s:1", "unsupported version 1 (v1 is headers, never a message-id)"),
 ("rk02:src:1:s:1", "version with a leading zero is not version 2"),
 ("rk12345678901:a:1:b:1", "a version of any number of digits is a stamp, unsupported"),
 ("rk2:" + "x" * 200 + ":1:" + "y" * 60 + ":1", "longer than 255 bytes"),
]
not_stamps = ["", "order-17", "rk", "rk2", "rk:src:1:s:1", "rkx:1", "RK2:src:1:s:1", "billing-1/4087423915/payments/captured/17", "6f1c2a9e-1d3b-4c6a-9a53-0f6c2b5e8d41", " rk2:src:1:s:1"]
json.dump({"version": 2, "about": "Test vectors of the rabbitkit stamp, contract v2 (docs/PROTOCOL.md). valid: the stamp (source and stream as hex bytes, and as text where they are UTF-8; epoch and seq as decimal strings) and its exact wire form. invalid: wire forms a decoder must reject as malformed (they carry a stamp prefix). not_stamps: message-ids that are not stamps at all.",
  "valid": valid, "invalid": [{"wire": w, "why": r} for w, r in invalid], "not_stamps": not_stamps}, open('protocol/testdata/v2-vectors.json', 'w'), indent=1, ensure_ascii=True)
