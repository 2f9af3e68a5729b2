/** Submit a job: a spec file (JSON or YAML), its bundle's files and each input's files, all picked in the browser and uploaded as blobs. */
import { useState } from 'preact/hooks';
import type { Api } from '../lib/api.ts';
import { parseSpecText } from '../lib/spec.ts';
import { type PickedFile, pathOf, submitJob } from '../lib/submit.ts';

type SpecInput = { name: string; shard?: boolean };

/** Folder pickers (every current browser; not in the DOM typings). Paths inside the folder are kept. */
const FOLDER = { webkitdirectory: true } as Record<string, unknown>;

function picked(list: FileList | null): PickedFile[] {
  return Array.from(list ?? [], (file) => ({ path: pathOf(file), file }));
}

export function SubmitForm({ api, onSubmitted }: { api: Api; onSubmitted: (jobId: string) => void }) {
  const [spec, setSpec] = useState<Record<string, unknown> | undefined>();
  const [specError, setSpecError] = useState<string | undefined>();
  const [bundle, setBundle] = useState<PickedFile[]>([]);
  const [inputs, setInputs] = useState<Record<string, PickedFile[]>>({});
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const declared = (spec?.inputs as SpecInput[] | undefined) ?? [];

  const readSpec = async (list: FileList | null) => {
    setSpecError(undefined);
    setSpec(undefined);
    const file = list?.[0];
    if (!file) return;
    try {
      setSpec(parseSpecText(await file.text()));
    } catch (err) {
      setSpecError(`${file.name}: ${(err as Error).message}`);
    }
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!spec) return setError('pick a spec file first');
    setBusy(true);
    setError(undefined);
    try {
      const job = await submitJob(
        api,
        spec,
        bundle,
        declared.map((i) => ({ name: i.name, shard: i.shard ?? false, files: inputs[i.name] ?? [] })),
      );
      onSubmitted(job.id);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form onSubmit={submit} aria-labelledby="submit-title" class="panel">
      <h3 id="submit-title">Submit a job</h3>
      <label for="spec-file">Spec file (JSON or YAML)</label>
      <input id="spec-file" type="file" accept=".json,.yaml,.yml,application/json" onChange={(e) => void readSpec(e.currentTarget.files)} />
      {specError && (
        <p role="alert" class="error">
          {specError}
        </p>
      )}
      {spec && (
        <p>
          <strong>{String(spec.name ?? 'unnamed')}</strong> ({String(spec.kind ?? '?')}), runtime {String((spec.runtime as { kind?: string })?.kind ?? '?')}
        </p>
      )}
      <label for="bundle-files">Bundle files (the folder named by runtime.path)</label>
      <input id="bundle-files" type="file" multiple onChange={(e) => setBundle(picked(e.currentTarget.files))} />
      <label for="bundle-folder">Or the whole bundle folder, with its subfolders</label>
      <input id="bundle-folder" type="file" {...FOLDER} onChange={(e) => setBundle(picked(e.currentTarget.files))} />
      <small>{bundle.length > 0 ? bundle.map((f) => f.path).join(', ') : 'No files picked'}</small>
      {declared.map((input) => (
        <div key={input.name}>
          <label for={`input-${input.name}`}>
            Files of input “{input.name}”{input.shard ? ' (sharded)' : ''}
          </label>
          <input
            id={`input-${input.name}`}
            type="file"
            multiple
            onChange={(e) => {
              const files = picked(e.currentTarget.files);
              setInputs((m) => ({ ...m, [input.name]: files }));
            }}
          />
        </div>
      ))}
      <button type="submit" disabled={busy || !spec}>
        {busy ? 'Uploading and submitting…' : 'Submit'}
      </button>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
    </form>
  );
}
