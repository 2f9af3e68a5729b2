/** Jobs: your jobs (newest first), re-read when leases are placed or end on the network, and the submit form. */
import { useEffect, useState } from 'preact/hooks';
import type { Api } from '../lib/api.ts';
import { ago } from '../lib/format.ts';
import type { JobSummary } from '../lib/types.ts';
import { SubmitForm } from './submit-form.tsx';

export function JobsPage({ api, go, version }: { api: Api; go: (hash: string) => void; version: unknown }) {
  const [jobs, setJobs] = useState<JobSummary[] | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [tick, setTick] = useState(0);
  useEffect(() => {
    api
      .json<{ jobs: JobSummary[] }>('GET', '/v1/jobs?limit=100')
      .then((r) => setJobs(r.jobs))
      .catch((err: Error) => setError(err.message));
  }, [api, tick, version]);
  return (
    <section aria-labelledby="jobs-title">
      <h2 id="jobs-title">Jobs</h2>
      <SubmitForm api={api} onSubmitted={(id) => go(`#/jobs/${id}`)} />
      <h3>
        Your jobs{' '}
        <button type="button" class="small" onClick={() => setTick((t) => t + 1)}>
          Refresh
        </button>
      </h3>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {jobs && jobs.length === 0 && <p>No jobs yet: submit a spec above, or with `gridwork job submit`.</p>}
      {jobs && jobs.length > 0 && (
        <div class="scroll">
          <table>
            <caption class="sr-only">Your jobs</caption>
            <thead>
              <tr>
                <th scope="col">Job</th>
                <th scope="col">State</th>
                <th scope="col">Tasks done</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {jobs.map((j) => (
                <tr key={j.id}>
                  <th scope="row">
                    <a href={`#/jobs/${j.id}`}>{j.name}</a> <small>{j.id}</small>
                  </th>
                  <td>
                    <span class={`badge ${j.state}`}>{j.state}</span>
                  </td>
                  <td>
                    <progress max={j.tasks} value={j.tasksDone} aria-label={`${j.tasksDone} of ${j.tasks} tasks done`} /> {j.tasksDone}/{j.tasks}
                  </td>
                  <td>{ago(j.createdAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
