//! Live queries [ext]: `join` with `"filter"` and `"snapshot": true` — a permission- and
//! filter-aware snapshot consistent with the stream by xid, then every later change with no gap
//! and no duplicate; filter moves; filtered deletes; every refusal with its error.

use crate::support::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

fn join_frame(ws: &Ws, channel: &str, extra: Value) -> String {
    let mut msg = json!({"sid": ws.sid, "type": "join", "data": channel, "token": ws.token});
    if let (Some(msg), Some(extra)) = (msg.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            msg.insert(k.clone(), v.clone());
        }
    }
    msg.to_string()
}

/// Sends `join` with `extra` keys and asserts the reply is `joined`.
async fn join_with(ws: &mut Ws, channel: &str, extra: Value) {
    let frame = join_frame(ws, channel, extra);
    ws.send_text(frame).await;
    let reply = ws.recv().await;
    assert_eq!(reply["type"], "joined", "{reply}");
}

/// What a client holds: documents by id, built from snapshot pages and events applied in
/// order. Every inconsistency (a created id already held, an update or delete of an id not
/// held, a page after the end) is an error: that is how a duplicate or a gap shows.
#[derive(Debug, Default)]
struct Replica {
    docs: HashMap<String, Value>,
    ended: bool,
    pages: usize,
    end_lsn: Option<String>,
}

impl Replica {
    fn apply(&mut self, msg: &Value, channel: &str) -> Result<(), String> {
        let kind = msg["type"].as_str().unwrap_or_default();
        if kind == "error" {
            return Err(format!("error: {msg}"));
        }
        if msg["channel"] != channel {
            return Err(format!("other channel: {msg}"));
        }
        let data: Value =
            serde_json::from_str(msg["data"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        match kind {
            "snapshot" => {
                if self.ended {
                    return Err(format!("page after snapshot_end: {msg}"));
                }
                self.pages += 1;
                for doc in data.as_array().ok_or("page is not an array")? {
                    let id = doc["id"].as_str().ok_or("doc without id")?.to_owned();
                    if self.docs.insert(id.clone(), doc.clone()).is_some() {
                        return Err(format!("{id} twice in the snapshot"));
                    }
                }
            }
            "snapshot_end" => {
                self.ended = true;
                self.end_lsn = msg["lsn"].as_str().map(str::to_owned);
            }
            "db_created" => {
                let id = data["id"].as_str().ok_or("doc without id")?.to_owned();
                if self.docs.insert(id.clone(), data).is_some() {
                    return Err(format!("duplicate: db_created of held {id}: {msg}"));
                }
            }
            "db_updated" => {
                let id = data["id"].as_str().ok_or("doc without id")?.to_owned();
                if self.docs.insert(id.clone(), data).is_none() {
                    return Err(format!("gap: db_updated of unknown {id}: {msg}"));
                }
            }
            "db_deleted" => {
                let id = data.as_str().ok_or("delete data is not an id")?;
                if self.docs.remove(id).is_none() {
                    return Err(format!(
                        "gap or duplicate: db_deleted of unknown {id}: {msg}"
                    ));
                }
            }
            other => return Err(format!("unexpected {other}: {msg}")),
        }
        Ok(())
    }
}

/// The test's own model of the rule (PROTOCOL.md §4) and of the filters this test uses.
#[derive(Debug, Clone)]
struct Viewer {
    user: Uuid,
    account: Uuid,
    root: bool,
}

fn may_read(repo: &str, viewer: &Viewer, account: Option<Uuid>, owner: Option<Uuid>) -> bool {
    if viewer.root {
        return true;
    }
    let same_account = account == Some(viewer.account);
    match repo {
        "tasks_760_" => same_account,
        "notes_700_" => same_account && owner == Some(viewer.user),
        _ => true,
    }
}

fn model_passes(filter: &Value, doc: &Value) -> bool {
    filter.as_array().into_iter().flatten().all(|p| {
        let path = p[0].as_str().unwrap_or_default();
        let op = p[1].as_str().unwrap_or_default();
        let want = &p[2];
        let mut got = doc;
        for name in path.split('.') {
            got = &got[name];
        }
        match (op, got, want) {
            ("eq", g, w) => g == w && !g.is_null(),
            ("gte", Value::Number(g), Value::Number(w)) => g.as_f64() >= w.as_f64(),
            ("lt", Value::Number(g), Value::Number(w)) => g.as_f64() < w.as_f64(),
            ("in", Value::String(_), Value::Array(ws)) => ws.contains(got),
            _ => false,
        }
    })
}

fn expected_docs(
    rows: &[(String, Option<Uuid>, Option<Uuid>, Value)],
    repo: &str,
    viewer: &Viewer,
    filter: &Value,
) -> HashMap<String, Value> {
    rows.iter()
        .filter_map(|(id, account, owner, data)| {
            let mut doc: Map<String, Value> = data.as_object()?.clone();
            doc.insert("id".into(), json!(id));
            doc.insert(
                "accountId".into(),
                json!(account.map(|a| a.to_string()).unwrap_or_default()),
            );
            let doc = Value::Object(doc);
            (may_read(repo, viewer, *account, *owner) && model_passes(filter, &doc))
                .then(|| (id.clone(), doc))
        })
        .collect()
}

async fn table_rows(env: &TestEnv, repo: &str) -> Vec<(String, Option<Uuid>, Option<Uuid>, Value)> {
    env.db
        .query(
            &format!("SELECT id::text, account_id, owner_id, data::text FROM acme.\"{repo}\""),
            &[],
        )
        .await
        .expect("select rows")
        .iter()
        .map(|r| {
            let data: String = r.get(3);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                serde_json::from_str(&data).unwrap(),
            )
        })
        .collect()
}

/// Reads until the replica equals `want` (the writers have stopped, so it must converge).
async fn converge(
    ws: &mut Ws,
    replica: &mut Replica,
    channel: &str,
    want: &HashMap<String, Value>,
) {
    while !(replica.ended && replica.docs == *want) {
        let msg = ws.recv().await;
        if let Err(problem) = replica.apply(&msg, channel) {
            panic!("{problem}");
        }
    }
}

#[tokio::test]
async fn fifty_snapshot_members_under_concurrent_writes_converge_exactly() {
    let env = TestEnv::start_with(|s| {
        s.snapshot.page_rows = 7;
        s.snapshot.max_in_flight = 3;
        s.snapshot.pool_size = 3;
        s.snapshot.queue_timeout = std::time::Duration::from_secs(60);
        s.ws.rate_per_sec = 0;
    })
    .await;
    let app = env.create_app("acme").await;
    let acct_a = env.create_account(&app).await;
    let acct_b = env.create_account(&app).await;
    let users = [
        env.create_user(&app, acct_a, 0).await,
        env.create_user(&app, acct_a, 0).await,
        env.create_user(&app, acct_b, 0).await,
        env.create_user(&app, acct_a, 100).await,
    ];
    let repos = ["tasks_760_", "notes_700_"];
    for repo in repos {
        env.create_repo(&app, repo).await;
    }
    let owners: Vec<(Uuid, Uuid)> = users.iter().map(|u| (u.account, u.id)).collect();
    const STATUSES: [&str; 3] = ["open", "closed", "review"];
    const TEAMS: [&str; 2] = ["red", "blue"];
    let random_data = move |rng: &mut rand::rngs::StdRng| {
        json!({
            "status": STATUSES[rng.random_range(0..3)],
            "priority": rng.random_range(0..7),
            "meta": {"team": TEAMS[rng.random_range(0..2)]},
        })
    };
    // Some rows before anyone joins.
    let mut seed = rand::rngs::StdRng::seed_from_u64(17);
    for i in 0..60 {
        let (account, owner) = owners[i % owners.len()];
        let data = random_data(&mut seed);
        env.insert(&app, repos[i % 2], Some(account), Some(owner), data)
            .await;
    }

    let filters = [
        json!(null),
        json!([["status", "eq", "open"]]),
        json!([["priority", "gte", 3]]),
        json!([["status", "in", ["open", "review"]], ["priority", "lt", 5]]),
        json!([["meta.team", "eq", "red"]]),
    ];

    // Writers: inserts, data updates (filter moves), account/owner moves (permission moves)
    // and deletes, some several to a transaction, concurrently with the joins.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let client = connect(&env.url).await;
        let owners = owners.clone();
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w);
            let mut ops = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ops < 150 {
                let repo = repos[rng.random_range(0..2)];
                let (account, owner) = owners[rng.random_range(0..owners.len())];
                let data = random_data(&mut rng).to_string();
                let sql = match rng.random_range(0..10) {
                    0..=3 => format!(
                        "INSERT INTO acme.\"{repo}\" (account_id, owner_id, data) VALUES ('{account}', '{owner}', '{data}')"
                    ),
                    4..=6 => format!(
                        "UPDATE acme.\"{repo}\" SET data = '{data}' WHERE id = (SELECT id FROM acme.\"{repo}\" ORDER BY random() LIMIT 1)"
                    ),
                    7 => format!(
                        "UPDATE acme.\"{repo}\" SET account_id = '{account}', owner_id = '{owner}' WHERE id = (SELECT id FROM acme.\"{repo}\" ORDER BY random() LIMIT 1)"
                    ),
                    8 => format!(
                        "DELETE FROM acme.\"{repo}\" WHERE id = (SELECT id FROM acme.\"{repo}\" ORDER BY random() LIMIT 1)"
                    ),
                    _ => format!(
                        "BEGIN; INSERT INTO acme.\"{repo}\" (account_id, owner_id, data) VALUES ('{account}', '{owner}', '{data}'); \
                         UPDATE acme.\"{repo}\" SET data = jsonb_set(data, '{{priority}}', to_jsonb((data->>'priority')::int + 1)) WHERE id = (SELECT id FROM acme.\"{repo}\" ORDER BY random() LIMIT 1); COMMIT"
                    ),
                };
                client.batch_execute(&sql).await.expect("write");
                ops += 1;
            }
            ops
        }));
    }

    let mut members = Vec::new();
    for i in 0..50usize {
        let user = users[i % users.len()].clone();
        let repo = repos[(i / users.len()) % 2];
        let filter = filters[i % filters.len()].clone();
        let mut ws = env.ws_as(&user).await;
        let channel = format!("db-{repo}");
        let mut extra = json!({"snapshot": true});
        if !filter.is_null() {
            extra["filter"] = filter.clone();
        }
        join_with(&mut ws, &channel, extra).await;
        let viewer = Viewer {
            user: user.id,
            account: user.account,
            root: i % users.len() == 3,
        };
        members.push((ws, channel, repo, filter, viewer, Replica::default()));
        // Read what arrived so far, so that no queue grows while the others join.
        for (ws, channel, _, _, _, replica) in members.iter_mut() {
            while let Ok(msg) =
                tokio::time::timeout(std::time::Duration::from_millis(1), ws.recv()).await
            {
                if let Err(problem) = replica.apply(&msg, channel) {
                    panic!("{problem}");
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.unwrap() >= 150);
    }

    let rows: HashMap<&str, _> = {
        let mut rows = HashMap::new();
        for repo in repos {
            rows.insert(repo, table_rows(&env, repo).await);
        }
        rows
    };
    let mut filtered_moves_seen = 0;
    for (ws, channel, repo, filter, viewer, replica) in members.iter_mut() {
        let want = expected_docs(&rows[*repo], repo, viewer, filter);
        converge(ws, replica, channel, &want).await;
        assert!(replica.pages >= 1, "at least one page, even when empty");
        assert!(replica.end_lsn.as_deref().is_some_and(|l| l.contains('/')));
        if !filter.is_null() {
            filtered_moves_seen += 1;
        }
    }
    assert!(filtered_moves_seen > 0);
}

#[tokio::test]
async fn snapshot_pages_then_end_then_live_with_permissions() {
    let env = TestEnv::start_with(|s| s.snapshot.page_rows = 10).await;
    let app = env.create_app("acme").await;
    let a = env.create_account(&app).await;
    let b = env.create_account(&app).await;
    let a1 = env.create_user(&app, a, 0).await;
    let root = env.create_user(&app, b, 100).await;
    env.create_repo(&app, "tasks_760_").await;
    env.create_repo(&app, "pub_board").await;
    for i in 0..25 {
        task(&env, &app, a, json!({"n": i})).await;
        env.insert(&app, "tasks_760_", Some(b), None, json!({"n": i}))
            .await;
    }
    env.insert(&app, "pub_board", Some(b), None, json!({"p": 1}))
        .await;

    let ch = "db-tasks_760_";
    let mut member = env.ws_as(&a1).await;
    join_with(&mut member, ch, json!({"snapshot": true})).await;
    let mut replica = Replica::default();
    while !replica.ended {
        let msg = member.recv().await;
        if msg["type"] == "snapshot" {
            assert_eq!(msg["sid"], "");
            assert!(
                serde_json::from_str::<Value>(msg["data"].as_str().unwrap())
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .len()
                    <= 10,
                "bounded pages"
            );
        }
        replica.apply(&msg, ch).unwrap();
    }
    assert_eq!(replica.docs.len(), 25, "only account A's rows");
    assert_eq!(replica.pages, 3);
    assert!(replica
        .docs
        .values()
        .all(|d| d["accountId"] == a.to_string()));
    let live = task(&env, &app, a, json!({"n": 99})).await;
    member
        .expect_id("db_created", ch, live, "live after snapshot_end")
        .await;

    let mut r = env.ws_as(&root).await;
    join_with(
        &mut r,
        ch,
        json!({"snapshot": true, "filter": [["n", "lt", 3]]}),
    )
    .await;
    let replica = read_snapshot(&mut r, ch).await;
    assert_eq!(replica.docs.len(), 6, "root: n < 3 of both accounts");

    // pub_ repos: everyone reads every row.
    let mut p = env.ws_as(&a1).await;
    join_with(&mut p, "db-pub_board", json!({"snapshot": true})).await;
    let replica = read_snapshot(&mut p, "db-pub_board").await;
    assert_eq!(replica.docs.len(), 1);

    // A repo that does not exist yet: an empty snapshot, then its events once it exists.
    let mut early = env.ws_as(&a1).await;
    join_with(&mut early, "db-later_760_", json!({"snapshot": true})).await;
    let replica = read_snapshot(&mut early, "db-later_760_").await;
    assert!(replica.docs.is_empty());
}

#[tokio::test]
async fn filter_moves_in_and_out_and_filtered_deletes() {
    let (env, app, a, a1) = one_account(TestEnv::start().await).await;
    let ch = "db-tasks_760_";
    let mut open = env.ws_as(&a1).await;
    join_with(
        &mut open,
        ch,
        json!({"filter": [["status", "eq", "open"], ["meta.rank", "gte", 2]]}),
    )
    .await;
    let mut all = env.ws_as(&a1).await;
    all.join(ch).await;

    let set = |id: Uuid, data: Value| {
        format!("UPDATE acme.tasks_760_ SET data = '{data}' WHERE id = '{id}'")
    };
    let x = task(
        &env,
        &app,
        a,
        json!({"status": "closed", "meta": {"rank": 5}}),
    )
    .await;
    let y = task(
        &env,
        &app,
        a,
        json!({"status": "open", "meta": {"rank": 3}}),
    )
    .await;
    all.expect_id("db_created", ch, x, "unfiltered").await;
    all.expect_id("db_created", ch, y, "unfiltered").await;
    open.expect_id("db_created", ch, y, "only the matching row")
        .await;

    env.sql(&set(x, json!({"status": "open", "meta": {"rank": 5}})))
        .await;
    open.expect_id("db_created", ch, x, "moved into the filter")
        .await;
    env.sql(&set(x, json!({"status": "open", "meta": {"rank": 6}})))
        .await;
    open.expect_id("db_updated", ch, x, "changed inside the filter")
        .await;
    env.sql(&set(x, json!({"status": "open", "meta": {"rank": "6"}})))
        .await;
    open.expect_deleted(ch, x, "a string is not a number: moved out")
        .await;
    // Deletes are filtered on the old row: y matched, x no longer does.
    env.sql(&format!("DELETE FROM acme.tasks_760_ WHERE id = '{x}'"))
        .await;
    env.sql(&format!("DELETE FROM acme.tasks_760_ WHERE id = '{y}'"))
        .await;
    open.expect_deleted(ch, y, "").await;
    for _ in 0..5 {
        let msg = all.recv().await;
        assert!(msg["type"].as_str().unwrap().starts_with("db_"), "{msg}");
    }

    // A new join replaces the filter (one membership, one copy of each event).
    join_with(
        &mut open,
        ch,
        json!({"filter": [["status", "eq", "closed"]]}),
    )
    .await;
    task(&env, &app, a, json!({"status": "open"})).await;
    let z = task(&env, &app, a, json!({"status": "closed"})).await;
    open.expect_id("db_created", ch, z, "the new filter, once")
        .await;
    let w = task(&env, &app, a, json!({"status": "closed"})).await;
    open.expect_id("db_created", ch, w, "no copy of z in between")
        .await;
}

#[tokio::test]
async fn resume_with_a_filter_replays_only_matching_changes() {
    let (env, app, a, a1) = one_account(TestEnv::start().await).await;
    let ch = "db-tasks_760_";
    let filter = json!([["status", "eq", "open"]]);
    let mut first = env.ws_as(&a1).await;
    join_with(&mut first, ch, json!({"filter": filter})).await;
    let kept = task(&env, &app, a, json!({"status": "open"})).await;
    let since = first.recv().await["lsn"].as_str().unwrap().to_owned();
    drop(first);
    task(&env, &app, a, json!({"status": "closed"})).await;
    env.sql(&format!(
        "UPDATE acme.tasks_760_ SET data = '{{\"status\": \"done\"}}' WHERE id = '{kept}'"
    ))
    .await;
    let new = task(&env, &app, a, json!({"status": "open"})).await;

    let mut back = env.ws_as(&a1).await;
    back.send_text(join_frame(
        &back,
        ch,
        json!({"filter": filter, "since": since}),
    ))
    .await;
    let reply = back.recv().await;
    assert_eq!(reply["type"], "joined");
    assert_eq!(reply["recovered"], true);
    back.expect_deleted(ch, kept, "moved out while away").await;
    back.expect_id("db_created", ch, new, "the matching insert")
        .await;
}

#[tokio::test]
async fn every_bad_filter_gets_its_error_and_nothing_changes() {
    let (env, app, a, a1) = one_account(TestEnv::start().await).await;
    let ch = "db-tasks_760_";
    let mut ws = env.ws_as(&a1).await;
    join_with(&mut ws, ch, json!({"filter": [["status", "eq", "open"]]})).await;

    let many: Vec<i32> = (0..101).collect();
    let cases = [
        (json!({"filter": {"status": "open"}}), "invalid filter: expected an array of [field, operator, value] predicates"),
        (json!({"filter": [["status", "like", "o%"]]}), "invalid filter: unknown operator \"like\" (eq, neq, lt, lte, gt, gte, in)"),
        (json!({"filter": [["status", "eq"]]}), "invalid filter: each predicate is [field, operator, value]"),
        (json!({"filter": [["data->>'x'", "eq", 1]]}), "invalid filter: field \"data->>'x'\" is not a plain name (letters, digits and _, starting with a letter or _)"),
        (json!({"filter": [["a.b.c", "eq", 1]]}), "invalid filter: field \"a.b.c\" is deeper than two levels"),
        (json!({"filter": [["priority", "gt", true]]}), "invalid filter: \"gt\" on \"priority\" takes a string or a number"),
        (json!({"filter": [["status", "eq", null]]}), "invalid filter: \"eq\" on \"status\" takes a string, a number or a boolean"),
        (json!({"filter": [["id", "eq", 1]]}), "invalid filter: \"eq\" on \"id\" takes a string"),
        (json!({"filter": [["status", "in", many]]}), "invalid filter: \"in\" takes at most 100 values"),
        (json!({"filter": (0..17).map(|i| json!(["n", "eq", i])).collect::<Vec<_>>()}), "invalid filter: more than 16 predicates"),
        (json!({"snapshot": true, "since": "0/1"}), "snapshot and since cannot be combined"),
    ];
    for (extra, error) in cases {
        ws.send_text(join_frame(&ws, ch, extra.clone())).await;
        let reply = ws.recv().await;
        assert_eq!(reply["type"], "error", "{extra}: {reply}");
        assert_eq!(reply["data"], error, "{extra}");
    }
    ws.send_text(join_frame(&ws, "room", json!({"filter": [["a", "eq", 1]]})))
        .await;
    assert_eq!(
        ws.recv().await["data"],
        "snapshot and filter apply to db- channels only"
    );

    // The first filter still holds, and the membership is unchanged (one copy).
    task(&env, &app, a, json!({"status": "closed"})).await;
    let open = task(&env, &app, a, json!({"status": "open"})).await;
    ws.expect_id("db_created", ch, open, "the original filter")
        .await;
    let again = task(&env, &app, a, json!({"status": "open"})).await;
    ws.expect_id("db_created", ch, again, "no second copy")
        .await;
}

#[tokio::test]
async fn snapshot_over_the_row_limit_is_refused_without_reading_the_rows() {
    let env = TestEnv::start_with(|s| s.snapshot.max_rows = 5).await;
    let (env, _app, a, a1) = one_account(env).await;
    env.sql(&format!(
        "INSERT INTO acme.tasks_760_ (account_id, data) \
         SELECT '{a}', jsonb_build_object('n', i) FROM generate_series(1, 5000) i"
    ))
    .await;
    let stat = "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
                WHERE schemaname = 'acme' AND relname = 'tasks_760_'";
    let before: i64 = env.db.query_one(stat, &[]).await.unwrap().get(0);

    let ch = "db-tasks_760_";
    let mut ws = env.ws_as(&a1).await;
    join_with(&mut ws, ch, json!({"snapshot": true})).await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["data"],
        "snapshot refused: more than 5 rows (the snapshot row limit)"
    );
    // The refusal scanned at most limit + 1 rows: the table was never read. (Each backend
    // reports its table statistics once idle, so wait for them to show.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let scanned = loop {
        let now: i64 = env.db.query_one(stat, &[]).await.unwrap().get(0);
        if now > before || std::time::Instant::now() > deadline {
            break now - before;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!((1..=6).contains(&scanned), "rows scanned: {scanned}");

    // Within the limit (a filter) it is served; the refused member was not left in the channel.
    join_with(
        &mut ws,
        ch,
        json!({"snapshot": true, "filter": [["n", "lte", 5]]}),
    )
    .await;
    let replica = read_snapshot(&mut ws, ch).await;
    assert_eq!(replica.docs.len(), 5);
}

/// The bundled `/client.js` under Node: `join(channel, { snapshot, filter, onSnapshot })` gets
/// the pages and the end, then events; after a dropped connection it re-joins with its last
/// position and the same filter (`recovered: true`), and sees only matching changes, once.
#[tokio::test]
async fn client_js_live_query_snapshot_then_resume_with_the_same_filter() {
    let (env, app, a, a1) = one_account(TestEnv::start().await).await;
    let before = task(&env, &app, a, json!({"status": "open"})).await;
    task(&env, &app, a, json!({"status": "closed"})).await;

    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client.js");
    std::fs::write(&client, include_str!("../src/http/assets/client.js")).unwrap();
    let script = format!(
        r#"
const Walcast = require({client:?});
const c = new Walcast.Client({{ url: "ws://{addr}/ws", sessionToken: {jwt:?}, minBackoffMs: 50, maxBackoffMs: 200 }});
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
c.onMessage((m) => {{
  if (m.type === "joined") out({{ ev: "joined", recovered: m.recovered === undefined ? null : m.recovered }});
  if (m.type.startsWith("db_")) out({{ ev: m.type, data: JSON.parse(m.data) }});
}});
const docs = [];
c.join("db-tasks_760_", {{
  snapshot: true,
  filter: [["status", "eq", "open"]],
  onSnapshot: (page, info) => {{
    docs.push(...page);
    if (info.end) out({{ ev: "snapshot_end", ids: docs.map((d) => d.id), lsn: info.lsn, last: c.lastLsn("db-tasks_760_") }});
  }},
}});
require("readline").createInterface({{ input: process.stdin }}).on("line", (line) => {{
  if (line === "drop") c._ws.close();
  if (line === "exit") {{ c.close(); process.exit(0); }}
}});
"#,
        client = client.to_str().unwrap(),
        addr = env.addr,
        jwt = a1.jwt,
    );
    let path = dir.path().join("live.js");
    std::fs::write(&path, script).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(node.stdout.take().unwrap()));
    assert_eq!(next_json(&mut lines).await["ev"], "joined");
    let end = next_json(&mut lines).await;
    assert_eq!(end["ev"], "snapshot_end", "{end}");
    assert_eq!(end["ids"], json!([before.to_string()]));
    assert_eq!(
        end["last"], end["lsn"],
        "the end position is the resume point"
    );

    let live = task(&env, &app, a, json!({"status": "open"})).await;
    let got = next_json(&mut lines).await;
    assert_eq!(
        (got["ev"].as_str(), got["data"]["id"].as_str()),
        (Some("db_created"), Some(&*live.to_string()))
    );

    use tokio::io::AsyncWriteExt;
    stdin.write_all(b"drop\n").await.unwrap();
    let rejoined = next_json(&mut lines).await;
    assert_eq!(rejoined["ev"], "joined", "{rejoined}");
    assert_eq!(
        rejoined["recovered"], true,
        "re-joined with its last position"
    );
    task(&env, &app, a, json!({"status": "closed"})).await;
    let after = task(&env, &app, a, json!({"status": "open"})).await;
    let got = next_json(&mut lines).await;
    assert_eq!(
        (got["ev"].as_str(), got["data"]["id"].as_str()),
        (Some("db_created"), Some(&*after.to_string())),
        "the same filter after the re-join: {got}"
    );
    stdin.write_all(b"exit\n").await.unwrap();
    let _ = node.wait().await;
}

async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("node timed out")
        .unwrap()
        .expect("node ended");
    serde_json::from_str(&line).unwrap()
}

/// One app with one account, one user of it, and the repo `tasks_760_`.
async fn one_account(env: TestEnv) -> (TestEnv, App, Uuid, User) {
    let (app, account, user) = env.app_with_user("acme", 0).await;
    env.create_repo(&app, "tasks_760_").await;
    (env, app, account, user)
}

/// A row of `tasks_760_` in `account`.
async fn task(env: &TestEnv, app: &App, account: Uuid, data: Value) -> Uuid {
    env.insert(app, "tasks_760_", Some(account), None, data)
        .await
}

/// Reads pages (and changes) until `snapshot_end`.
async fn read_snapshot(ws: &mut Ws, channel: &str) -> Replica {
    let mut replica = Replica::default();
    while !replica.ended {
        if let Err(problem) = replica.apply(&ws.recv().await, channel) {
            panic!("{problem}");
        }
    }
    replica
}
