import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { canonicalJson } from './canonical-json.ts';

describe('canonicalJson (RFC 8785)', () => {
  it('sorts object keys, recursively, with no whitespace', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: null } }), '{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1}');
    assert.equal(canonicalJson({ b: 1, a: 2 }), canonicalJson({ a: 2, b: 1 }));
  });

  it('keeps array order', () => {
    assert.equal(canonicalJson([3, 1, 2]), '[3,1,2]');
  });

  it('sorts keys by UTF-16 code units (RFC 8785 §3.2.3 example)', () => {
    const input = {
      '\u20ac': 'Euro Sign',
      '\r': 'Carriage Return',
      '\ufb33': 'Hebrew Letter Dalet With Dagesh',
      '1': 'One',
      '\ud83d\ude00': 'Emoji: Grinning Face',
      '\u0080': 'Control',
      '\u00f6': 'Latin Small Letter O With Diaeresis',
    };
    // Read the keys from the text: Object.keys would put the integer-like "1" first.
    const keys = [...canonicalJson(input).matchAll(/"((?:[^"\\]|\\.)*)":/g)].map((m) => JSON.parse(`"${m[1]}"`));
    // The emoji (a surrogate pair, 0xD83D…) sorts before U+FB33, unlike code point order.
    assert.deepEqual(keys, ['\r', '1', '\u0080', '\u00f6', '\u20ac', '\ud83d\ude00', '\ufb33']);
    assert.ok(canonicalJson(input).startsWith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"'));
  });

  it('sorts keys by code unit, not by locale (uppercase before lowercase)', () => {
    assert.equal(canonicalJson({ b: 0, B: 0, a: 0, A: 0, _: 0 }), '{"A":0,"B":0,"_":0,"a":0,"b":0}');
  });

  it('formats numbers as ECMAScript does (RFC 8785 §3.2.2.3 / Appendix B)', () => {
    const cases: Array<[number, string]> = [
      [0, '0'],
      [-0, '0'],
      [1e21, '1e+21'],
      [1e20, '100000000000000000000'],
      [0.1, '0.1'],
      [4.5, '4.5'],
      [2e-3, '0.002'],
      [1e-7, '1e-7'],
      [0.000001, '0.000001'],
      [1e30, '1e+30'],
      [1e-27, '1e-27'],
      [333333333.33333329, '333333333.3333333'],
      [5e-324, '5e-324'],
      [-5e-324, '-5e-324'],
      [1.7976931348623157e308, '1.7976931348623157e+308'],
      [9007199254740992, '9007199254740992'],
      [9.999999999999997e22, '9.999999999999997e+22'],
      [9.999999999999997e-7, '9.999999999999997e-7'],
      [-1.5, '-1.5'],
    ];
    for (const [n, s] of cases) assert.equal(canonicalJson(n), s, `number ${n}`);
    assert.equal(canonicalJson({ n: -0 }), '{"n":0}');
  });

  it('rejects NaN and Infinity', () => {
    for (const n of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      assert.throws(() => canonicalJson(n));
      assert.throws(() => canonicalJson({ a: [n] }));
    }
  });

  it('escapes strings minimally: control characters as \\u00xx, no escaping of non-ASCII', () => {
    assert.equal(canonicalJson('\u20ac$\u000F\u000aA\'\u0042\u0022\u005c\\"/'), '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"');
    assert.equal(canonicalJson('\b\t\n\f\r'), '"\\b\\t\\n\\f\\r"');
    assert.equal(canonicalJson('\u0000\u001f\u007f'), '"\\u0000\\u001f\u007f"');
    assert.equal(canonicalJson('é😀\u2028'), '"é😀\u2028"');
    assert.equal(canonicalJson('/'), '"/"');
  });

  it('matches the RFC 8785 §3.2.2 example byte for byte', () => {
    const input = JSON.parse(
      '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],' +
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}',
    );
    assert.equal(
      canonicalJson(input),
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
  });

  it('drops undefined object members and writes undefined array items as null, as JSON.stringify does', () => {
    assert.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
    assert.equal(canonicalJson([undefined, 1]), '[null,1]');
  });

  it('throws on a value that has no JSON form', () => {
    assert.throws(() => canonicalJson(undefined), TypeError);
  });

  it('is parseable JSON equal to the input and idempotent, for arbitrary JSON values', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const c = canonicalJson(v);
        const parsed = JSON.parse(c);
        assert.deepEqual(parsed, JSON.parse(JSON.stringify(v)));
        assert.equal(canonicalJson(parsed), c);
        assert.ok(!/[\n ]/.test(c.replace(/"(?:[^"\\]|\\.)*"/g, '""')), 'no whitespace outside strings');
      }),
      { numRuns: 500 },
    );
  });

  it('does not depend on key insertion order', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue(), { maxKeys: 10 }), (obj) => {
        const reversed = Object.fromEntries(Object.entries(obj).reverse());
        assert.equal(canonicalJson(reversed), canonicalJson(obj));
      }),
    );
  });
});
