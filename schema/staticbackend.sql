-- StaticBackend-compatible storage layout (PROTOCOL.md §6), applied by `walcast migrate` and
-- `walcast up`. Idempotent: every statement can run again on a database that has it already,
-- including one laid out by StaticBackend itself.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE SCHEMA IF NOT EXISTS sb;

CREATE TABLE IF NOT EXISTS sb.apps (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    name text UNIQUE NOT NULL,
    created timestamp NOT NULL DEFAULT now()
);

-- Creates an app's schema with its accounts and users tables, as StaticBackend does when a
-- tenant is created. Returns the app id (its public key, `sbpk`).
CREATE OR REPLACE FUNCTION sb.walcast_create_app(app_name text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    app_id uuid;
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', app_name);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.sb_accounts (
            id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
            email text UNIQUE NOT NULL,
            created timestamp NOT NULL DEFAULT now()
        )$f$, app_name);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.sb_tokens (
            id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
            account_id uuid REFERENCES %I.sb_accounts(id) ON DELETE CASCADE,
            token text UNIQUE NOT NULL,
            email text UNIQUE NOT NULL,
            password text NOT NULL,
            role integer NOT NULL,
            reset_code text NOT NULL,
            created timestamp NOT NULL DEFAULT now()
        )$f$, app_name, app_name);
    SELECT id INTO app_id FROM sb.apps WHERE name = app_name;
    IF app_id IS NULL THEN
        EXECUTE sb.walcast_app_insert() USING app_name;
        SELECT id INTO app_id FROM sb.apps WHERE name = app_name;
    END IF;
    RETURN app_id;
END
$$;

-- The INSERT of a new `sb.apps` row ($1 = name) for the table as it is: a database StaticBackend
-- laid out itself has more NOT NULL columns without defaults (is_active, monthly_email_sent,
-- created…). Each gets a neutral value of its type; an app created here is active.
CREATE OR REPLACE FUNCTION sb.walcast_app_insert() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cols text := 'name';
    vals text := '$1';
    col record;
BEGIN
    FOR col IN
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, t.typcategory
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = 'sb.apps'::regclass AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
           AND a.attname NOT IN ('id', 'name')
         ORDER BY a.attnum
    LOOP
        cols := cols || ', ' || quote_ident(col.attname);
        vals := vals || ', ' || CASE
            WHEN col.typcategory = 'B' THEN 'true'
            WHEN col.typcategory = 'N' THEN '0'
            WHEN col.typcategory = 'D' THEN 'now()'
            WHEN col.typcategory = 'A' THEN quote_literal('{}') || '::' || col.type
            WHEN col.type = 'uuid' THEN 'uuid_generate_v4()'
            WHEN col.type IN ('json', 'jsonb') THEN quote_literal('{}') || '::' || col.type
            ELSE quote_literal('') || '::' || col.type
        END;
    END LOOP;
    RETURN format('INSERT INTO sb.apps (%s) VALUES (%s) ON CONFLICT (name) DO NOTHING', cols, vals);
END
$$;

-- Creates a document table ("repo") the way StaticBackend does on first insert.
CREATE OR REPLACE FUNCTION sb.walcast_create_repo(app_name text, repo text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.%I (
            id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
            account_id uuid REFERENCES %I.sb_accounts(id) ON DELETE CASCADE,
            owner_id uuid REFERENCES %I.sb_tokens(id) ON DELETE CASCADE,
            data jsonb NOT NULL,
            created timestamp NOT NULL DEFAULT now()
        )$f$, app_name, repo, app_name, app_name);
END
$$;
