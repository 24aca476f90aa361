-- The demo app of `walcast up`: accounts A and B, users Alice and Bob in A, Carol in B, and a
-- `tasks_760_` repo (account-level read). Fixed ids so that tokens stay valid across restarts.
SELECT sb.walcast_create_app('demo');

INSERT INTO demo.sb_accounts (id, email, created) VALUES
    ('a0000000-0000-4000-8000-00000000000a', 'account-a@demo.test', now()),
    ('b0000000-0000-4000-8000-00000000000b', 'account-b@demo.test', now())
ON CONFLICT (id) DO NOTHING;

INSERT INTO demo.sb_tokens (id, account_id, token, email, password, role, reset_code, created) VALUES
    ('a1000000-0000-4000-8000-0000000000a1', 'a0000000-0000-4000-8000-00000000000a', 'demo-token-alice', 'alice@demo.test', '', 0, '', now()),
    ('a2000000-0000-4000-8000-0000000000a2', 'a0000000-0000-4000-8000-00000000000a', 'demo-token-bob',   'bob@demo.test',   '', 0, '', now()),
    ('c1000000-0000-4000-8000-0000000000c1', 'b0000000-0000-4000-8000-00000000000b', 'demo-token-carol', 'carol@demo.test', '', 0, '', now())
ON CONFLICT (id) DO NOTHING;

SELECT sb.walcast_create_repo('demo', 'tasks_760_');
