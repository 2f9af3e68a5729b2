// Opens an ONNX Runtime session on the CUDA execution provider when this task was given a GPU
// (CUDA_VISIBLE_DEVICES names one) and the provider can be loaded, on the CPU otherwise, and
// says which one it used and why. EXECUTION_PROVIDER=cpu|cuda|auto (default auto) overrides.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
export const ort = require('onnxruntime-node');

function visibleGpus() {
  const v = (process.env.CUDA_VISIBLE_DEVICES ?? '').trim();
  // "" hides every GPU, and so does "-1" or "none"; NoDevFiles is what the NVIDIA runtime sets when none is passed.
  if (v === '' || v === '-1' || v.toLowerCase() === 'none' || v === 'NoDevFiles') return '';
  return v;
}

/** Where onnxruntime-node keeps its native libraries for this platform (CUDA providers too, when installed). */
function nativeDir() {
  return require.resolve('onnxruntime-node/package.json').replace(/package\.json$/, `bin/napi-v6/${process.platform}/${process.arch}/`);
}

/** { session, provider: 'cuda' | 'cpu', reason } for the model at path (or bytes). */
export async function openSession(model, options = {}) {
  const want = (process.env.EXECUTION_PROVIDER ?? 'auto').toLowerCase();
  if (!['auto', 'cpu', 'cuda'].includes(want)) throw new Error(`EXECUTION_PROVIDER must be auto, cpu or cuda (got ${JSON.stringify(want)})`);
  const gpus = visibleGpus();
  let reason;
  if (want === 'cpu') reason = 'EXECUTION_PROVIDER=cpu';
  else if (!gpus) reason = 'no GPU given to this task (CUDA_VISIBLE_DEVICES is empty)';
  else if (!ort.listSupportedBackends().some((b) => b.name === 'cuda')) reason = `GPU ${gpus} visible, but this onnxruntime build has no CUDA provider`;
  else if (!existsSync(`${nativeDir()}libonnxruntime_providers_cuda.so`)) {
    reason = `GPU ${gpus} visible, but the bundle lacks libonnxruntime_providers_cuda.so (see the example's README: bundling the CUDA provider)`;
  } else {
    try {
      const session = await ort.InferenceSession.create(model, { ...options, executionProviders: ['cuda'] });
      return { session, provider: 'cuda', reason: `GPU ${gpus}` };
    } catch (err) {
      reason = `GPU ${gpus} visible, but the CUDA provider failed to start: ${err.message.split('\n')[0]}`;
    }
  }
  if (want === 'cuda') throw new Error(`EXECUTION_PROVIDER=cuda, but ${reason}`);
  const session = await ort.InferenceSession.create(model, { ...options, executionProviders: ['cpu'] });
  return { session, provider: 'cpu', reason };
}
