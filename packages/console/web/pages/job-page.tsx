/**
 * One job, live: its state and money from /v1/jobs/:id/events, tasks by state with provider,
 * duration and cost, logs following /v1/jobs/:id/logs?follow=true, outputs to download, and
 * cancel and top-up buttons.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Api } from '../lib/api.ts';
import { duration } from '../lib/format.ts';
import { useLive } from '../lib/live.ts';
import type { JobView, LogEntry } from '../lib/types.ts';

const TERMINAL = ['succeeded', 'failed', 'cancelled'];

function Logs({ api, jobId }: { api: Api; jobId: string }) {
  const [lines, setLines] = useState<LogEntry[]>([]);
  const box = useRef<HTMLPreElement>(null);
  useLive<LogEntry>(api, `/v1/jobs/${jobId}/logs?follow=true`, { onItem: (e) => setLines((l) => [...l.slice(-1999), e]) });
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines]);
  return (
    // biome-ignore lint/a11y/noNoninteractiveTabindex: scrollable log, focusable so the keyboard can scroll it
    <pre ref={box} class="logs" data-testid="logs" role="log" tabIndex={0} aria-label="Task logs">
      {lines.length === 0
        ? 'No log lines yet.'
        : lines
            .flatMap((l) =>
              l.data
                .replace(/\n$/, '')
                .split('\n')
                .map((text) => `[task ${l.taskIndex}${l.stream === 'stdout' ? '' : ` ${l.stream}`}] ${text}\n`),
            )
            .join('')}
    </pre>
  );
}

export function JobPage({ api, jobId }: { api: Api; jobId: string }) {
  const live = useLive<{ type: 'job'; job: JobView }>(api, `/v1/jobs/${jobId}/events`);
  const [message, setMessage] = useState<string | undefined>();
  const [amount, setAmount] = useState('1');
  const job = live.value?.job;

  const act = async (what: () => Promise<unknown>, done: string) => {
    setMessage(undefined);
    try {
      await what();
      setMessage(done);
    } catch (err) {
      setMessage(`Refused: ${(err as Error).message}`);
    }
  };

  const download = async (digest: string, path: string) => {
    const blob = await api.download(`/v1/jobs/${jobId}/blobs/${digest}`);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = path.split('/').pop() ?? 'output';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  };

  if (!job) return <p aria-live="polite">{live.error ? `Cannot read job ${jobId}: ${live.error}` : `Loading ${jobId}…`}</p>;
  const byState = new Map<string, number>();
  for (const t of job.tasks) byState.set(t.state, (byState.get(t.state) ?? 0) + 1);
  const done = job.tasks.filter((t) => TERMINAL.includes(t.state)).length;
  const ended = TERMINAL.includes(job.state);
  return (
    <section aria-labelledby="job-title">
      <p>
        <a href="#/jobs">← All jobs</a>
      </p>
      <h2 id="job-title">
        {job.name} <small>{job.id}</small>
      </h2>
      <p aria-live="polite">
        State:{' '}
        <span class={`badge ${job.state}`} data-testid="job-state">
          {job.state}
        </span>{' '}
        {job.error && <span class="error">{job.error}</span>}
      </p>
      <p>
        <progress max={job.tasks.length} value={done} aria-label="Tasks finished" /> {done}/{job.tasks.length} tasks finished —{' '}
        {[...byState].map(([s, n]) => `${n} ${s}`).join(', ')}
      </p>
      <ul class="cards" aria-label="Money of this job">
        <li class="card">
          <span class="big">{job.money.budget}</span> budget
        </li>
        <li class="card">
          <span class="big" data-testid="job-spent">
            {job.money.spent}
          </span>{' '}
          spent
        </li>
        <li class="card">
          <span class="big">{job.money.held}</span> held
        </li>
        <li class="card">
          <span class="big">{job.money.maxPerHour}</span> max / task-hour
        </li>
      </ul>
      {job.money.lowBalanceSince && <p class="error">Budget too low since {job.money.lowBalanceSince}: top it up or its leases stop.</p>}
      {!ended && (
        <div class="actions">
          <button type="button" class="danger" onClick={() => void act(() => api.json('POST', `/v1/jobs/${job.id}/cancel`), 'Cancel requested.')}>
            Cancel job
          </button>
          <form
            class="inline"
            onSubmit={(e) => {
              e.preventDefault();
              void act(
                () => api.json('POST', `/v1/jobs/${job.id}/budget`, { amount, idempotencyKey: `console-${crypto.randomUUID()}` }),
                `Added ${amount} credits to the budget.`,
              );
            }}
          >
            <label for="topup">Top up (credits)</label>
            <input id="topup" inputMode="decimal" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} size={8} />
            <button type="submit">Top up</button>
          </form>
        </div>
      )}
      {message && <p role="status">{message}</p>}
      <h3>Tasks</h3>
      <div class="scroll">
        <table>
          <caption class="sr-only">Tasks of this job</caption>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">State</th>
              <th scope="col">Provider</th>
              <th scope="col">Attempts</th>
              <th scope="col">Duration</th>
              <th scope="col">Price / h</th>
              <th scope="col">Cost</th>
              <th scope="col">Outputs</th>
            </tr>
          </thead>
          <tbody>
            {job.tasks.map((t) => (
              <tr key={t.id} data-testid="task-row">
                <th scope="row">{t.index}</th>
                <td>
                  <span class={`badge ${t.state}`}>{t.state}</span>
                  {t.error && <small class="error"> {t.error}</small>}
                </td>
                <td>{t.providerName ?? '—'}</td>
                <td>{t.attempts}</td>
                <td>{duration(t.durationMs)}</td>
                <td>{t.pricePerHour ?? '—'}</td>
                <td>{t.cost}</td>
                <td>
                  {t.outputs.map((o) => (
                    <button
                      key={o.digest}
                      type="button"
                      class="link"
                      onClick={() => void download(o.digest, o.path)}
                      aria-label={`Download ${o.path} of task ${t.index}`}
                    >
                      {o.path}
                    </button>
                  ))}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <h3>Logs</h3>
      <Logs api={api} jobId={job.id} />
    </section>
  );
}
