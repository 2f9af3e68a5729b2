/**
 * Sign-in without a password: make a key in this browser or import the CLI's key file. The
 * private key stays in this browser's localStorage; requests carry only signatures.
 */
import { useState } from 'preact/hooks';
import { generateIdentity, type Identity, parseIdentity } from '../lib/identity.ts';

export function KeyPage({ identity, setIdentity }: { identity: Identity | undefined; setIdentity: (id: Identity | undefined) => void }) {
  const [error, setError] = useState<string | undefined>();
  const [pasted, setPasted] = useState('');
  const use = (text: string) => {
    setError(undefined);
    try {
      setIdentity(parseIdentity(text));
      setPasted('');
    } catch (err) {
      setError((err as Error).message);
    }
  };
  const exportKey = () => {
    if (!identity) return;
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([`${JSON.stringify(identity, null, 2)}\n`], { type: 'application/json' }));
    a.download = 'gridwork-key.json';
    a.click();
  };
  return (
    <section aria-labelledby="key-title">
      <h2 id="key-title">Your key</h2>
      <p>
        Gridwork accounts are Ed25519 keys: no password, no e-mail. The console signs each request with the key held in this browser; the private key never
        leaves it. The network and market pages work without one.
      </p>
      {identity ? (
        <div class="panel">
          <p>
            Signed in as <code data-testid="account-id">{identity.publicKey}</code>
          </p>
          <div class="actions">
            <button type="button" onClick={exportKey}>
              Save key file
            </button>
            <button
              type="button"
              class="danger"
              onClick={() => {
                if (confirm('Forget this key in this browser? Without a saved key file, its account cannot be reached again.')) setIdentity(undefined);
              }}
            >
              Sign out (forget key)
            </button>
          </div>
        </div>
      ) : (
        <div class="panel">
          <button type="button" onClick={() => setIdentity(generateIdentity())}>
            Create a new key in this browser
          </button>
          <label for="key-file">Or import the CLI's key file (e.g. ~/.gridwork/key.json)</label>
          <input
            id="key-file"
            type="file"
            accept=".json,application/json"
            onChange={async (e) => {
              const f = e.currentTarget.files?.[0];
              if (f) use(await f.text());
            }}
          />
          <label for="key-json">Or paste its JSON</label>
          <textarea id="key-json" rows={4} value={pasted} onInput={(e) => setPasted(e.currentTarget.value)} spellcheck={false} autocomplete="off" />
          <button type="button" onClick={() => use(pasted)} disabled={!pasted.trim()}>
            Use pasted key
          </button>
        </div>
      )}
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
    </section>
  );
}
