// Entry of a benchmark worker thread: workers do not inherit `--import tsx`'s loader on Node 20,
// so register it here, then load the TypeScript module named in workerData.entry.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
