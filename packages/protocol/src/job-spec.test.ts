import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { GridworkError } from './errors.ts';
import { fieldName, type SpecProblem, validateJobSpec } from './job-spec.ts';

/** The example from DESIGN.md ("Job spec"), as the JSON the CLI sends. */
function designExample(): Record<string, unknown> {
  return {
    version: 1,
    name: 'embed-corpus',
    kind: 'batch',
    runtime: { kind: 'bundle', path: './workload', command: ['node', 'infer.mjs'] },
    resources: { gpu: { count: 1, models: ['rtx-4090', 'a100-80gb'], minVramGiB: 16 }, cpu: 2, memoryGiB: 8 },
    inputs: [{ name: 'docs', path: './data/*.jsonl', shard: true }],
    shards: 8,
    price: { maxPerHour: '1.20', budget: '10.00' },
    placement: { regions: ['eu'], minReputation: 0.5 },
    verification: { mode: 'exact' },
    timeoutSeconds: 3600,
  };
}

type Spec = ReturnType<typeof designExample> & Record<string, any>;

/** A deep copy of the example with `edit` applied. */
function specWith(edit: (s: Spec) => void): Spec {
  const s = structuredClone(designExample()) as Spec;
  edit(s);
  return s;
}

function expectInvalid(spec: unknown, path: string, message?: RegExp): SpecProblem[] {
  let caught: unknown;
  try {
    validateJobSpec(spec);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected the spec to be rejected at ${path}`);
  assert.ok(caught instanceof GridworkError, `expected GridworkError, got ${String(caught)}`);
  assert.equal(caught.code, 'INVALID_SPEC');
  assert.equal(caught.httpStatus, 400);
  const details = caught.details as SpecProblem[];
  assert.ok(Array.isArray(details) && details.length > 0, 'details must be a non-empty array');
  for (const d of details) {
    assert.deepEqual(Object.keys(d).sort(), ['message', 'path']);
    assert.equal(typeof d.path, 'string');
    assert.equal(typeof d.message, 'string');
    assert.ok(d.message.length > 0);
  }
  const hit = details.find((d) => d.path === path);
  assert.ok(hit, `no problem reported at ${path}; got ${JSON.stringify(details)}`);
  if (message) assert.match(hit.message, message);
  // Each case below breaks one field, so every problem is about it and the message names it.
  for (const d of details) assert.equal(d.path, path, `unexpected problem ${JSON.stringify(d)}`);
  assert.ok(caught.message.startsWith(`invalid job spec: ${path}: `), `message ${JSON.stringify(caught.message)} should name ${path}`);
  return details;
}

describe('validateJobSpec', () => {
  it('accepts the DESIGN.md example and returns it unchanged', () => {
    const spec = designExample();
    const out = validateJobSpec(spec);
    assert.equal(out, spec);
    assert.deepEqual(out, designExample());
  });

  it('accepts the example after a JSON round trip, and a minimal spec', () => {
    validateJobSpec(JSON.parse(JSON.stringify(designExample())));
    const minimal = {
      version: 1,
      name: 'x',
      kind: 'service',
      runtime: { kind: 'container', image: 'ghcr.io/acme/svc:1', command: ['serve'] },
      resources: { cpu: 0.5, memoryGiB: 1 },
      service: { port: 8080 },
    };
    assert.deepEqual(validateJobSpec(minimal), minimal);
  });

  it('accepts well-formed env vars and optional fields at their limits', () => {
    validateJobSpec(
      specWith((s) => {
        s.runtime.env = { PATH: '/usr/bin', _X1: '', lower_case: 'ok' };
        s.runtime.network = true;
        s.maxRetries = 0;
        s.resources.diskGiB = 0;
        s.shards = 10000;
        s.placement.minReputation = 1;
        s.price = { maxPerHour: '0.000001', budget: '9223372036854.775807' };
      }),
    );
  });

  it('accepts tolerance verification with a tolerance, and every kind', () => {
    for (const kind of ['batch', 'train', 'service', 'cluster']) {
      validateJobSpec(
        specWith((s) => {
          s.kind = kind;
          s.verification = { mode: 'tolerance', tolerance: 0.01 };
          if (kind === 'service') {
            delete s.shards;
            s.service = { port: 9000, healthPath: '/ready', startupTimeoutSeconds: 30, replicas: 3, public: true };
          }
          if (kind === 'cluster') {
            delete s.shards;
            s.cluster = { size: 4 };
          }
        }),
      );
    }
  });

  it('a cluster needs its size, and nothing else may have one', () => {
    expectInvalid(
      specWith((s) => {
        s.kind = 'cluster';
        delete s.shards;
      }),
      'cluster',
      /required when kind is cluster/,
    );
    expectInvalid(
      specWith((s) => {
        s.cluster = { size: 2 };
      }),
      'cluster',
      /only for kind: cluster/,
    );
    expectInvalid(
      specWith((s) => {
        s.kind = 'cluster';
        delete s.shards;
        s.cluster = { size: 1 };
      }),
      'cluster.size',
    );
  });

  it('a service needs its service block, and nothing else may have one', () => {
    expectInvalid(
      specWith((s) => {
        s.kind = 'service';
        delete s.shards;
      }),
      'service',
      /required when kind is service/,
    );
    expectInvalid(
      specWith((s) => {
        s.service = { port: 8080 };
      }),
      'service',
      /only for kind: service/,
    );
    expectInvalid(
      specWith((s) => {
        s.kind = 'service';
        s.service = { port: 8080 };
      }),
      'shards',
      /service.replicas/,
    );
    expectInvalid(
      specWith((s) => {
        s.kind = 'service';
        delete s.shards;
        s.service = { port: 70000 };
      }),
      'service.port',
    );
  });

  describe('rejects with INVALID_SPEC naming the field', () => {
    const cases: Array<[string, (s: Spec) => void, string, RegExp?]> = [
      [
        'unknown top-level field',
        (s) => {
          s.colour = 'red';
        },
        'colour',
        /unknown field/,
      ],
      [
        'unknown nested field',
        (s) => {
          s.resources.gpu.colour = 'red';
        },
        'resources.gpu.colour',
        /unknown field/,
      ],
      [
        'unknown field inside an array item',
        (s) => {
          s.inputs[0].glob = true;
        },
        'inputs[0].glob',
        /unknown field/,
      ],
      [
        'wrong type (resources.cpu: "2")',
        (s) => {
          s.resources.cpu = '2';
        },
        'resources.cpu',
        /number/,
      ],
      [
        'negative cpu',
        (s) => {
          s.resources.cpu = -1;
        },
        'resources.cpu',
      ],
      [
        'zero cpu',
        (s) => {
          s.resources.cpu = 0;
        },
        'resources.cpu',
      ],
      [
        'absurd memory (1e9)',
        (s) => {
          s.resources.memoryGiB = 1e9;
        },
        'resources.memoryGiB',
      ],
      [
        'shards 0',
        (s) => {
          s.shards = 0;
        },
        'shards',
      ],
      [
        'fractional shards',
        (s) => {
          s.shards = 1.5;
        },
        'shards',
      ],
      [
        'version 2',
        (s) => {
          s.version = 2;
        },
        'version',
      ],
      [
        'missing version',
        (s) => {
          delete s.version;
        },
        'version',
        /required field is missing/,
      ],
      [
        'bad name (uppercase)',
        (s) => {
          s.name = 'Embed-Corpus';
        },
        'name',
      ],
      [
        'bad input name',
        (s) => {
          s.inputs[0].name = 'Docs';
        },
        'inputs[0].name',
      ],
      [
        'unknown kind',
        (s) => {
          s.kind = 'mining';
        },
        'kind',
      ],
      [
        'runtime.kind bundle without path',
        (s) => {
          delete s.runtime.path;
        },
        'runtime.path',
        /required when runtime.kind is bundle/,
      ],
      [
        'runtime.kind container without image',
        (s) => {
          s.runtime = { kind: 'container', command: ['x'] };
        },
        'runtime.image',
        /required when runtime.kind is container/,
      ],
      [
        'empty command',
        (s) => {
          s.runtime.command = [];
        },
        'runtime.command',
      ],
      [
        'verification tolerance without tolerance',
        (s) => {
          s.verification = { mode: 'tolerance' };
        },
        'verification.tolerance',
        /required when verification.mode is tolerance/,
      ],
      [
        'tolerance above 1',
        (s) => {
          s.verification = { mode: 'tolerance', tolerance: 2 };
        },
        'verification.tolerance',
      ],
      [
        'price.budget "abc"',
        (s) => {
          s.price.budget = 'abc';
        },
        'price.budget',
        /not a plain decimal/,
      ],
      [
        'price.maxPerHour "0"',
        (s) => {
          s.price.maxPerHour = '0';
        },
        'price.maxPerHour',
        /greater than zero/,
      ],
      [
        'negative price.budget',
        (s) => {
          s.price.budget = '-1';
        },
        'price.budget',
        /negative/,
      ],
      [
        'too precise price.maxPerHour',
        (s) => {
          s.price.maxPerHour = '1.0000001';
        },
        'price.maxPerHour',
        /6 decimal places/,
      ],
      [
        'price as a number that is no plain decimal',
        (s) => {
          s.price.budget = 1e-7;
        },
        'price.budget',
        /not a plain decimal; write credits as a quoted decimal string/,
      ],
      [
        'duplicate input names',
        (s) => {
          s.inputs.push({ name: 'docs', path: './more/*.jsonl' });
        },
        'inputs[1].name',
        /duplicate input name "docs"/,
      ],
      [
        'minReputation above 1',
        (s) => {
          s.placement.minReputation = 1.5;
        },
        'placement.minReputation',
      ],
      [
        'negative gpu count',
        (s) => {
          s.resources.gpu.count = -1;
        },
        'resources.gpu.count',
      ],
      [
        'timeoutSeconds 0',
        (s) => {
          s.timeoutSeconds = 0;
        },
        'timeoutSeconds',
      ],
      [
        'bad env var name',
        (s) => {
          s.runtime.env = { OK_NAME: 'y', 'BAD-NAME': 'x' };
        },
        'runtime.env.BAD-NAME',
        /unknown field/,
      ],
      [
        'env var name with "="',
        (s) => {
          s.runtime.env = { 'A=B': 'x' };
        },
        'runtime.env.A=B',
        /unknown field/,
      ],
      [
        'env var value not a string',
        (s) => {
          s.runtime.env = { OK: 1 };
        },
        'runtime.env.OK',
        /string/,
      ],
      [
        'hole in inputs',
        (s) => {
          s.inputs = new Array(1);
        },
        'inputs[0]',
        /empty array slot/,
      ],
      [
        'hole in runtime.command',
        (s) => {
          s.runtime.command = ['node', , 'x.mjs'];
        },
        'runtime.command[1]',
        /empty array slot/,
      ],
      [
        'hole in resources.gpu.models',
        (s) => {
          s.resources.gpu.models = ['a100-80gb', ,];
        },
        'resources.gpu.models[1]',
        /empty array slot/,
      ],
    ];
    for (const [label, edit, path, message] of cases) {
      it(`${label} → ${path}`, () => {
        expectInvalid(specWith(edit), path, message);
      });
    }
  });

  it('reports every problem in details, each as {path, message}', () => {
    let caught: unknown;
    try {
      validateJobSpec(
        specWith((s) => {
          s.colour = 1;
          s.resources.cpu = '2';
          s.shards = 0;
        }),
      );
    } catch (err) {
      caught = err;
    }
    assert.ok(caught instanceof GridworkError);
    const paths = (caught.details as SpecProblem[]).map((d) => d.path).sort();
    assert.deepEqual(paths, ['colour', 'resources.cpu', 'shards']);
    assert.deepEqual(caught.toBody().error.details, caught.details);
  });

  it('rejects a spec that is not an object', () => {
    for (const v of [null, undefined, 1, 'spec', [], [designExample()], true]) {
      assert.throws(
        () => validateJobSpec(v),
        (err: unknown) => err instanceof GridworkError && err.code === 'INVALID_SPEC',
      );
    }
  });

  it('rejects "__proto__" from parsed JSON as an unknown field', () => {
    const json = JSON.stringify(designExample()).replace(/^\{/, '{"__proto__":{"admin":true},');
    const parsed = JSON.parse(json);
    assert.ok(Object.hasOwn(parsed, '__proto__'), 'precondition: JSON.parse makes an own __proto__ property');
    expectInvalid(parsed, '__proto__', /unknown field/);
  });

  it('never throws anything but GridworkError INVALID_SPEC for arbitrary values', () => {
    const anything = fc.anything({
      withNullPrototype: true,
      withBigInt: true,
      withDate: true,
      withMap: true,
      withSet: true,
      withTypedArray: true,
      withSparseArray: true,
      withBoxedValues: true,
      withObjectString: true,
      withUnicodeString: true,
    });
    fc.assert(
      fc.property(fc.oneof(anything, fc.object()), (value) => {
        try {
          validateJobSpec(value);
        } catch (err) {
          assert.ok(err instanceof GridworkError, `threw ${String(err)}`);
          assert.equal(err.code, 'INVALID_SPEC');
          assert.ok(Array.isArray(err.details) || err.message === 'job spec must be an object');
          return;
        }
        assert.fail(`accepted a random value: ${fc.stringify(value)}`);
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws anything but GridworkError when one field of a valid spec is replaced by a random value', () => {
    const paths = [
      ['version'],
      ['name'],
      ['kind'],
      ['runtime'],
      ['runtime', 'kind'],
      ['runtime', 'path'],
      ['runtime', 'command'],
      ['runtime', 'env'],
      ['resources'],
      ['resources', 'gpu'],
      ['resources', 'gpu', 'count'],
      ['resources', 'gpu', 'models'],
      ['resources', 'cpu'],
      ['inputs'],
      ['inputs', '0'],
      ['inputs', '0', 'name'],
      ['shards'],
      ['price'],
      ['price', 'budget'],
      ['price', 'maxPerHour'],
      ['placement'],
      ['verification'],
      ['verification', 'mode'],
      ['verification', 'tolerance'],
      ['timeoutSeconds'],
      ['maxRetries'],
    ];
    fc.assert(
      fc.property(fc.constantFrom(...paths), fc.anything({ withNullPrototype: true, withBigInt: true, withSparseArray: true }), (path, value) => {
        const spec = specWith((s) => {
          let node: any = s;
          for (const key of path.slice(0, -1)) node = node[key];
          node[path.at(-1) as string] = value;
        });
        try {
          validateJobSpec(spec);
        } catch (err) {
          assert.ok(err instanceof GridworkError, `threw ${String(err)} for ${path.join('.')} = ${fc.stringify(value)}`);
          assert.equal(err.code, 'INVALID_SPEC');
          const details = err.details as SpecProblem[];
          assert.ok(Array.isArray(details) && details.length > 0);
          assert.ok(details.every((d) => typeof d.path === 'string' && typeof d.message === 'string'));
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('spec errors that help', () => {
  it('a choice lists its allowed values, with the nearest one', () => {
    const [p] = expectInvalid(
      specWith((s) => {
        s.kind = 'bacth';
      }),
      'kind',
    );
    assert.equal(p?.message, 'must be one of batch | train | service | cluster (got "bacth"); did you mean batch?');
    expectInvalid(
      specWith((s) => {
        s.verification.mode = 'strict';
      }),
      'verification.mode',
      /^must be one of exact \| tolerance \| none \(got "strict"\)$/,
    );
    expectInvalid(
      specWith((s) => {
        s.failurePolicy = 'ignore';
      }),
      'failurePolicy',
      /must be one of stop \| continue/,
    );
  });

  it('an unknown field gets the nearest known field name; a misspelt required field is reported once', () => {
    expectInvalid(
      specWith((s) => {
        s.resouces = s.resources;
        delete s.resources;
      }),
      'resouces',
      /^unknown field; did you mean "resources"\?$/,
    );
    expectInvalid(
      specWith((s) => {
        s.resources.memoryGB = 8;
      }),
      'resources.memoryGB',
      /unknown field/,
    );
    expectInvalid(
      specWith((s) => {
        s.placement.region = s.placement.regions;
        delete s.placement.regions;
      }),
      'placement.region',
      /did you mean "regions"/,
    );
    // Nothing near: no guess.
    expectInvalid(
      specWith((s) => {
        s.colour = 'red';
      }),
      'colour',
      /^unknown field$/,
    );
  });

  it('a GPU model one typo away from a known one is refused with the model meant; unknown new models pass', () => {
    expectInvalid(
      specWith((s) => {
        s.resources.gpu.models = ['rtx4090'];
      }),
      'resources.gpu.models[0]',
      /unknown GPU model "rtx4090"; did you mean rtx-4090\?/,
    );
    expectInvalid(
      specWith((s) => {
        s.resources.gpu.models = ['a100-80gb', 'h100'];
      }),
      'resources.gpu.models[1]',
      /did you mean h100-80gb or h100-94gb\?/,
    );
    const ok = validateJobSpec(specWith((s) => (s.resources.gpu.models = ['mi300x', 'h200-141gb'])));
    assert.deepEqual(ok.resources.gpu?.models, ['mi300x', 'h200-141gb']);
  });

  it('numeric prices are accepted as the decimal they spell, and returned as strings', () => {
    const input = specWith((s) => {
      s.price = { maxPerHour: 1.2, budget: 10 };
      s.placement.minStake = 5;
    });
    const spec = validateJobSpec(input);
    assert.deepEqual(spec.price, { maxPerHour: '1.2', budget: '10' });
    assert.equal(spec.placement?.minStake, '5');
    assert.equal(typeof (input.price as { budget: unknown }).budget, 'number', 'the input is not changed');
    expectInvalid(
      specWith((s) => {
        s.price.maxPerHour = 0.0000001;
      }),
      'price.maxPerHour',
      /not a plain decimal/,
    );
    expectInvalid(
      specWith((s) => {
        s.price.maxPerHour = 1.0000001;
      }),
      'price.maxPerHour',
      /6 decimal places/,
    );
  });

  it('queueTimeoutSeconds and failurePolicy are optional and bounded', () => {
    const spec = validateJobSpec(specWith((s) => Object.assign(s, { queueTimeoutSeconds: 600, failurePolicy: 'continue' })));
    assert.equal(spec.queueTimeoutSeconds, 600);
    assert.equal(spec.failurePolicy, 'continue');
    expectInvalid(
      specWith((s) => {
        s.queueTimeoutSeconds = 0;
      }),
      'queueTimeoutSeconds',
    );
    expectInvalid(
      specWith((s) => {
        s.queueTimeoutSeconds = 1.5;
      }),
      'queueTimeoutSeconds',
    );
  });
});

describe('fieldName', () => {
  it('turns JSON pointers into the dotted names users write', () => {
    assert.equal(fieldName(''), '(spec)');
    assert.equal(fieldName('/shards'), 'shards');
    assert.equal(fieldName('/resources/gpu/count'), 'resources.gpu.count');
    assert.equal(fieldName('/inputs/0/name'), 'inputs[0].name');
    assert.equal(fieldName('/runtime/command/12'), 'runtime.command[12]');
  });
});
