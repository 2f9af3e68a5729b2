/**
 * Live data from the coordinator's NDJSON streams: follows a stream, reconnects with backoff
 * when it drops (not when it ends by itself, unless asked), and stops on unmount. A stream of
 * deltas passes `reduce` to fold each item into the value.
 */
import { useEffect, useState } from 'preact/hooks';
import type { Api } from './api.ts';

export interface LiveState<T> {
  value: T | undefined;
  error: string | undefined;
  connected: boolean;
}

export function useLive<T, Item = T>(
  api: Api,
  path: string | undefined,
  options: { reconnectOnEnd?: boolean; onItem?: (item: Item) => void; reduce?: (value: T | undefined, item: Item) => T | undefined } = {},
): LiveState<T> {
  const [state, setState] = useState<LiveState<T>>({ value: undefined, error: undefined, connected: false });
  useEffect(() => {
    if (!path) return;
    const ac = new AbortController();
    void (async () => {
      let delay = 500;
      while (!ac.signal.aborted) {
        try {
          for await (const item of api.ndjson<Item>(path, ac.signal)) {
            delay = 500;
            options.onItem?.(item);
            const { reduce } = options;
            setState((s) => ({ value: reduce ? reduce(s.value, item) : (item as unknown as T), error: undefined, connected: true }));
          }
          setState((s) => ({ ...s, connected: false }));
          if (!options.reconnectOnEnd) return;
        } catch (err) {
          if (ac.signal.aborted) return;
          setState((s) => ({ ...s, error: (err as Error).message, connected: false }));
          if ((err as { status?: number }).status && (err as { status: number }).status < 500) return;
        }
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 10_000);
      }
    })();
    return () => ac.abort();
    // One stream per api and path: onItem may change identity on every render.
  }, [api, path]);
  return state;
}
