//! PROTOCOL.md §4: document events from the WAL, filtered by the read rules.
//!
//! "X receives nothing" is shown without sleeping: after the private change, a change X may
//! read is made, and X's next message must be that one.

use crate::support::*;
use serde_json::{json, Value};
use uuid::Uuid;

struct Tenant {
    app: App,
    a: Uuid,
    b: Uuid,
    a1: User,
    a2: User,
    c: User,
}

/// The StaticBackend docs' example: account A with users A1, A2; account B with user C.
async fn tenant(env: &TestEnv, name: &str) -> Tenant {
    let app = env.create_app(name).await;
    let a = env.create_account(&app).await;
    let b = env.create_account(&app).await;
    let a1 = env.create_user(&app, a, 0).await;
    let a2 = env.create_user(&app, a, 0).await;
    let c = env.create_user(&app, b, 0).await;
    Tenant {
        app,
        a,
        b,
        a1,
        a2,
        c,
    }
}

impl Tenant {
    /// A handle on the app's repo `name`, which must exist by the time it is written to.
    fn repo<'a>(&'a self, env: &'a TestEnv, name: &'a str) -> Repo<'a> {
        Repo {
            env,
            app: &self.app,
            name,
        }
    }

    /// Creates the app's repo `name`.
    async fn create_repo<'a>(&'a self, env: &'a TestEnv, name: &'a str) -> Repo<'a> {
        env.create_repo(&self.app, name).await;
        self.repo(env, name)
    }
}

/// One document table of an app.
struct Repo<'a> {
    env: &'a TestEnv,
    app: &'a App,
    name: &'a str,
}

impl Repo<'_> {
    /// Inserts a document; returns its id.
    async fn insert(&self, account: Option<Uuid>, owner: Option<Uuid>, data: Value) -> Uuid {
        self.env
            .insert(self.app, self.name, account, owner, data)
            .await
    }

    /// `UPDATE … SET <set> WHERE id = <id>`.
    async fn update(&self, set: &str, id: Uuid) {
        let (app, repo) = (&self.app.name, self.name);
        self.env
            .sql(&format!("UPDATE {app}.{repo} SET {set} WHERE id = '{id}'"))
            .await;
    }

    async fn delete(&self, id: Uuid) {
        let (app, repo) = (&self.app.name, self.name);
        self.env
            .sql(&format!("DELETE FROM {app}.{repo} WHERE id = '{id}'"))
            .await;
    }
}

async fn subscribed(env: &TestEnv, user: &User, channel: &str) -> Ws {
    let mut ws = env.ws_as(user).await;
    ws.join(channel).await;
    ws
}

#[tokio::test]
async fn staticbackend_example_account_level() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let tasks = t.create_repo(&env, "tasks_760_").await;
    let ch = "db-tasks_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    let mut a2 = subscribed(&env, &t.a2, ch).await;
    let mut c = subscribed(&env, &t.c, ch).await;

    let id = tasks
        .insert(
            Some(t.a),
            Some(t.a1.id),
            json!({"title": "A's task", "done": false}),
        )
        .await;
    for ws in [&mut a1, &mut a2] {
        let doc = event(&ws.recv().await, "db_created", ch);
        assert_eq!(
            doc,
            json!({"accountId": t.a.to_string(), "done": false, "id": id.to_string(), "title": "A's task"})
        );
    }

    let cid = tasks
        .insert(Some(t.b), Some(t.c.id), json!({"title": "C's task"}))
        .await;
    c.expect_id(
        "db_created",
        ch,
        cid,
        "C's first event is its own row: A's never reached it",
    )
    .await;

    tasks.update("data = data || '{\"done\": true}'", id).await;
    for ws in [&mut a1, &mut a2] {
        let doc = event(&ws.recv().await, "db_updated", ch);
        assert_eq!(doc["done"], true);
        assert_eq!(doc["title"], "A's task");
    }
    tasks.delete(id).await;
    for ws in [&mut a1, &mut a2] {
        ws.expect_deleted(ch, id, "").await;
    }
    tasks.delete(cid).await;
    c.expect_deleted(ch, cid, "").await;
}

#[tokio::test]
async fn owner_everyone_default_root_and_pub_levels() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let root = env.create_user(&t.app, t.b, 100).await;
    let notes = t.create_repo(&env, "notes_700_").await;
    let wall = t.create_repo(&env, "wall_744_").await;
    let plain = t.create_repo(&env, "plain").await;
    let news = t.create_repo(&env, "pub_news_700_").await;

    // Owner level: only the owner (in the row's account) and root.
    let ch = "db-notes_700_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    let mut a2 = subscribed(&env, &t.a2, ch).await;
    let mut r = subscribed(&env, &root, ch).await;
    let private = notes
        .insert(Some(t.a), Some(t.a1.id), json!({"n": 1}))
        .await;
    a1.expect_id("db_created", ch, private, "").await;
    r.expect_id("db_created", ch, private, "").await;
    let mine = notes
        .insert(Some(t.a), Some(t.a2.id), json!({"n": 2}))
        .await;
    a2.expect_id("db_created", ch, mine, "A2 never saw A1's note")
        .await;
    r.expect_id("db_created", ch, mine, "").await;
    // Owner id right but account wrong: not the owner's row.
    let odd = notes
        .insert(Some(t.b), Some(t.a1.id), json!({"n": 3}))
        .await;
    r.expect_id("db_created", ch, odd, "").await;
    let sentinel = notes
        .insert(Some(t.a), Some(t.a1.id), json!({"n": 4}))
        .await;
    a1.expect_id("db_created", ch, sentinel, "").await;

    // Everyone level (_744_): every user of the app.
    let ch = "db-wall_744_";
    let mut c = subscribed(&env, &t.c, ch).await;
    let id = wall
        .insert(Some(t.a), Some(t.a1.id), json!({"post": "hi"}))
        .await;
    c.expect_id("db_created", ch, id, "").await;

    // No suffix = 740: account level.
    let ch = "db-plain";
    let mut c = subscribed(&env, &t.c, ch).await;
    let mut a2 = subscribed(&env, &t.a2, ch).await;
    let id = plain
        .insert(Some(t.a), Some(t.a1.id), json!({"x": 1}))
        .await;
    a2.expect_id("db_created", ch, id, "").await;
    let cid = plain.insert(Some(t.b), None, json!({"x": 2})).await;
    c.expect_id("db_created", ch, cid, "").await;

    // pub_ repos: everyone, whatever the digits.
    let ch = "db-pub_news_700_";
    let mut c = subscribed(&env, &t.c, ch).await;
    let id = news
        .insert(Some(t.a), Some(t.a1.id), json!({"headline": "x"}))
        .await;
    c.expect_id("db_created", ch, id, "").await;
    news.delete(id).await;
    c.expect_deleted(ch, id, "").await;
}

#[tokio::test]
async fn moving_a_row_between_accounts() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let tasks = t.create_repo(&env, "tasks_760_").await;
    let ch = "db-tasks_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    let mut c = subscribed(&env, &t.c, ch).await;
    let id = tasks
        .insert(Some(t.a), Some(t.a1.id), json!({"t": 1}))
        .await;
    event(&a1.recv().await, "db_created", ch);

    tasks.update(&format!("account_id = '{}'", t.b), id).await;
    a1.expect_deleted(ch, id, "moved out of A's sight").await;
    let doc = c
        .expect_id("db_created", ch, id, "moved into B's sight")
        .await;
    assert_eq!(doc["accountId"], t.b.to_string());

    tasks.update("data = '{\"t\": 2}'", id).await;
    assert_eq!(event(&c.recv().await, "db_updated", ch)["t"], 2);
    tasks.delete(id).await;
    c.expect_deleted(ch, id, "").await;
    let sentinel = tasks.insert(Some(t.a), None, json!({"t": 3})).await;
    a1.expect_id(
        "db_created",
        ch,
        sentinel,
        "A saw neither the update nor the delete in B",
    )
    .await;
}

#[tokio::test]
async fn repo_created_after_start_with_nullable_columns() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let ch = "db-late_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await; // joined before the table exists
    env.sql(
        "CREATE TABLE acme.late_760_ (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
            account_id uuid, owner_id uuid, note text, data jsonb NOT NULL, created timestamp NOT NULL)",
    )
    .await;
    let late = t.repo(&env, "late_760_");
    let id = late.insert(Some(t.a), Some(t.a1.id), json!({"v": 1})).await;
    a1.expect_id("db_created", ch, id, "").await;
    late.delete(id).await;
    a1.expect_deleted(
        ch,
        id,
        "the event trigger gave the new table REPLICA IDENTITY FULL, so the delete is permission-checked",
    )
    .await;
    // A row with NULL account_id is readable by nobody at account level (root aside).
    late.insert(None, None, json!({"v": 2})).await;
    let id = late.insert(Some(t.a), None, json!({"v": 3})).await;
    a1.expect_id("db_created", ch, id, "").await;

    // DDL while streaming: a new column, then dropping one that stood before `data`, which
    // moves `data`'s position in the WAL's tuples.
    env.sql("ALTER TABLE acme.late_760_ ADD COLUMN extra text DEFAULT 'x'")
        .await;
    let id = late.insert(Some(t.a), None, json!({"v": 4})).await;
    assert_eq!(
        a1.expect_id("db_created", ch, id, "after ADD COLUMN").await["v"],
        4
    );
    env.sql("ALTER TABLE acme.late_760_ DROP COLUMN note").await;
    let id = late.insert(Some(t.a), None, json!({"v": 5})).await;
    let doc = a1
        .expect_id("db_created", ch, id, "after DROP COLUMN")
        .await;
    assert_eq!(doc["v"], 5);
}

#[tokio::test]
async fn two_apps_with_same_repo_names_stay_isolated() {
    let env = TestEnv::start().await;
    let one = tenant(&env, "one").await;
    let two = tenant(&env, "two").await;
    let feed_one = one.create_repo(&env, "pub_feed").await;
    let feed_two = two.create_repo(&env, "pub_feed").await;
    let ch = "db-pub_feed";
    let mut x = subscribed(&env, &one.a1, ch).await;
    let mut y = subscribed(&env, &two.a1, ch).await;
    feed_one.insert(Some(one.a), None, json!({"app": 1})).await;
    feed_two.insert(Some(two.a), None, json!({"app": 2})).await;
    assert_eq!(event(&x.recv().await, "db_created", ch)["app"], 1);
    assert_eq!(event(&y.recv().await, "db_created", ch)["app"], 2);
}

#[tokio::test]
async fn rolled_back_changes_are_never_sent() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let tasks = t.create_repo(&env, "tasks_760_").await;
    let ch = "db-tasks_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    env.sql(&format!(
        "BEGIN; INSERT INTO acme.tasks_760_ (account_id, data, created) VALUES ('{}', '{{\"ghost\": true}}', now()); ROLLBACK;",
        t.a
    ))
    .await;
    let id = tasks.insert(Some(t.a), None, json!({"ghost": false})).await;
    let doc = a1.expect_id("db_created", ch, id, "").await;
    assert_eq!(doc["ghost"], false);
}

#[tokio::test]
async fn ten_thousand_rows_in_one_transaction_arrive_complete_and_in_order() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    env.create_repo(&t.app, "bulk_760_").await;
    let ch = "db-bulk_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    env.sql(&format!(
        "INSERT INTO acme.bulk_760_ (account_id, data, created)
         SELECT '{}', jsonb_build_object('n', g), now() FROM generate_series(1, 10000) g",
        t.a
    ))
    .await;
    let mut lsn = None;
    for n in 1..=10000 {
        let msg = a1.recv().await;
        assert_eq!(event(&msg, "db_created", ch)["n"], n);
        let this = msg["lsn"].as_str().unwrap().to_owned();
        assert!(
            lsn.as_ref().is_none_or(|l: &String| *l == this),
            "one transaction, one commit LSN"
        );
        lsn = Some(this);
    }
}

#[tokio::test]
async fn update_with_unchanged_toast_carries_the_whole_document() {
    let env = TestEnv::start().await;
    let t = tenant(&env, "acme").await;
    let docs = t.create_repo(&env, "docs_760_").await;
    let ch = "db-docs_760_";
    let mut a1 = subscribed(&env, &t.a1, ch).await;
    // ~100 KB of incompressible text, stored out of line.
    let big: String = (0..100_000 / 32)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    let id = docs.insert(Some(t.a), None, json!({"body": big})).await;
    assert_eq!(
        event(&a1.recv().await, "db_created", ch)["body"],
        big.as_str()
    );
    docs.update("created = now()", id).await;
    let doc = a1.expect_id("db_updated", ch, id, "").await;
    assert_eq!(doc["body"], big.as_str());
}
