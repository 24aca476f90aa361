-- What the gateway prepares for itself, idempotently, at every start (`walcast serve`) and in
-- `walcast migrate`.
--
-- Document tables get REPLICA IDENTITY FULL so that UPDATE and DELETE records carry the old
-- row: the gateway needs the old account_id/owner_id to deliver deletes and to tell readers a
-- row moved out of their sight, and the old `data` when an UPDATE left it as unchanged TOAST.
-- Cost: every UPDATE/DELETE of a repo also writes the old row to the WAL (see OPERATIONS.md).
CREATE SCHEMA IF NOT EXISTS walcast;

-- What a document table ("repo") is (PROTOCOL.md §6). The gateway decides this in Rust
-- (src/event/repo.rs); this twin exists because the DDL event trigger below must decide inside
-- PostgreSQL, and a test runs both over the same cases. Change them together.
CREATE OR REPLACE FUNCTION walcast.is_repo_name(schema_name text, table_name text, columns text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT table_name NOT LIKE 'sb\_%'
       AND schema_name NOT IN ('pg_catalog', 'information_schema', 'sb', 'walcast', 'public')
       AND schema_name NOT LIKE 'pg\_%'
       AND columns @> ARRAY['id', 'account_id', 'owner_id', 'data']
$$;

-- A table (plain or partitioned) whose name and live columns make it a repo.
CREATE OR REPLACE FUNCTION walcast.is_repo(rel regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT c.relkind IN ('r', 'p')
       AND walcast.is_repo_name(
               n.nspname::text,
               c.relname::text,
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel
$$;

CREATE OR REPLACE FUNCTION walcast.prepare_repo(rel regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF walcast.is_repo(rel)
       AND (SELECT relreplident FROM pg_class WHERE oid = rel) <> 'f' THEN
        -- This ALTER fires the event trigger again; the relreplident check ends the recursion.
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
        RETURN true;
    END IF;
    RETURN false;
END
$$;

-- Every existing document table; returns how many were changed.
CREATE OR REPLACE FUNCTION walcast.prepare_repos() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
    changed integer := 0;
BEGIN
    FOR rel IN SELECT c.oid::regclass FROM pg_class c WHERE c.relkind IN ('r', 'p') LOOP
        IF walcast.prepare_repo(rel) THEN
            changed := changed + 1;
        END IF;
    END LOOP;
    RETURN changed;
END
$$;

-- Tables created (or given their columns) later, e.g. by StaticBackend on first insert, are
-- prepared inside the same transaction, before any row can be written to them.
CREATE OR REPLACE FUNCTION walcast.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    cmd record;
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands()
               WHERE object_type = 'table' AND command_tag IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO') LOOP
        PERFORM walcast.prepare_repo(cmd.objid::regclass);
    END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS walcast_prepare_repos;
CREATE EVENT TRIGGER walcast_prepare_repos ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION walcast.on_ddl();

SELECT walcast.prepare_repos();
