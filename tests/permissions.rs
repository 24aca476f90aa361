//! Property test of PROTOCOL.md §4: random apps, accounts, users and roles, repos with random
//! permission suffixes, random inserts, updates, moves and deletes; every delivery of every
//! subscriber is checked, in order, against the independent model in `support::model`.
//! The seed is printed; `WALCAST_PROPTEST_SEED=<n>` replays a run.

use crate::support::model::{event_for, seen, Change, Row, Seen, Subscriber};
use crate::support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use uuid::Uuid;

/// Deliveries the run must check at least.
const MIN_EVENTS: usize = 10_000;
const SENTINEL_REPO: &str = "pub_end";

struct AppSetup {
    app: App,
    accounts: Vec<Uuid>,
    users: Vec<(User, i32)>,
    repos: Vec<String>,
}

fn random_repo(rng: &mut StdRng, n: usize) -> String {
    let base = format!("r{n}_{}", rng.random_range(0..1000));
    match rng.random_range(0..10) {
        0 => base,
        1 => format!("pub_{base}_700_"),
        _ => format!(
            "{base}_{}{}{}_",
            rng.random_range(0..10),
            rng.random_range(0..10),
            rng.random_range(0..10)
        ),
    }
}

#[tokio::test]
async fn random_changes_reach_exactly_whom_the_model_says() {
    let env = TestEnv::start_with(|s| {
        s.ws.rate_per_sec = 0;
        s.ws.max_outbound_bytes = 256 << 20;
    })
    .await;
    let seed: u64 = std::env::var("WALCAST_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("permission property test seed: {seed} (WALCAST_PROPTEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    // Two apps; one repo name exists in both, so isolation between apps is exercised too.
    let shared_repo = random_repo(&mut rng, 0);
    let mut apps = Vec::new();
    for a in 0..2 {
        let app = env
            .create_app(&format!("app{a}_{}", rng.random_range(0..100_000)))
            .await;
        let mut accounts = Vec::new();
        for _ in 0..3 {
            accounts.push(env.create_account(&app).await);
        }
        let mut users = Vec::new();
        for _ in 0..5 {
            let account = accounts[rng.random_range(0..accounts.len())];
            let role = if rng.random_bool(0.2) { 100 } else { 0 };
            users.push((env.create_user(&app, account, role).await, role));
        }
        let mut repos = vec![shared_repo.clone()];
        for n in 1..4 {
            repos.push(random_repo(&mut rng, n));
        }
        for repo in repos.iter().chain([&SENTINEL_REPO.to_owned()]) {
            env.create_repo(&app, repo).await;
        }
        apps.push(AppSetup {
            app,
            accounts,
            users,
            repos,
        });
    }

    // Every user subscribes to every repo of its app (and the sentinel).
    let mut subscribers: Vec<(Subscriber, Ws)> = Vec::new();
    for setup in &apps {
        for (user, role) in &setup.users {
            let mut ws = env.ws_as(user).await;
            for repo in setup.repos.iter().chain([&SENTINEL_REPO.to_owned()]) {
                ws.join(&format!("db-{repo}")).await;
            }
            let subscriber = Subscriber {
                app: setup.app.name.clone(),
                user: user.id,
                account: user.account,
                role: *role,
            };
            subscribers.push((subscriber, ws));
        }
    }

    // Random changes in random-sized transactions, until the model expects enough deliveries.
    let mut rows: HashMap<(usize, usize), Vec<Row>> = HashMap::new();
    let mut expected: Vec<Vec<Seen>> = vec![Vec::new(); subscribers.len()];
    let mut total = 0usize;
    let mut version = 0i64;
    let mut changes = 0usize;
    while total < MIN_EVENTS {
        let mut sql = String::from("BEGIN;");
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(1..=5) {
            let a = rng.random_range(0..apps.len());
            let setup = &apps[a];
            let r = rng.random_range(0..setup.repos.len());
            let table = format!("\"{}\".\"{}\"", setup.app.name, setup.repos[r]);
            let pick_account = |rng: &mut StdRng| setup.accounts[rng.random_range(0..3)];
            let pick_owner = |rng: &mut StdRng| setup.users[rng.random_range(0..5)].0.id;
            version += 1;
            let existing = rows.entry((a, r)).or_default();
            let op = if existing.is_empty() {
                0
            } else {
                rng.random_range(0..10)
            };
            let change = match op {
                0..=3 => {
                    let row = Row {
                        id: Uuid::new_v4(),
                        account: pick_account(&mut rng),
                        owner: pick_owner(&mut rng),
                        v: version,
                    };
                    sql.push_str(&format!(
                        "INSERT INTO {table} (id, account_id, owner_id, data, created) \
                         VALUES ('{}', '{}', '{}', '{{\"v\": {version}}}', now());",
                        row.id, row.account, row.owner
                    ));
                    existing.push(row);
                    Change::Insert(row)
                }
                4..=8 => {
                    let i = rng.random_range(0..existing.len());
                    let old = existing[i];
                    let mut new = Row { v: version, ..old };
                    // Half the updates move the row: another account, owner, or both.
                    if rng.random_bool(0.5) {
                        if rng.random_bool(0.6) {
                            new.account = pick_account(&mut rng);
                        }
                        if rng.random_bool(0.6) {
                            new.owner = pick_owner(&mut rng);
                        }
                    }
                    sql.push_str(&format!(
                        "UPDATE {table} SET account_id = '{}', owner_id = '{}', \
                         data = '{{\"v\": {version}}}' WHERE id = '{}';",
                        new.account, new.owner, old.id
                    ));
                    existing[i] = new;
                    Change::Update { old, new }
                }
                _ => {
                    let old = existing.swap_remove(rng.random_range(0..existing.len()));
                    sql.push_str(&format!("DELETE FROM {table} WHERE id = '{}';", old.id));
                    Change::Delete(old)
                }
            };
            batch.push((a, r, change));
        }
        sql.push_str("COMMIT;");
        env.sql(&sql).await;
        for (a, r, change) in batch {
            changes += 1;
            let (app, repo) = (&apps[a].app.name, &apps[a].repos[r]);
            // A repo name both apps have: members of either app's channel are in scope.
            for (i, (subscriber, _)) in subscribers.iter().enumerate() {
                if let Some(event) = event_for(subscriber, app, repo, &change) {
                    expected[i].push(event);
                    total += 1;
                }
            }
        }
    }

    // One last row everyone sees marks the end of each stream.
    let mut sentinels = Vec::new();
    for setup in &apps {
        let id = env
            .insert(
                &setup.app,
                SENTINEL_REPO,
                Some(setup.accounts[0]),
                None,
                serde_json::json!({"v": -1}),
            )
            .await;
        sentinels.push(id);
    }
    let mut checked = 0usize;
    for (i, (subscriber, mut ws)) in subscribers.into_iter().enumerate() {
        let mut got = Vec::new();
        loop {
            let msg = ws.recv().await;
            let event = seen(&msg);
            if sentinels.contains(&event.2) {
                break;
            }
            got.push(event);
        }
        let want = &expected[i];
        let first_difference = got.iter().zip(want).position(|(g, w)| g != w);
        assert!(
            got == *want,
            "seed {seed}: subscriber {subscriber:?} got {} events, the model expects {}; \
             first difference at {first_difference:?}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            first_difference.and_then(|d| got.get(d)),
            first_difference.and_then(|d| want.get(d)),
        );
        checked += got.len();
    }
    eprintln!("permission property test: {changes} changes, {checked} deliveries checked");
    assert!(checked >= MIN_EVENTS);
}
