/**
 * Schema migrations, in code so they ship with the package. One SQL dialect (PostgreSQL)
 * serves PGlite and PostgreSQL alike. Never edit a released migration: add one.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';

/** Prepared statements take one command each (PGlite enforces it): run them one by one. */
async function runStatements(db: Kysely<unknown>, script: string): Promise<void> {
  for (const statement of script
    .split(/;\s*\n/)
    .map((s) => s.trim())
    .filter(Boolean)) {
    await sql.raw(statement).execute(db);
  }
}

const migrations: Record<string, Migration> = {
  '0001_foundation': {
    async up(db: Kysely<unknown>) {
      await runStatements(
        db,
        `
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
      `,
      );
    },
  },
};

migrations['0002_market_and_money'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table ledger_transactions (
        id bigserial primary key,
        kind text not null,
        idempotency_key text not null unique,
        request_digest text,
        memo jsonb not null,
        created_at timestamptz not null default now()
      );
      create table ledger_postings (
        id bigserial primary key,
        tx_id bigint not null references ledger_transactions (id),
        account text not null,
        amount bigint not null check (amount <> 0)
      );
      create index ledger_postings_account on ledger_postings (account, id);
      create index ledger_postings_tx on ledger_postings (tx_id);
      create table ledger_balances (
        account text primary key,
        balance bigint not null,
        check (balance >= 0 or account like 'ext:%')
      );
      create table stake_unbondings (
        id bigserial primary key,
        account_id text not null references accounts (id),
        amount bigint not null check (amount > 0),
        release_at timestamptz not null,
        released_at timestamptz
      );
      create index stake_unbondings_due on stake_unbondings (release_at) where released_at is null;
      alter table jobs add column budget bigint not null default 0;
      alter table jobs add column max_per_hour bigint not null default 0;
      alter table jobs add column low_balance_since timestamptz;
      alter table leases add column price_per_hour bigint not null default 0;
      alter table leases add column usage_ms bigint not null default 0;
      alter table leases add column charged bigint not null default 0;
      alter table leases add column gpus jsonb not null default '[]';
      alter table providers add column asks jsonb;
      alter table providers add column benchmarks jsonb;
      alter table providers add column bids boolean not null default false;
      alter table providers add column leases_completed integer not null default 0;
      alter table providers add column leases_faulted integer not null default 0
    `,
    );
  },
};

migrations['0003_lifecycle_events_capacity'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table events (
        position bigint primary key,
        type text not null,
        job_id text,
        provider_id text,
        data jsonb not null,
        at timestamptz not null default now()
      );
      create index events_job on events (job_id, position) where job_id is not null;
      create table event_head (
        id integer primary key check (id = 1),
        position bigint not null
      );
      insert into event_head (id, position) values (1, 0);
      create table bus_positions (
        subscriber text primary key,
        position bigint not null
      );
      create table provider_capacity (
        provider_id text primary key references providers (id),
        slots integer not null,
        cpu_milli bigint not null,
        mem_milli bigint not null,
        used_slots integer not null default 0 check (used_slots >= 0),
        used_cpu_milli bigint not null default 0 check (used_cpu_milli >= 0),
        used_mem_milli bigint not null default 0 check (used_mem_milli >= 0)
      );
      create table lease_gpus (
        provider_id text not null references providers (id),
        gpu integer not null,
        lease_id text not null references leases (id),
        primary key (provider_id, gpu)
      );
      create table blob_owners (
        digest text not null references blobs (digest),
        account_id text not null,
        uploaded_at timestamptz not null,
        primary key (digest, account_id)
      );
      alter table jobs add column idempotency_key text;
      alter table jobs add column request_digest text;
      create unique index jobs_idempotency on jobs (owner, idempotency_key) where idempotency_key is not null;
      alter table leases add column cpu_milli bigint not null default 0;
      alter table leases add column mem_milli bigint not null default 0
    `,
    );
  },
};

migrations['0004_trust_capacity_commitments'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table capacity_challenges (
        id text primary key,
        provider_id text not null references providers (id),
        seed text not null,
        open_seed text not null,
        n integer not null,
        memory_blocks integer not null,
        rows_to_open integer not null,
        blocks_to_open integer not null,
        state text not null,
        issued_at timestamptz not null,
        deadline_at timestamptz not null,
        matrix_root text,
        memory_root text,
        committed_at timestamptz,
        open_deadline_at timestamptz,
        ended_at timestamptz,
        reason text,
        busy_ms bigint
      );
      create index capacity_challenges_provider on capacity_challenges (provider_id, issued_at);
      create index capacity_challenges_open on capacity_challenges (state) where state in ('issued', 'committed');
      alter table providers add column challenges_passed integer not null default 0;
      alter table providers add column challenges_failed integer not null default 0;
      alter table providers add column challenge_fail_streak integer not null default 0;
      alter table providers add column challenge_busy_ms bigint not null default 0;
      alter table providers add column faults_proven integer not null default 0;
      alter table leases add column audit_seed text;
      alter table leases add column audit_commitment text;
      alter table leases add column outputs_root text;
      alter table leases add column commitment_signature text;
      alter table leases add column fault text
    `,
    );
  },
};

migrations['0005_trust_verification'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      insert into accounts (id) values ('protocol') on conflict do nothing;
      alter table jobs add column purpose text not null default 'work' check (purpose in ('work', 'audit', 'canary', 'referee', 'dispute'));
      alter table jobs add column exclude_providers jsonb not null default '[]';
      alter table jobs add column only_provider text;
      alter table leases add column verification text check (verification in ('pending', 'verified', 'disputed', 'failed'));
      alter table leases add column settle_at timestamptz;
      create index leases_unsettled on leases (settle_at) where settle_at is not null;
      create table verifications (
        id text primary key,
        kind text not null check (kind in ('audit', 'canary', 'referee', 'dispute')),
        state text not null check (state in ('open', 'passed', 'failed', 'abandoned')),
        lease_id text not null references leases (id),
        provider_id text not null references providers (id),
        check_job_id text references jobs (id),
        expected_digest text,
        opened_by text,
        bond bigint not null default 0,
        parent_id text references verifications (id),
        outcome text,
        detail text,
        created_at timestamptz not null default now(),
        ended_at timestamptz
      );
      create index verifications_lease on verifications (lease_id);
      create index verifications_check_job on verifications (check_job_id);
      create index verifications_provider on verifications (provider_id, created_at);
      alter table providers add column audits_passed integer not null default 0;
      alter table providers add column audits_failed integer not null default 0;
      alter table providers add column audit_streak integer not null default 0;
      alter table providers add column last_audit_passed_at timestamptz;
      alter table providers add column stake_slashed bigint not null default 0
    `,
    );
  },
};

migrations['0006_checkpoints'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table checkpoints (
        lease_id text not null references leases (id),
        task_id text not null references tasks (id),
        step integer not null,
        path text not null,
        digest text not null references blobs (digest),
        size bigint not null,
        usage_ms bigint not null,
        signature text not null,
        created_at timestamptz not null default now(),
        primary key (lease_id, step)
      );
      create index checkpoints_task on checkpoints (task_id, step);
      create index leases_provider_completed on leases (provider_id, ended_at) where state = 'completed';
      create index tasks_provider on tasks (provider_id);
      alter table verifications add column segment_from integer;
      alter table verifications add column segment_to integer
    `,
    );
  },
};

migrations['0007_services'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      alter table providers add column ingress_url text;
      alter table leases add column service_token text;
      alter table leases add column service_health text check (service_health in ('healthy', 'unhealthy'))
    `,
    );
  },
};

migrations['0008_clusters'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table cluster_exchange (
        job_id text not null references jobs (id),
        round integer not null,
        rank integer not null,
        lease_id text not null references leases (id),
        digest text not null references blobs (digest),
        size bigint not null,
        created_at timestamptz not null default now(),
        primary key (job_id, round, rank)
      );
      create table cluster_deliveries (
        lease_id text not null references leases (id),
        round integer not null,
        primary key (lease_id, round)
      )
    `,
    );
  },
};

migrations['0009_lease_lookups'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create index leases_job on leases (job_id);
      create index leases_lost_task on leases (task_id) where state = 'lost';
      create index verifications_open on verifications (created_at) where state = 'open';
      create index verifications_parent on verifications (parent_id) where parent_id is not null
    `,
    );
  },
};

// Registrations that never proved anything and went away are marked rather than deleted: other
// tables (leases, challenges, capacity) may reference them. The partial index serves the sweep.
migrations['0010_provider_expiry'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      alter table providers add column expired_at timestamptz;
      create index providers_expirable on providers (last_seen_at) where state = 'offline' and expired_at is null
    `,
    );
  },
};

// 0009 was edited after it was committed (two verification indexes added to it): a database
// migrated before that edit recorded 0009 as done without them. `if not exists` makes this a
// no-op where the edited 0009 already made them.
migrations['0011_repair_verification_indexes'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create index if not exists verifications_open on verifications (created_at) where state = 'open';
      create index if not exists verifications_parent on verifications (parent_id) where parent_id is not null
    `,
    );
  },
};

// Retention (lifecycle/retention.ts): ended jobs are walked in the order they ended, from a
// persisted mark, and events of no job are found by age; each index is partial, so live jobs and
// a job's own events cost it nothing. A job's events and logs are found through events_job and
// task_logs_job (0003, 0001).
migrations['0012_retention'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create index jobs_ended on jobs (updated_at, id) where state in ('succeeded', 'failed', 'cancelled');
      create index events_jobless_at on events (at) where job_id is null;
      create table retention_marks (
        name text primary key,
        ended_at timestamptz not null,
        job_id text not null
      )
    `,
    );
  },
};

// The coordinator caps what it stores of a lease's log itself (lifecycle appendLogs): an honest
// agent caps its output, a modified one need not.
migrations['0013_lease_log_bytes'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(db, 'alter table leases add column log_bytes bigint not null default 0');
  },
};

// Replicas choose one leader (leader/leadership.ts): each new term of office gets the next epoch.
migrations['0014_coordinator_leader'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      create table coordinator_leader (
        id integer primary key check (id = 1),
        epoch bigint not null,
        holder text not null,
        since timestamptz not null
      )
    `,
    );
  },
};

// Event positions from a sequence instead of the `event_head` row, which every commit carrying
// events held from its append to its commit (core/event-log.ts says how readers stay gap-safe:
// every append holds a lock on `event_log` from before it takes a position until it ends).
//
// Rolling upgrade, in two steps. The previous release's readers assume positions commit in order:
// they would skip an event committed late. So a schema migrated from an earlier version stays
// `ordered` (positions under the `event_head` row lock, as before) until every replica reads the
// log the new way; then `update event_log set ordered = false` (README, "Rolling upgrades"). A
// schema created by this run starts unordered, and so does PGlite (one process: server.ts). Meanwhile a previous-release replica still
// appends by moving `event_head`: the trigger gives it its block of positions from the same
// sequence, under a SHARE lock on `event_log`, which waits for the unordered appends in flight
// (ROW EXCLUSIVE) and holds off new ones, so the block is contiguous. The sequence keeps
// `cache 1`: positions are given out in the order `nextval` is called, across sessions.
migrations['0015_event_positions'] = {
  async up(db: Kysely<unknown>) {
    for (const statement of [
      // A previous-release append between reading the head and creating the trigger would move
      // the head past the sequence: hold them off until this migration commits.
      'lock table event_head in exclusive mode',
      'create sequence event_positions as bigint cache 1',
      `select setval('event_positions', (select position from event_head where id = 1) + 1, false)`,
      'create table event_log (id integer primary key check (id = 1), ordered boolean not null)',
      // Ordered when the schema was there before this run of the migrations (a replica of the
      // previous release may be running on it, events or not): its migration rows were written
      // by an earlier transaction than this one.
      `insert into event_log (id, ordered) select 1, position > 0 or exists (select 1 from kysely_migration where xmin <> pg_current_xact_id()::xid)
        from event_head where id = 1`,
      `create function event_head_block() returns trigger language plpgsql as $$
      declare
        n bigint := new.position - old.position;
        first bigint;
      begin
        if n < 1 then return new; end if;
        lock table event_log in share mode;
        first := nextval('event_positions');
        if n > 1 then perform setval('event_positions', first + n - 1); end if;
        new.position := first + n - 1;
        return new;
      end $$`,
      'create trigger event_head_block before update on event_head for each row execute function event_head_block()',
      `create function next_event_positions(n integer) returns setof bigint language plpgsql as $$
      declare
        last bigint;
      begin
        if (select ordered from event_log where id = 1) then
          update event_head set position = position + n where id = 1 returning position into last;
          return query select generate_series(last - n + 1, last);
        else
          lock table event_log in row exclusive mode;
          return query select nextval('event_positions') from generate_series(1, n);
        end if;
      end $$`,
    ]) {
      await sql.raw(statement).execute(db);
    }
  },
};

// What each capacity challenge was sized for (verify/challenge-sizing.ts `provesMops`): the CPU
// claim it proves when it passes. The market counts a provider's claimed benchmark only up to the
// latest passed challenge's (market.ts `provenBenchmarks`). Challenges from before this column
// hold null: sized for a claim nobody recorded, they prove nothing, and a provider is proven
// again by the challenge its next hello brings. The partial index finds the latest pass.
migrations['0016_challenge_claims'] = {
  async up(db: Kysely<unknown>) {
    await runStatements(
      db,
      `
      alter table capacity_challenges add column claimed_mops double precision;
      create index capacity_challenges_passed on capacity_challenges (provider_id, ended_at) where state = 'passed'
    `,
    );
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

/** Every migration's name, oldest first: the schema versions a database can be at. */
export const MIGRATION_NAMES: readonly string[] = Object.keys(migrations).sort();

/** Migrates up (or down) to exactly `name`: for tests that build a database as an older version left it. */
export async function migrateTo(db: Kysely<unknown>, name: string, schema?: string): Promise<void> {
  const { error } = await new Migrator({ db, provider, ...(schema ? { migrationTableSchema: schema } : {}) }).migrateTo(name);
  if (error) throw error;
}

/**
 * `schema` must name the schema the connection's search_path points at: without it Kysely
 * looks for its bookkeeping tables in every schema, so a database where another schema
 * already holds them (tests sharing one PostgreSQL) skips creating ours and then fails.
 */
export async function migrateToLatest(db: Kysely<unknown>, schema?: string, attempts = 3): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const { error, results } = await new Migrator({ db, provider, ...(schema ? { migrationTableSchema: schema } : {}) }).migrateToLatest();
    const failed = results?.find((r) => r.status === 'Error');
    if (!error && !failed) return;
    // Migrations run in one transaction, so a failed attempt left nothing behind. On a shared
    // PostgreSQL, catalog updates of other sessions can make one fail now and then ("tuple
    // concurrently updated"): try again before giving up, and say why when giving up.
    if (attempt < attempts) {
      await new Promise((r) => setTimeout(r, 100 * attempt));
      continue;
    }
    const why = error instanceof Error ? `: ${error.message}` : '';
    throw new Error(`database migration failed${failed ? ` at ${failed.migrationName}` : ''}${why}`, { cause: error });
  }
}
