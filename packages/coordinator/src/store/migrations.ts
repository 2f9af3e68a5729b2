/**
 * Schema migrations, in code so they ship with the package. One SQL dialect (PostgreSQL)
 * serves PGlite and PostgreSQL alike. Never edit a released migration: add one.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';

/** Prepared statements take one command each (PGlite enforces it): run them one by one. */
async function runStatements(db: Kysely<unknown>, script: string): Promise<void> {
  for (const statement of script.split(/;\s*\n/).map((s) => s.trim()).filter(Boolean)) {
    await sql.raw(statement).execute(db);
  }
}

const migrations: Record<string, Migration> = {
  '0001_foundation': {
    async up(db: Kysely<unknown>) {
      await runStatements(db, `
        create table accounts (
          id text primary key,
          created_at timestamptz not null default now()
        );
        create table request_nonces (
          account_id text not null,
          nonce text not null,
          seen_at timestamptz not null,
          primary key (account_id, nonce)
        );
        create index request_nonces_seen on request_nonces (seen_at);
        create table providers (
          id text primary key references accounts (id),
          name text not null,
          state text not null check (state in ('online', 'draining', 'offline')),
          runtime text not null,
          slots integer not null check (slots > 0),
          hardware jsonb not null,
          attributes jsonb not null,
          instance text not null,
          last_seen_at timestamptz not null,
          in_seq bigint not null default 0,
          out_seq bigint not null default 0,
          created_at timestamptz not null default now()
        );
        create table provider_outbox (
          provider_id text not null references providers (id),
          seq bigint not null,
          message jsonb not null,
          primary key (provider_id, seq)
        );
        create table blobs (
          digest text primary key,
          size bigint not null,
          created_at timestamptz not null default now()
        );
        create table jobs (
          id text primary key,
          owner text not null references accounts (id),
          name text not null,
          kind text not null,
          state text not null,
          spec jsonb not null,
          bundle_manifest text,
          error text,
          created_at timestamptz not null,
          updated_at timestamptz not null
        );
        create index jobs_owner on jobs (owner, created_at desc);
        create table job_blobs (
          job_id text not null references jobs (id),
          digest text not null references blobs (digest),
          role text not null,
          primary key (job_id, digest)
        );
        create table tasks (
          id text primary key,
          job_id text not null references jobs (id),
          idx integer not null,
          state text not null,
          attempts integer not null default 0,
          inputs jsonb not null,
          lease_id text,
          provider_id text,
          exit_code integer,
          duration_ms integer,
          error text,
          outputs jsonb not null default '[]',
          output_digest text,
          started_at timestamptz,
          finished_at timestamptz,
          queued_at timestamptz not null,
          unique (job_id, idx)
        );
        create index tasks_queued on tasks (queued_at) where state = 'queued';
        create table leases (
          id text primary key,
          task_id text not null references tasks (id),
          job_id text not null references jobs (id),
          provider_id text not null references providers (id),
          state text not null,
          created_at timestamptz not null,
          started_at timestamptz,
          ended_at timestamptz,
          exit_code integer,
          error text
        );
        create index leases_active on leases (provider_id) where state in ('offered', 'starting', 'running');
        create table task_logs (
          id bigserial primary key,
          job_id text not null references jobs (id),
          task_idx integer not null,
          lease_id text not null,
          stream text not null,
          data text not null,
          ts timestamptz not null
        );
        create index task_logs_job on task_logs (job_id, id);
      `);
    },
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

export async function migrateToLatest(db: Kysely<unknown>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider }).migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error || failed) {
    throw new Error(`database migration failed${failed ? ` at ${failed.migrationName}` : ''}`, { cause: error });
  }
}
