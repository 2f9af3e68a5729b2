/**
 * Kysely's introspector as the coordinator needs it: the tables of the schemas on the
 * connection's search_path, nothing else.
 *
 * Why: Kysely's Migrator asks the introspector whether its bookkeeping tables exist, and
 * Kysely's own PostgreSQL introspector reads every column of every table in every schema and
 * resolves each schema by name (`has_schema_privilege(nspname, ...)`,
 * `pg_get_serial_sequence(...)`). On a PostgreSQL shared with others, a schema dropped while that
 * query runs makes it fail with `schema "..." does not exist` (CI saw it: one test's migration
 * failed while another test dropped its schemas), and the query grows with every other schema in
 * the database. This one reads the catalog by oid, for the search_path's schemas only.
 */
import { type DatabaseIntrospector, type DatabaseMetadata, type Kysely, type SchemaMetadata, sql, type TableMetadata } from 'kysely';

export class SearchPathIntrospector implements DatabaseIntrospector {
  constructor(private readonly db: Kysely<unknown>) {}

  async getSchemas(): Promise<SchemaMetadata[]> {
    const { rows } = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace`.execute(this.db);
    return rows;
  }

  /** Tables and views of the search_path's schemas, without their columns (nothing here reads them). */
  async getTables(): Promise<TableMetadata[]> {
    const { rows } = await sql<{ name: string; schema: string; is_view: boolean }>`
      select c.relname as name, n.nspname as schema, c.relkind = 'v' as is_view
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname = any (current_schemas(false)) and c.relkind in ('r', 'v', 'p')
      order by n.nspname, c.relname`.execute(this.db);
    return rows.map((r) => ({ name: r.name, schema: r.schema, isView: r.is_view, columns: [] }));
  }

  async getMetadata(): Promise<DatabaseMetadata> {
    return { tables: await this.getTables() };
  }
}
