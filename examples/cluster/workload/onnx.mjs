// Writes the trained MLP as an ONNX model (protobuf), with a minimal protobuf encoder: only the
// fields of onnx.proto this model needs (ModelProto, GraphProto, NodeProto, AttributeProto,
// TensorProto, ValueInfoProto). Field numbers are those of onnx/onnx.proto (IR version 8).
// The same parameters always give the same bytes.

// ---- protobuf wire format -----------------------------------------------------------------
function varint(n) {
  // Non-negative integers up to 2^53 (dims, enums, lengths).
  const out = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}
const key = (field, wire) => varint(field * 8 + wire);
const int = (field, n) => Buffer.concat([key(field, 0), varint(n)]);
const bytes = (field, buf) => Buffer.concat([key(field, 2), varint(buf.length), buf]);
const str = (field, s) => bytes(field, Buffer.from(s, 'utf8'));
const msg = (field, parts) => bytes(field, Buffer.concat(parts));

// ---- ONNX messages ------------------------------------------------------------------------
const FLOAT = 1; // TensorProto.DataType.FLOAT
const ATTR_INT = 2; // AttributeProto.AttributeType.INT

/** TensorProto with float32 raw_data (little-endian). */
function tensor(field, name, dims, values) {
  const raw = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) raw.writeFloatLE(values[i], i * 4);
  return msg(field, [...dims.map((d) => int(1, d)), int(2, FLOAT), str(8, name), bytes(9, raw)]);
}

/** ValueInfoProto of a float tensor; a string dim is symbolic (dim_param). */
function valueInfo(field, name, dims) {
  const dimMsgs = dims.map((d) => msg(1, [typeof d === 'string' ? str(2, d) : int(1, d)]));
  const shape = msg(2, dimMsgs);
  const tensorType = msg(1, [int(1, FLOAT), shape]);
  return msg(field, [str(1, name), msg(2, [tensorType])]);
}

function node(opType, inputs, outputs, name, attrs = []) {
  return msg(1, [...inputs.map((i) => str(1, i)), ...outputs.map((o) => str(2, o)), str(3, name), str(4, opType), ...attrs]);
}
const intAttr = (name, value) => msg(5, [str(1, name), int(3, value), int(20, ATTR_INT)]);

/**
 * The ONNX bytes of an MLP: input "input" [N, in] float → (Gemm → Relu)* → Gemm → "logits" →
 * Softmax(axis 1) → "probabilities". lay and p as in mlp.mjs; metadata: string key/value pairs.
 */
export function mlpToOnnx(lay, p, { graphName = 'mlp', metadata = {}, producerVersion = '1' } = {}) {
  const nodes = [];
  const inits = [];
  let prev = 'input';
  lay.layers.forEach((L, l) => {
    const last = l === lay.layers.length - 1;
    const w = `layer${l}.weight`;
    const b = `layer${l}.bias`;
    inits.push(tensor(5, w, [L.nin, L.nout], p.subarray(L.w, L.w + L.nin * L.nout)));
    inits.push(tensor(5, b, [L.nout], p.subarray(L.b, L.b + L.nout)));
    const out = last ? 'logits' : `layer${l}.linear`;
    nodes.push(node('Gemm', [prev, w, b], [out], `layer${l}.gemm`));
    if (!last) {
      nodes.push(node('Relu', [out], [`layer${l}.relu`], `layer${l}.relu`));
      prev = `layer${l}.relu`;
    }
  });
  nodes.push(node('Softmax', ['logits'], ['probabilities'], 'softmax', [intAttr('axis', 1)]));
  const nout = lay.sizes[lay.sizes.length - 1];
  const graph = msg(7, [
    ...nodes,
    str(2, graphName),
    ...inits,
    valueInfo(11, 'input', ['N', lay.sizes[0]]),
    valueInfo(12, 'probabilities', ['N', nout]),
    valueInfo(12, 'logits', ['N', nout]),
  ]);
  const props = Object.entries(metadata).map(([k, v]) => msg(14, [str(1, k), str(2, String(v))]));
  return Buffer.concat([
    int(1, 8), // ir_version
    str(2, 'gridwork-example-train'),
    str(3, producerVersion),
    graph,
    msg(8, [str(1, ''), int(2, 13)]), // opset_import: default domain, opset 13
    ...props,
  ]);
}
