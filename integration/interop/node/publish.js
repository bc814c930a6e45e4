#!/usr/bin/env node
// publish.js: a publisher of the rabbitkit wire contract v2 (docs/PROTOCOL.md, section 1), written
// from the spec text alone, for the interop test integration/interop_node_test.go.
//
//   node publish.js vectors <v2-vectors.json>
//       Checks this file's encoder against every "valid" vector (the exact wire string from
//       source_hex, epoch, stream_hex, seq), that its decoder returns the same stamp, that it rejects
//       every "invalid" wire form as malformed and that it treats every "not_stamps" message-id as
//       no stamp at all. Exits 0 only when all pass; prints one summary line.
//
//   node publish.js publish <amqp-url> <queue> <plan.json>
//       Publishes the plan's items, in order, to the default exchange with routing key <queue>,
//       persistent, mandatory, on a confirm channel, and waits for every confirm. Prints one JSON
//       line per item ({"index", "message_id", "rk_stamp"}: what it sent) and a summary line.
//
// Plan: {"items": [item, ...]}. Every item has "form" and "body" (text). Forms:
//   "v2"        stamp (source, epoch, stream, seq) in message-id, no headers of our own.
//   "v2-header" "message_id" is the application's and travels unchanged; the stamp goes in the
//               rk-stamp header (long string).
//   "v1"        the four legacy headers: rk-source, rk-stream (long strings), rk-epoch, rk-seq
//               (signed 64-bit, AMQP 'l'); no message-id. v1 has no length limits.
//   "raw"       "message_id" (optional) and "headers" (optional) are sent literally, for forged
//               and malformed stamps. A header value is {"type": T, "value": V}: T is an AMQP field
//               type, S (long string, V text), x (byte array, V hex), b B s u I i l (integers, V
//               decimal text), t (boolean, V "true"/"false") or d (double, V decimal text).
// For v2, v2-header and v1, "source" and "stream" are text (sent as their UTF-8 bytes), "epoch"
// and "seq" decimal strings (64-bit: they are handled as BigInt). Stamp fields are checked as a
// publisher must (section 1.1): an invalid or over-long stamp fails the whole run before anything
// is sent.
'use strict';

const fs = require('node:fs');

// ---------------------------------------------------------------------------------------------
// The v2 stamp (docs/PROTOCOL.md 1.1)

const PREFIX = 'rk2:';
const MAX_LEN = 255; // an AMQP short string
const MAX_SOURCE_LEN = 80; // counted after escaping
const MAX_STREAM_LEN = 130; // counted after escaping
const MAX_INT63 = (1n << 63n) - 1n;
const HEX_UPPER = '0123456789ABCDEF';

class Malformed extends Error {}
class NoStamp extends Error {}

// A byte stands for itself when it is printable ASCII from '!' to '~', other than '%' and ':'.
function isLiteral(b) {
  return b >= 0x21 && b <= 0x7e && b !== 0x25 && b !== 0x3a;
}

// escape writes each byte of a field: literal bytes as themselves, every other one as '%' and two
// upper-case hex digits.
function escape(bytes) {
  let out = '';
  for (const b of bytes) {
    out += isLiteral(b) ? String.fromCharCode(b) : `%${HEX_UPPER[b >> 4]}${HEX_UPPER[b & 15]}`;
  }
  return out;
}

function toBytes(field) {
  return Buffer.isBuffer(field) ? field : Buffer.from(String(field), 'utf8');
}

// toInt63 parses a decimal string (or takes a BigInt/integer) as a BigInt in 1 .. 2^63-1.
function toInt63(v, name) {
  let n;
  if (typeof v === 'bigint') {
    n = v;
  } else if (typeof v === 'number' && Number.isSafeInteger(v)) {
    n = BigInt(v);
  } else if (typeof v === 'string' && /^[0-9]+$/.test(v)) {
    n = BigInt(v);
  } else {
    throw new Error(`${name} ${JSON.stringify(v)} is not a decimal integer`);
  }
  if (n < 1n || n > MAX_INT63) throw new Error(`${name} ${n} is outside 1 .. 2^63-1`);
  return n;
}

// encode returns the v2 wire form of a stamp, refusing what a publisher must refuse: an empty
// source or stream, a number outside 1 .. 2^63-1, a source over 80 or a stream over 130 bytes
// after escaping.
function encode(source, epoch, stream, seq) {
  return encodeWithin(source, epoch, stream, seq, true);
}

// encodeWithin is encode; with limits false it skips the length limits, for naming a v1 stamp
// (v1 has none) in reports.
function encodeWithin(source, epoch, stream, seq, limits) {
  const src = toBytes(source);
  const str = toBytes(stream);
  if (src.length === 0) throw new Error('source is empty');
  if (str.length === 0) throw new Error('stream is empty');
  const e = toInt63(epoch, 'epoch');
  const s = toInt63(seq, 'seq');
  const escSrc = escape(src);
  const escStr = escape(str);
  if (limits && escSrc.length > MAX_SOURCE_LEN) throw new Error(`source is ${escSrc.length} bytes escaped, over ${MAX_SOURCE_LEN}`);
  if (limits && escStr.length > MAX_STREAM_LEN) throw new Error(`stream is ${escStr.length} bytes escaped, over ${MAX_STREAM_LEN}`);
  return `${PREFIX}${escSrc}:${e.toString(10)}:${escStr}:${s.toString(10)}`;
}

// stampVersion returns the version digits when bytes start like a stamp of some version: "rk",
// one or more decimal digits, ':'. Otherwise null (the message-id is the application's).
function stampVersion(bytes) {
  if (bytes.length < 4 || bytes[0] !== 0x72 /* r */ || bytes[1] !== 0x6b /* k */) return null;
  let i = 2;
  while (i < bytes.length && bytes[i] >= 0x30 && bytes[i] <= 0x39) i++;
  if (i === 2 || i >= bytes.length || bytes[i] !== 0x3a) return null;
  return bytes.subarray(2, i).toString('latin1');
}

function hexValue(b) {
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x41 && b <= 0x46) return b - 0x41 + 10; // upper case only: the encoding is canonical
  return -1;
}

function unescapeField(bytes, name) {
  if (bytes.length === 0) throw new Malformed(`${name} is empty`);
  const out = [];
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === 0x25) {
      if (i + 2 >= bytes.length) {
        throw new Malformed(`${name}: truncated escape`);
      }
      const hi = hexValue(bytes[i + 1]);
      const lo = hexValue(bytes[i + 2]);
      if (hi < 0 || lo < 0) throw new Malformed(`${name}: escape is not two upper-case hex digits`);
      const v = (hi << 4) | lo;
      if (isLiteral(v)) throw new Malformed(`${name}: escape %${bytes.subarray(i + 1, i + 3).toString('latin1')} of a byte that stands for itself`);
      out.push(v);
      i += 2;
    } else if (isLiteral(b)) {
      out.push(b);
    } else {
      throw new Malformed(`${name}: byte 0x${b.toString(16).padStart(2, '0')} must be escaped`);
    }
  }
  return Buffer.from(out);
}

function parseNumber(bytes, name) {
  const text = bytes.toString('latin1');
  if (!/^[1-9][0-9]*$/.test(text)) throw new Malformed(`${name} ${JSON.stringify(text)} is not a decimal number from 1 without sign or leading zero`);
  const n = BigInt(text);
  if (n > MAX_INT63) throw new Malformed(`${name} ${text} is over 2^63-1`);
  return n;
}

// decode reads a v2 wire form (a string, taken as its UTF-8 bytes, or a Buffer). It throws NoStamp
// when the bytes do not start like a stamp, Malformed when they do but are not a canonical v2
// stamp; else it returns {source, epoch, stream, seq} (source and stream as Buffers).
function decode(wire) {
  const bytes = toBytes(wire);
  const version = stampVersion(bytes);
  if (version === null) throw new NoStamp('not a stamp');
  if (version !== '2') throw new Malformed(`unsupported version rk${version}:`);
  if (bytes.length > MAX_LEN) throw new Malformed(`${bytes.length} bytes, over ${MAX_LEN}`);
  const parts = [];
  let start = PREFIX.length;
  for (let i = start; i <= bytes.length; i++) {
    if (i === bytes.length || bytes[i] === 0x3a) {
      parts.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  if (parts.length !== 4) throw new Malformed(`${parts.length + 1} ':'-separated parts, want 5`);
  return {
    source: unescapeField(parts[0], 'source'),
    epoch: parseNumber(parts[1], 'epoch'),
    stream: unescapeField(parts[2], 'stream'),
    seq: parseNumber(parts[3], 'seq'),
  };
}

// ---------------------------------------------------------------------------------------------
// Mode vectors

function checkVectors(path) {
  const doc = JSON.parse(fs.readFileSync(path, 'utf8'));
  const failures = [];
  const fail = (msg) => failures.push(msg);
  const valid = doc.valid || [];
  const invalid = doc.invalid || [];
  const notStamps = doc.not_stamps || [];
  if (doc.version !== 2) fail(`vectors file is version ${doc.version}, want 2`);
  if (valid.length === 0 || invalid.length === 0 || notStamps.length === 0) fail('a vector section is empty');

  valid.forEach((v, i) => {
    const what = `valid[${i}] (${v.note || v.wire})`;
    const src = Buffer.from(v.source_hex, 'hex');
    const str = Buffer.from(v.stream_hex, 'hex');
    if (v.source !== undefined && !Buffer.from(v.source, 'utf8').equals(src)) fail(`${what}: source text and source_hex differ`);
    if (v.stream !== undefined && !Buffer.from(v.stream, 'utf8').equals(str)) fail(`${what}: stream text and stream_hex differ`);
    let wire;
    try {
      wire = encode(src, v.epoch, str, v.seq);
    } catch (e) {
      fail(`${what}: encode refused: ${e.message}`);
      return;
    }
    if (wire !== v.wire) fail(`${what}: encoded ${JSON.stringify(wire)}, want ${JSON.stringify(v.wire)}`);
    if (Buffer.byteLength(wire) > MAX_LEN) fail(`${what}: encoded ${Buffer.byteLength(wire)} bytes`);
    try {
      const s = decode(v.wire);
      if (!s.source.equals(src) || !s.stream.equals(str) || s.epoch !== BigInt(v.epoch) || s.seq !== BigInt(v.seq)) {
        fail(`${what}: decoded to a different stamp`);
      }
    } catch (e) {
      fail(`${what}: decode failed: ${e.message}`);
    }
  });

  invalid.forEach((v, i) => {
    const what = `invalid[${i}] (${v.why})`;
    try {
      decode(v.wire);
      fail(`${what}: ${JSON.stringify(v.wire)} accepted`);
    } catch (e) {
      if (!(e instanceof Malformed)) fail(`${what}: ${JSON.stringify(v.wire)} rejected as ${e.constructor.name} (${e.message}), want malformed`);
    }
  });

  notStamps.forEach((id, i) => {
    const what = `not_stamps[${i}] ${JSON.stringify(id)}`;
    try {
      decode(id);
      fail(`${what}: decoded as a stamp`);
    } catch (e) {
      if (!(e instanceof NoStamp)) fail(`${what}: rejected as ${e.constructor.name} (${e.message}), want "not a stamp"`);
    }
  });

  // What a publisher must refuse (section 1.1, limits), beyond the vectors.
  const refusals = [
    ['empty source', ['', '1', 's', '1']],
    ['empty stream', ['a', '1', '', '1']],
    ['epoch 0', ['a', '0', 's', '1']],
    ['seq 2^63', ['a', '1', 's', '9223372036854775808']],
    ['source of 81 bytes', ['x'.repeat(81), '1', 's', '1']],
    ['source of 27 bytes, 81 escaped', ['%'.repeat(27), '1', 's', '1']],
    ['stream of 131 bytes', ['a', '1', 'y'.repeat(131), '1']],
  ];
  for (const [name, args] of refusals) {
    let ok = false;
    try {
      encode(...args);
    } catch {
      ok = true;
    }
    if (!ok) fail(`encoder accepted ${name}`);
  }
  try {
    encode('x'.repeat(80), MAX_INT63, 'y'.repeat(130), MAX_INT63);
  } catch (e) {
    fail(`encoder refused the longest stamp: ${e.message}`);
  }

  for (const f of failures) console.error(`FAIL ${f}`);
  const summary = `vectors: ${valid.length} valid, ${invalid.length} invalid, ${notStamps.length} not_stamps, ${refusals.length + 1} limit checks`;
  if (failures.length > 0) {
    console.log(`${summary}: ${failures.length} FAILED`);
    return 1;
  }
  console.log(`${summary}: all pass`);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Mode publish

const INT_TYPES = {
  b: 'byte',
  B: 'unsignedbyte',
  s: 'short',
  u: 'unsignedshort',
  I: 'int',
  i: 'unsignedint',
  l: 'long',
};

// headerValue turns a plan's {"type", "value"} into what amqplib encodes as that AMQP field type.
function headerValue(name, hv) {
  if (hv === null || typeof hv !== 'object' || typeof hv.type !== 'string') {
    throw new Error(`header ${name}: want {"type": T, "value": V}, got ${JSON.stringify(hv)}`);
  }
  const { type, value } = hv;
  if (type === 'S') return String(value); // amqplib writes strings as long strings ('S')
  if (type === 'x') return Buffer.from(String(value), 'hex');
  if (type === 't') return value === true || value === 'true';
  if (type === 'd') return { '!': 'double', value: Number(value) };
  if (type === 'l') return { '!': 'long', value: BigInt(value) }; // written with writeBigInt64BE
  if (INT_TYPES[type]) return { '!': INT_TYPES[type], value: Number(value) };
  throw new Error(`header ${name}: unknown type ${JSON.stringify(type)}`);
}

// message turns one plan item into [options, body, stamp] for ConfirmChannel.publish. All stamps
// are computed (and checked) here, before anything is sent.
function message(item, index) {
  const body = Buffer.from(item.body === undefined ? '' : String(item.body), 'utf8');
  const options = { persistent: true, mandatory: true };
  let stamp = null;
  switch (item.form) {
    case 'v2':
      stamp = encode(item.source, item.epoch, item.stream, item.seq);
      options.messageId = stamp;
      break;
    case 'v2-header': {
      stamp = encode(item.source, item.epoch, item.stream, item.seq);
      const id = item.message_id;
      if (typeof id !== 'string' || id === '') throw new Error(`item ${index}: v2-header needs an application message_id`);
      // An application message-id that reads as a stamp must be refused.
      if (stampVersion(Buffer.from(id, 'utf8')) !== null) throw new Error(`item ${index}: message_id ${JSON.stringify(id)} looks like a stamp`);
      options.messageId = id;
      options.headers = { 'rk-stamp': stamp };
      break;
    }
    case 'v1': {
      const src = toBytes(item.source);
      const str = toBytes(item.stream);
      if (src.length === 0 || str.length === 0) throw new Error(`item ${index}: empty source or stream`);
      const epoch = toInt63(item.epoch, 'epoch');
      const seq = toInt63(item.seq, 'seq');
      // For the report only: v1 sends no message-id, and has no length limits (section 1.3).
      stamp = encodeWithin(src, epoch, str, seq, false);
      options.headers = {
        'rk-source': String(item.source),
        'rk-epoch': { '!': 'long', value: epoch },
        'rk-stream': String(item.stream),
        'rk-seq': { '!': 'long', value: seq },
      };
      break;
    }
    case 'raw':
      if (item.message_id !== undefined) options.messageId = String(item.message_id);
      if (item.headers !== undefined) {
        options.headers = {};
        for (const [k, v] of Object.entries(item.headers)) options.headers[k] = headerValue(k, v);
      }
      break;
    default:
      throw new Error(`item ${index}: unknown form ${JSON.stringify(item.form)}`);
  }
  if (options.messageId !== undefined && Buffer.byteLength(options.messageId) > MAX_LEN) {
    throw new Error(`item ${index}: message-id over ${MAX_LEN} bytes`);
  }
  return { options, body, stamp };
}

async function publishPlan(url, queue, planPath) {
  const amqp = require('amqplib');
  const plan = JSON.parse(fs.readFileSync(planPath, 'utf8'));
  if (!plan || !Array.isArray(plan.items)) throw new Error('plan: want {"items": [...]}');
  const msgs = plan.items.map(message);

  const conn = await amqp.connect(url, { clientProperties: { connection_name: 'rabbitkit-interop-node' } });
  let returned = 0;
  try {
    const ch = await conn.createConfirmChannel();
    ch.on('return', (m) => {
      returned++;
      console.error(`returned (unroutable): message-id ${JSON.stringify(m.properties.messageId)}`);
    });
    let nacked = 0;
    for (let i = 0; i < msgs.length; i++) {
      const { options, body, stamp } = msgs[i];
      const ok = ch.publish('', queue, body, options, (err) => {
        if (err) nacked++;
      });
      console.log(JSON.stringify({ index: i, message_id: options.messageId ?? null, rk_stamp: stamp }));
      if (!ok) await new Promise((resolve) => ch.once('drain', resolve));
    }
    try {
      await ch.waitForConfirms();
    } catch (e) {
      nacked = Math.max(nacked, 1);
      console.error(`waitForConfirms: ${e.message}`);
    }
    await ch.close();
    if (nacked > 0 || returned > 0) {
      console.log(`publish: ${msgs.length} messages to ${queue}: ${nacked} nacked, ${returned} returned`);
      return 1;
    }
    console.log(`publish: ${msgs.length} messages to ${queue}: all confirmed`);
    return 0;
  } finally {
    await conn.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------

async function main(argv) {
  const [mode, ...args] = argv;
  if (mode === 'vectors' && args.length === 1) return checkVectors(args[0]);
  if (mode === 'publish' && args.length === 3) return publishPlan(...args);
  console.error('usage: node publish.js vectors <v2-vectors.json>\n       node publish.js publish <amqp-url> <queue> <plan.json>');
  return 2;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      console.error(`publish.js: ${err && err.stack ? err.stack : err}`);
      process.exitCode = 1;
    },
  );
}

module.exports = { encode, decode, escape, Malformed, NoStamp };
