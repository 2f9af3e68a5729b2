// A ReLU multi-layer perceptron with softmax cross-entropy, trained by Adam, in float64 with a
// fixed order for every sum: the same inputs give the same bits on any machine (see detmath.mjs).
// Weights are row-major [in x out] (ONNX Gemm's B with transB = 0), so export needs no transpose.
import { exp, log, mulberry32 } from './detmath.mjs';

/** Parameter layout for layer sizes [in, h1, ..., out]: offsets into one flat Float64Array. */
export function layout(sizes) {
  const layers = [];
  let off = 0;
  for (let l = 0; l + 1 < sizes.length; l++) {
    const nin = sizes[l];
    const nout = sizes[l + 1];
    layers.push({ nin, nout, w: off, b: off + nin * nout });
    off += nin * nout + nout;
  }
  return { sizes, layers, count: off };
}

/** Uniform He initialisation: w ~ U(-a, a), a = sqrt(6 / fan_in); biases 0. */
export function initParams(lay, seed) {
  const rng = mulberry32(seed);
  const p = new Float64Array(lay.count);
  for (const L of lay.layers) {
    const a = Math.sqrt(6 / L.nin);
    for (let i = 0; i < L.nin * L.nout; i++) p[L.w + i] = (2 * rng.next() - 1) * a;
  }
  return p;
}

/**
 * Forward pass for rows idx of x (or all rows when idx is null). Returns the activations of every
 * layer (post-ReLU for hidden layers) and the softmax probabilities.
 */
export function forward(lay, p, x, idx) {
  const n = idx ? idx.length : x.length / lay.sizes[0];
  const nin0 = lay.sizes[0];
  let a = new Float64Array(n * nin0);
  for (let r = 0; r < n; r++) {
    const src = idx ? idx[r] : r;
    for (let k = 0; k < nin0; k++) a[r * nin0 + k] = x[src * nin0 + k];
  }
  const acts = [a];
  for (let l = 0; l < lay.layers.length; l++) {
    const L = lay.layers[l];
    const z = new Float64Array(n * L.nout);
    const last = l === lay.layers.length - 1;
    for (let r = 0; r < n; r++) {
      for (let j = 0; j < L.nout; j++) {
        let s = p[L.b + j];
        for (let k = 0; k < L.nin; k++) s += a[r * L.nin + k] * p[L.w + k * L.nout + j];
        z[r * L.nout + j] = last || s > 0 ? s : 0;
      }
    }
    acts.push(z);
    a = z;
  }
  const logits = a;
  const c = lay.sizes[lay.sizes.length - 1];
  const probs = new Float64Array(n * c);
  for (let r = 0; r < n; r++) {
    let m = logits[r * c];
    for (let j = 1; j < c; j++) if (logits[r * c + j] > m) m = logits[r * c + j];
    let sum = 0;
    for (let j = 0; j < c; j++) {
      const e = exp(logits[r * c + j] - m);
      probs[r * c + j] = e;
      sum += e;
    }
    for (let j = 0; j < c; j++) probs[r * c + j] /= sum;
  }
  return { acts, probs, n };
}

/** Mean cross-entropy and accuracy of the probabilities against labels y (rows idx, or all). */
export function lossAndAccuracy(probs, y, idx, c) {
  const n = idx ? idx.length : y.length;
  let loss = 0;
  let correct = 0;
  for (let r = 0; r < n; r++) {
    const label = y[idx ? idx[r] : r];
    loss -= log(probs[r * c + label]);
    let best = 0;
    for (let j = 1; j < c; j++) if (probs[r * c + j] > probs[r * c + best]) best = j;
    if (best === label) correct++;
  }
  return { loss: loss / n, accuracy: correct / n };
}

/** Gradient of the mean cross-entropy over the rows idx, into grad (overwritten). */
export function backward(lay, p, fw, y, idx, grad) {
  grad.fill(0);
  const n = fw.n;
  const c = lay.sizes[lay.sizes.length - 1];
  let delta = new Float64Array(n * c);
  for (let r = 0; r < n; r++) {
    const label = y[idx[r]];
    for (let j = 0; j < c; j++) delta[r * c + j] = (fw.probs[r * c + j] - (j === label ? 1 : 0)) / n;
  }
  for (let l = lay.layers.length - 1; l >= 0; l--) {
    const L = lay.layers[l];
    const a = fw.acts[l];
    for (let r = 0; r < n; r++) {
      for (let j = 0; j < L.nout; j++) {
        const d = delta[r * L.nout + j];
        if (d === 0) continue;
        grad[L.b + j] += d;
        for (let k = 0; k < L.nin; k++) grad[L.w + k * L.nout + j] += a[r * L.nin + k] * d;
      }
    }
    if (l === 0) break;
    const prev = new Float64Array(n * L.nin);
    for (let r = 0; r < n; r++) {
      for (let k = 0; k < L.nin; k++) {
        if (a[r * L.nin + k] <= 0) continue; // ReLU'(z) = 0 where the activation is 0
        let s = 0;
        for (let j = 0; j < L.nout; j++) s += delta[r * L.nout + j] * p[L.w + k * L.nout + j];
        prev[r * L.nin + k] = s;
      }
    }
    delta = prev;
  }
}

/**
 * One Adam step. opt = { m, v, beta1Pow, beta2Pow } is updated in place; the bias corrections use
 * beta^t kept as running products (no Math.pow).
 */
export function adamStep(p, grad, opt, { lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8 }) {
  opt.beta1Pow *= beta1;
  opt.beta2Pow *= beta2;
  const c1 = 1 - opt.beta1Pow;
  const c2 = 1 - opt.beta2Pow;
  for (let i = 0; i < p.length; i++) {
    const g = grad[i];
    opt.m[i] = beta1 * opt.m[i] + (1 - beta1) * g;
    opt.v[i] = beta2 * opt.v[i] + (1 - beta2) * g * g;
    p[i] -= (lr * (opt.m[i] / c1)) / (Math.sqrt(opt.v[i] / c2) + eps);
  }
}
