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
    INSERT INTO sb.apps (name) VALUES (app_name) ON CONFLICT (name) DO NOTHING;
    SELECT id INTO app_id FROM sb.apps WHERE name = app_name;
    RETURN app_id;
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
