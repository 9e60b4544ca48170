//! The behaviour every `Store` must have, run against each implementation.

use keygate::clock::Period;
use keygate::events::{AttemptRecord, Delivery, DeliveryQuery, DeliveryStatus, DeliveryUpdate, EventKind, EventQuery, NewEvent};
use keygate::keys::model::{ApiKey, Env, KeyStatus, Role};
use keygate::keys::model::{CreditTerms, Quota, RefillInterval};
use keygate::keys::token::TokenHash;
use keygate::store::{
    ChangeTarget, CreditBalance, CreditChange, CreditSpend, FeedCursor, KeyPage, KeyQuery, PutExpect, Rotation, SecretRecord,
    Store, StoreError, UsageDelta, UsageQuery, WindowCount,
};
use std::collections::BTreeMap;

/// A key with every field set.
pub fn key(id: &str, name: &str, role: Option<&str>) -> ApiKey {
    ApiKey {
        key_id: id.into(),
        name: name.into(),
        description: format!("{name} description"),
        owner: "owner@example.com".into(),
        role: role.map(str::to_string),
        permissions: vec!["lists.view".into()],
        plan: Some("pro".into()),
        rate_limit: Some(42),
        allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
        env: Env::Live,
        enabled: true,
        expires_at: Some(2_000_000_000),
        created_at: 1_700_000_000,
        last_used: None,
        usage_count: 0,
        metadata: BTreeMap::from([("default_optin_mailing".to_string(), "7".to_string())]),
        key_prefix: "kg_live_abcd****".into(),
        quota: Quota { per_hour: None, per_day: Some(500), per_month: Some(10_000) },
        credits: Some(CreditTerms { refill_amount: Some(100), refill_interval: Some(RefillInterval::Month) }),
        shadow: true,
        max_in_flight: Some(7),
        version: 1,
    }
}

/// `key` as the store holds it at `version`.
fn at(key: &ApiKey, version: u64) -> ApiKey {
    ApiKey { version, ..key.clone() }
}

/// The behaviour every store must have.
pub async fn conformance(store: &dyn Store) {
    store.ping().await.unwrap();
    let start = store.change_cursor().await.unwrap();

    // Roles.
    let role = Role {
        id: "reader".into(),
        name: "Reader".into(),
        description: "reads".into(),
        permissions: vec!["lists.view".into()],
        version: 1,
    };
    store.insert_role(&role).await.unwrap();
    assert!(matches!(store.insert_role(&role).await, Err(StoreError::Conflict(_))));
    assert!(!store.insert_role_if_absent(&role).await.unwrap());
    assert_eq!(store.get_role("reader").await.unwrap(), Some(role.clone()));
    let mut edited = role.clone();
    edited.permissions = vec!["lists.*".into()];
    store.update_role(&edited).await.unwrap();
    let stored = store.get_role("reader").await.unwrap().unwrap();
    assert_eq!((stored.permissions, stored.version), (vec!["lists.*".to_string()], 2));
    assert_eq!(store.update_role(&Role { id: "ghost".into(), ..role.clone() }).await, Err(StoreError::NotFound));
    // A write made for a version the role is no longer at changes nothing.
    assert_eq!(store.update_role(&role).await, Err(StoreError::VersionConflict { current: 2 }));
    assert_eq!(store.get_role("reader").await.unwrap().unwrap().permissions, vec!["lists.*".to_string()]);

    // Keys.
    let a = key("key_a", "Alpha integration", Some("reader"));
    let b = key("key_b", "Beta sync", None);
    let (ha, hb) = (TokenHash::of("token-a"), TokenHash::of("token-b"));
    store.insert_key(&a, &ha, None).await.unwrap();
    store.insert_key(&b, &hb, None).await.unwrap();
    assert!(matches!(store.insert_key(&key("key_c", "dup token", None), &ha, None).await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.insert_key(&a, &TokenHash::of("other"), None).await, Err(StoreError::Conflict(_))));
    let found = store.key_by_hash(&ha).await.unwrap().unwrap();
    assert_eq!(found.key, a);
    assert_eq!(found.secret_expires_at, None);
    assert_eq!(store.key_by_hash(&TokenHash::of("nope")).await.unwrap(), None);
    assert_eq!(store.get_key("key_b").await.unwrap(), Some(b.clone()));

    // Listing, search and paging.
    let page = store.list_keys(&KeyQuery { search: None, offset: 0, limit: 0, ..KeyQuery::default() }).await.unwrap();
    assert_eq!(page.total, 2);
    let page =
        store.list_keys(&KeyQuery { search: Some("beta".into()), offset: 0, limit: 10, ..KeyQuery::default() }).await.unwrap();
    assert_eq!((page.total, page.keys.len()), (1, 1));
    assert_eq!(page.keys[0].key_id, "key_b");
    let page =
        store.list_keys(&KeyQuery { search: Some("reader".into()), offset: 0, limit: 10, ..KeyQuery::default() }).await.unwrap();
    assert_eq!(page.keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>(), vec!["key_a"], "search covers the role");
    let page = store
        .list_keys(&KeyQuery { search: Some("10.0.0.0/8".into()), offset: 0, limit: 10, ..KeyQuery::default() })
        .await
        .unwrap();
    assert_eq!(page.total, 2, "search covers allowed IPs");
    let page =
        store.list_keys(&KeyQuery { search: Some("%".into()), offset: 0, limit: 10, ..KeyQuery::default() }).await.unwrap();
    assert_eq!(page.total, 0, "search is literal");
    let page = store.list_keys(&KeyQuery { search: None, offset: 1, limit: 1, ..KeyQuery::default() }).await.unwrap();
    assert_eq!((page.total, page.keys.len()), (2, 1));
    // Filters by role and by state.
    let ids = |page: KeyPage| page.keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>();
    let by = |role: Option<&str>, status: Option<KeyStatus>, now: i64| KeyQuery {
        role: role.map(str::to_string),
        status,
        now,
        ..KeyQuery::default()
    };
    assert_eq!(ids(store.list_keys(&by(Some("reader"), None, 0)).await.unwrap()), vec!["key_a"]);
    assert_eq!(ids(store.list_keys(&by(Some(""), None, 0)).await.unwrap()), vec!["key_b"]);
    let now = 1_800_000_000;
    assert_eq!(store.list_keys(&by(None, Some(KeyStatus::Active), now)).await.unwrap().total, 2);
    assert_eq!(store.list_keys(&by(None, Some(KeyStatus::Disabled), now)).await.unwrap().total, 0);
    assert_eq!(store.list_keys(&by(None, Some(KeyStatus::Expired), 2_000_000_000)).await.unwrap().total, 2);
    let mut off = b.clone();
    off.enabled = false;
    store.update_key(&off, None).await.unwrap();
    assert_eq!(ids(store.list_keys(&by(None, Some(KeyStatus::Disabled), now)).await.unwrap()), vec!["key_b"]);
    assert_eq!(ids(store.list_keys(&by(Some("reader"), Some(KeyStatus::Active), now)).await.unwrap()), vec!["key_a"]);
    // The same edit again was made for version 1: the key is at 2 now, and
    // the racing edit that would re-enable it writes nothing.
    assert_eq!(store.update_key(&b, None).await, Err(StoreError::VersionConflict { current: 2 }));
    assert!(!store.get_key("key_b").await.unwrap().unwrap().enabled, "a stale write brought the key back");
    store.update_key(&at(&b, 2), None).await.unwrap();
    assert_eq!(store.get_key("key_b").await.unwrap(), Some(at(&b, 3)));

    // Restoring keys whole, secrets by hash (what an import does).
    let now = keygate::clock::now_unix();
    assert_eq!(store.secrets_of("key_a", now).await.unwrap(), vec![SecretRecord { hash: ha, valid_until: None }]);
    let restored = key("key_r", "Restored", Some("reader"));
    let (hr, hr_old) = (TokenHash::of("token-r"), TokenHash::of("token-r-old"));
    let both = [SecretRecord { hash: hr, valid_until: None }, SecretRecord { hash: hr_old, valid_until: Some(now + 3600) }];
    let fresh = PutExpect::Absent { recreate_deleted: false };
    assert!(store.put_key(&restored, &both, fresh, None).await.unwrap(), "created");
    assert_eq!(store.secrets_of("key_r", now).await.unwrap(), both.to_vec());
    assert_eq!(store.key_by_hash(&hr_old).await.unwrap().unwrap().secret_expires_at, Some(now + 3600));
    assert_eq!(store.put_key(&restored, &both, fresh, None).await, Err(StoreError::VersionConflict { current: 1 }), "exists");
    let mut renamed = restored.clone();
    renamed.name = "Restored again".into();
    assert!(!store.put_key(&renamed, &both[..1], PutExpect::Version(1), None).await.unwrap(), "replaced");
    assert_eq!(store.get_key("key_r").await.unwrap(), Some(at(&renamed, 2)));
    assert_eq!(store.key_by_hash(&hr_old).await.unwrap(), None, "a secret left out of the restore is gone");
    assert_eq!(
        store.put_key(&renamed, &both[..1], PutExpect::Version(1), None).await,
        Err(StoreError::VersionConflict { current: 2 })
    );
    assert!(matches!(
        store.put_key(&renamed, &[SecretRecord { hash: ha, valid_until: None }], PutExpect::Version(2), None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.key_by_hash(&hr).await.unwrap().unwrap().key.key_id, "key_r", "a refused restore changes nothing");
    assert_eq!(store.delete_key("key_r", 1, None).await, Err(StoreError::VersionConflict { current: 2 }));
    assert!(store.get_key("key_r").await.unwrap().is_some(), "a stale delete deleted");
    store.delete_key("key_r", 2, None).await.unwrap();
    // A deleted id is remembered: a restore made for a key that was never
    // there does not bring it back, nor one made for the key it was.
    assert_eq!(store.put_key(&restored, &both, fresh, None).await, Err(StoreError::Deleted));
    assert_eq!(store.put_key(&restored, &both, PutExpect::Version(2), None).await, Err(StoreError::NotFound));
    assert_eq!(store.get_key("key_r").await.unwrap(), None);
    // Asked to, it does, and its versions go on from the deleted key's.
    assert!(store.put_key(&restored, &both, PutExpect::Absent { recreate_deleted: true }, None).await.unwrap());
    assert_eq!(store.get_key("key_r").await.unwrap().unwrap().version, 3);
    store.delete_key("key_r", 3, None).await.unwrap();

    // Role in use.
    assert_eq!(store.delete_role("reader", 2).await, Err(StoreError::RoleInUse { keys: 1 }));

    // Update and delete.
    let mut a2 = a.clone();
    a2.enabled = false;
    a2.role = None;
    store.update_key(&a2, None).await.unwrap();
    assert_eq!(store.key_by_hash(&ha).await.unwrap().unwrap().key, at(&a2, 2));
    assert_eq!(store.update_key(&key("key_zz", "ghost", None), None).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_key("key_zz", 1, None).await, Err(StoreError::NotFound));
    assert_eq!(store.delete_role("reader", 1).await, Err(StoreError::VersionConflict { current: 2 }));
    store.delete_role("reader", 2).await.unwrap();
    assert_eq!(store.delete_role("reader", 2).await, Err(StoreError::NotFound));

    // Rotation: the old secret gets an end, the new one none.
    let hn = TokenHash::of("token-b-new");
    let rotation = |key_id, hash, version| Rotation {
        key_id,
        hash,
        key_prefix: "kg_live_wxyz****",
        old_valid_until: 2_100_000_000,
        version,
        event: None,
    };
    let stale = store.rotate_secret(&rotation("key_b", &hn, 2)).await;
    assert_eq!(stale, Err(StoreError::VersionConflict { current: 3 }));
    assert_eq!(store.key_by_hash(&hn).await.unwrap(), None, "a stale rotation added a secret");
    store.rotate_secret(&rotation("key_b", &hn, 3)).await.unwrap();
    assert_eq!(store.key_by_hash(&hb).await.unwrap().unwrap().secret_expires_at, Some(2_100_000_000));
    let new = store.key_by_hash(&hn).await.unwrap().unwrap();
    assert_eq!((new.secret_expires_at, new.key.key_prefix.as_str(), new.key.version), (None, "kg_live_wxyz****", 4));
    assert_eq!(store.rotate_secret(&rotation("key_zz", &TokenHash::of("x"), 1)).await, Err(StoreError::NotFound));

    // Usage in batches.
    let now = keygate::clock::now_unix();
    let batch = vec![
        UsageDelta {
            key_id: "key_b".into(),
            owner: "acme".into(),
            count: 5,
            refused: 1,
            units: 40,
            last_used: now - 30,
            minute: (now - 30) / 60,
        },
        UsageDelta {
            key_id: "key_b".into(),
            owner: "acme".into(),
            count: 2,
            refused: 0,
            units: -3,
            last_used: now,
            minute: now / 60,
        },
    ];
    store.record_usage(&batch).await.unwrap();
    let b_now = store.get_key("key_b").await.unwrap().unwrap();
    assert_eq!((b_now.usage_count, b_now.last_used), (7, Some(now)));
    // An edit never writes usage back, whatever the key it was made from says.
    let mut edited = b_now.clone();
    (edited.usage_count, edited.last_used, edited.description) = (0, None, "edited".into());
    store.update_key(&edited, None).await.unwrap();
    let b_now = store.get_key("key_b").await.unwrap().unwrap();
    assert_eq!((b_now.usage_count, b_now.last_used, b_now.description.as_str()), (7, Some(now), "edited"));
    let summary = store.usage_summary("key_b", now).await.unwrap();
    assert_eq!((summary.last_hour, summary.last_day), (7, 7));
    // Hourly admitted and refused counts, by owner or key, for reports.
    let hours = UsageQuery { owner: None, key_id: None, from_hour: now / 3600 - 2, to_hour: now / 3600 + 1 };
    let rows = store.usage_report(&hours).await.unwrap();
    let (admitted, refused, units): (u64, u64, i64) =
        rows.iter().map(|r| (r.admitted, r.refused, r.units)).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    assert_eq!((admitted, refused, units), (7, 1, 37), "a cost settled lower is a negative delta");
    assert!(rows.iter().all(|r| r.key_id == "key_b" && r.owner == "acme"));
    let other = UsageQuery { owner: Some("someone else".into()), ..hours.clone() };
    assert!(store.usage_report(&other).await.unwrap().is_empty());
    let earlier = UsageQuery { from_hour: now / 3600 - 30, to_hour: now / 3600 - 20, ..hours };
    assert!(store.usage_report(&earlier).await.unwrap().is_empty());

    // Credits: set, add, spend (refilled first in a later window), and a
    // set makes spending from before it count for nothing.
    assert_eq!(store.credit_balance("key_b").await.unwrap(), None);
    let set = store.change_credits("key_b", CreditChange::Set(50), Some(100), 7, None).await.unwrap();
    assert_eq!((set.remaining, set.period), (50, 7));
    // Made for another version of the key: nothing changes.
    let v = store.get_key("key_b").await.unwrap().unwrap().version;
    let stale = store.change_credits("key_b", CreditChange::Add(5), Some(100), 7, Some(v - 1)).await;
    assert_eq!(stale, Err(StoreError::VersionConflict { current: v }));
    let added = store.change_credits("key_b", CreditChange::Add(5), Some(100), 7, Some(v)).await.unwrap();
    assert_eq!(store.get_key("key_b").await.unwrap().unwrap().version, v, "a balance is not one of the key's fields");
    assert_eq!(added.remaining, 55);
    // An add never takes a balance below 0 or above the cap, and a refused
    // one changes nothing.
    let max = keygate::store::MAX_CREDITS as i64;
    for add in [-56, max - 54] {
        let refused = store.change_credits("key_b", CreditChange::Add(add), Some(100), 7, None).await;
        assert_eq!(refused, Err(StoreError::BalanceBound { remaining: 55, add }));
    }
    assert_eq!(store.credit_balance("key_b").await.unwrap().unwrap().remaining, 55);
    assert_eq!(store.change_credits("key_b", CreditChange::Add(-55), Some(100), 7, None).await.unwrap().remaining, 0);
    assert_eq!(store.change_credits("key_b", CreditChange::Add(55), Some(100), 7, None).await.unwrap().remaining, 55);
    let spend = |generation, period, spent| CreditSpend { key_id: "key_b".into(), generation, refill: Some(100), period, spent };
    store.record_meter(&[], &[spend(set.generation, 7, 10), spend(set.generation, 8, 30)]).await.unwrap();
    let b = store.credit_balance("key_b").await.unwrap().unwrap();
    assert_eq!(b, CreditBalance { remaining: 70, period: 8, generation: set.generation });
    let reset = store.change_credits("key_b", CreditChange::Set(3), None, 8, None).await.unwrap();
    assert_eq!(reset.generation, set.generation + 1);
    store.record_meter(&[], &[spend(set.generation, 8, 1)]).await.unwrap();
    assert_eq!(store.credit_balance("key_b").await.unwrap().unwrap().remaining, 3, "spent before the set");
    assert_eq!(store.change_credits("key_zz", CreditChange::Add(1), None, 0, None).await, Err(StoreError::NotFound));
    // Calendar windows add up per counter and are read back for the current window only.
    let now_ms = now * 1000;
    let day = Period::Day.index(now_ms);
    let w = |id: &str, index, delta| WindowCount { period: Period::Day, id: id.into(), index, delta };
    store.record_meter(&[w("key_b", day, 4), w("o:acme", day, 2), w("key_b", day - 1, 9)], &[]).await.unwrap();
    store.record_meter(&[w("key_b", day, 3)], &[]).await.unwrap();
    let mut current = store.meter_windows(now_ms).await.unwrap();
    current.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(current, vec![w("key_b", day, 7), w("o:acme", day, 2)]);

    store.delete_key("key_b", v, None).await.unwrap();
    assert_eq!(store.credit_balance("key_b").await.unwrap(), None, "a deleted key's credits go with it");
    assert_eq!(store.key_by_hash(&hn).await.unwrap(), None);
    assert_eq!(store.key_by_hash(&hb).await.unwrap(), None);
    assert_eq!(store.delete_key("key_b", v, None).await, Err(StoreError::NotFound));

    // The audit log, newest first, filterable by target.
    use keygate::store::AuditEntry;
    for (i, target) in ["key_a", "reader", "key_a"].iter().enumerate() {
        let entry = AuditEntry {
            at_ms: 1_700_000_000_000 + i as i64,
            actor: "cli (test)".into(),
            action: format!("action.{i}"),
            target: target.to_string(),
            before: None,
            after: Some(serde_json::json!({ "n": i })),
        };
        store.append_audit(&entry).await.unwrap();
    }
    let all = store.list_audit(None, 0, 0).await.unwrap();
    assert_eq!(all.total, 3);
    assert_eq!(all.entries[0].action, "action.2");
    let page = store.list_audit(None, 1, 1).await.unwrap();
    assert_eq!((page.total, page.entries.len(), page.entries[0].action.as_str()), (3, 1, "action.1"));
    let mine = store.list_audit(Some("key_a"), 0, 10).await.unwrap();
    assert_eq!(mine.total, 2);
    assert!(mine.entries.iter().all(|e| e.target == "key_a"));

    // The change feed saw every mutation, in order.
    let feed = store.changes_since(&start).await.unwrap();
    assert!(!feed.gap);
    let targets: Vec<ChangeTarget> = feed.changes.iter().map(|c| c.target.clone()).collect();
    assert_eq!(targets.first(), Some(&ChangeTarget::Role("reader".into())));
    assert!(targets.contains(&ChangeTarget::Key("key_a".into())));
    assert_eq!(targets.last(), Some(&ChangeTarget::Key("key_b".into())));
    assert!(store.changes_since(&feed.latest).await.unwrap().changes.is_empty());
    assert!(feed.changes.iter().all(|c| c.at_ms > 1_700_000_000_000));
    // A cursor ahead of the feed (the store came back from an older copy):
    // a gap, and the feed's own position to go on from.
    let ahead = FeedCursor { seq: feed.latest.seq + 100, mark: "from another feed".into() };
    let behind = store.changes_since(&ahead).await.unwrap();
    assert!(behind.gap && behind.changes.is_empty());
    assert_eq!(behind.latest.seq, feed.latest.seq);
    // Going on from there learns the entry's text again, and finds no gap.
    let resumed = store.changes_since(&behind.latest).await.unwrap();
    assert!(!resumed.gap);
    assert_eq!(resumed.latest, feed.latest);
    // Another entry at the cursor's number: a replaced feed, even though its
    // number is not behind.
    let replaced = FeedCursor { seq: feed.latest.seq, mark: "from another feed".into() };
    assert!(store.changes_since(&replaced).await.unwrap().gap);
    // The cursor a node starts from is the feed's newest entry.
    assert_eq!(store.change_cursor().await.unwrap(), feed.latest);
    outbox(store).await;
    blocklist(store).await;
}

/// Blocks: a later block stands, an ended one is not listed, a removal
/// says whether there was one.
async fn blocklist(store: &dyn Store) {
    let now = keygate::clock::now_ms();
    store.put_block("203.0.113.9", now + 60_000).await.unwrap();
    store.put_block("203.0.113.9", now + 30_000).await.unwrap();
    store.put_block("2001:db8::1", now + 90_000).await.unwrap();
    store.put_block("198.51.100.1", now - 1).await.unwrap();
    let listed = store.list_blocks(now).await.unwrap();
    assert_eq!(listed, vec![("2001:db8::1".to_string(), now + 90_000), ("203.0.113.9".to_string(), now + 60_000)]);
    assert!(store.remove_block("203.0.113.9").await.unwrap());
    assert!(!store.remove_block("203.0.113.9").await.unwrap());
    assert_eq!(store.list_blocks(now).await.unwrap().len(), 1);
    assert!(store.list_blocks(now + 90_000).await.unwrap().is_empty(), "ended blocks are not listed");
}

fn event(kind: EventKind, key_id: &str) -> NewEvent {
    NewEvent::new(kind, key_id, keygate::clock::now_ms(), serde_json::json!({ "keyId": key_id }))
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.event.id.clone()).collect()
}

/// Events enter the outbox with the key writes that cause them (or not
/// at all), each webhook takes them from where it started, and a
/// delivery's state changes only as its last reader saw it.
async fn outbox(store: &dyn Store) {
    // A webhook seen the first time starts after the newest event.
    let old = event(EventKind::KeyExpiring, "key_old");
    assert!(store.emit(&old).await.unwrap());
    assert!(store.open_deliveries("w", &[], 100).await.unwrap().is_empty());
    let only_deleted = ["key.deleted".to_string()];
    assert!(store.open_deliveries("deleted-only", &only_deleted, 100).await.unwrap().is_empty());

    let k = key("key_ev", "Events", None);
    let created = event(EventKind::KeyCreated, "key_ev");
    store.insert_key(&k, &TokenHash::of("token-ev"), Some(&created)).await.unwrap();
    // A write refused for its version writes no event either.
    let refused = event(EventKind::KeyUpdated, "key_ev");
    let stale = ApiKey { version: 7, ..k.clone() };
    assert!(matches!(store.update_key(&stale, Some(&refused)).await, Err(StoreError::VersionConflict { .. })));
    let disabled = event(EventKind::KeyDisabled, "key_ev");
    store.update_key(&ApiKey { enabled: false, ..k.clone() }, Some(&disabled)).await.unwrap();
    let rotated = event(EventKind::KeyRotated, "key_ev");
    let hash = TokenHash::of("token-ev-2");
    let rotation = Rotation {
        key_id: "key_ev",
        hash: &hash,
        key_prefix: "kg_live_efgh****",
        old_valid_until: 0,
        version: 2,
        event: Some(&rotated),
    };
    store.rotate_secret(&rotation).await.unwrap();
    let restored = event(EventKind::KeyUpdated, "key_ev");
    let secrets = [SecretRecord { hash, valid_until: None }];
    store.put_key(&at(&k, 3), &secrets, PutExpect::Version(3), Some(&restored)).await.unwrap();
    let deleted = event(EventKind::KeyDeleted, "key_ev");
    store.delete_key("key_ev", 4, Some(&deleted)).await.unwrap();
    // An id written once is not written again.
    assert!(!store.emit(&deleted).await.unwrap());

    let open = store.open_deliveries("w", &[], 100).await.unwrap();
    let written: Vec<String> = [&created, &disabled, &rotated, &restored, &deleted].iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids(&open), written, "in the order written, none refused");
    assert!(open.windows(2).all(|w| w[0].event.seq < w[1].event.seq));
    assert!(open.iter().all(|d| d.status == DeliveryStatus::Pending && d.attempts == 0 && d.webhook == "w"));
    assert_eq!(open[0].event.body, created.body, "the body is kept byte for byte");
    assert_eq!((open[0].event.kind.as_str(), open[0].event.key_id.as_str()), ("key.created", "key_ev"));
    assert_eq!(ids(&store.open_deliveries("deleted-only", &only_deleted, 100).await.unwrap()), vec![deleted.id.clone()]);
    assert_eq!(store.open_deliveries("w", &[], 2).await.unwrap().len(), 2, "at most max");

    // A try is written only over the state it was made from.
    let first = &open[0];
    let now = keygate::clock::now_ms();
    let record = AttemptRecord { at_ms: now, status: Some(503), error: None, took_ms: 3 };
    let failed = DeliveryUpdate {
        status: DeliveryStatus::Failed,
        attempts_before: 0,
        first_attempt_ms: now,
        next_at_ms: now + 1_000,
        at_ms: now,
        log: vec![record.clone()],
    };
    assert!(store.record_attempt("w", first.event.seq, &failed).await.unwrap());
    assert!(!store.record_attempt("w", first.event.seq, &failed).await.unwrap(), "made from a stale state");
    let ok = AttemptRecord { status: Some(204), ..record.clone() };
    let delivered =
        DeliveryUpdate { status: DeliveryStatus::Delivered, attempts_before: 1, log: vec![record, ok], ..failed.clone() };
    assert!(store.record_attempt("w", first.event.seq, &delivered).await.unwrap());
    assert!(!store
        .record_attempt("w", first.event.seq, &DeliveryUpdate { attempts_before: 2, ..delivered.clone() })
        .await
        .unwrap());
    let open_now = store.open_deliveries("w", &[], 100).await.unwrap();
    assert_eq!(ids(&open_now), written[1..].to_vec());

    // Listed newest first, filtered.
    let query = DeliveryQuery { status: Some(DeliveryStatus::Delivered), limit: 10, ..DeliveryQuery::default() };
    let done = store.list_deliveries(&query).await.unwrap();
    assert_eq!(ids(&done), vec![created.id.clone()]);
    assert_eq!((done[0].attempts, done[0].log.len(), done[0].log[1].status), (2, 2, Some(204)));
    let all = store.list_deliveries(&DeliveryQuery { limit: 100, ..DeliveryQuery::default() }).await.unwrap();
    assert_eq!(all.len(), 6, "five to w, one to deleted-only");
    assert_eq!(all[0].event.id, deleted.id);
    let of_w = DeliveryQuery { webhook: Some("deleted-only".into()), limit: 10, ..DeliveryQuery::default() };
    assert_eq!(store.list_deliveries(&of_w).await.unwrap().len(), 1);
    let events =
        store.list_events(&EventQuery { key_id: Some("key_ev".into()), limit: 100, ..EventQuery::default() }).await.unwrap();
    assert_eq!(events.iter().map(|e| e.id.clone()).rev().collect::<Vec<_>>(), written);
    let typed = EventQuery { kind: Some("key.rotated".into()), limit: 100, ..EventQuery::default() };
    assert_eq!(store.list_events(&typed).await.unwrap().len(), 1);
    let later = EventQuery { since_ms: Some(now + 60_000), limit: 100, ..EventQuery::default() };
    assert!(store.list_events(&later).await.unwrap().is_empty());
    assert_eq!(store.list_events(&EventQuery { limit: 2, ..EventQuery::default() }).await.unwrap().len(), 2);

    // A replay opens again what was delivered, and makes what a webhook
    // never took (it started after them).
    assert_eq!(store.replay("w", &[], 0).await.unwrap(), 2);
    let reopened = store.open_deliveries("w", &[], 100).await.unwrap();
    let mut replayed = vec![old.id.clone()];
    replayed.extend(written.iter().cloned());
    assert_eq!(ids(&reopened), replayed);
    assert!(reopened.iter().all(|d| d.attempts == 0));
    // A webhook added since gets every event of its types since then.
    assert_eq!(store.replay("late", &only_deleted, 0).await.unwrap(), 1);
    assert_eq!(ids(&store.open_deliveries("late", &only_deleted, 100).await.unwrap()), vec![deleted.id.clone()]);

    // One holder of a lease at a time; a lapsed lease is anyone's.
    assert!(store.hold_lease("deliver", "node-a", 10_000).await.unwrap());
    assert!(!store.hold_lease("deliver", "node-b", 10_000).await.unwrap());
    assert!(store.hold_lease("deliver", "node-a", 10_000).await.unwrap());
    assert!(store.hold_lease("brief", "node-a", 1).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(store.hold_lease("brief", "node-b", 10_000).await.unwrap());

    // A sweep forgets closed deliveries and their events, never open ones.
    let dead = DeliveryUpdate { status: DeliveryStatus::Dead, attempts_before: 0, ..failed };
    let seq = all.iter().find(|d| d.webhook == "deleted-only").map(|d| d.event.seq).unwrap();
    assert!(store.record_attempt("deleted-only", seq, &dead).await.unwrap());
    store.sweep_events(keygate::clock::now_ms() + 60_000).await.unwrap();
    assert_eq!(ids(&store.open_deliveries("w", &[], 100).await.unwrap()), replayed, "open deliveries survive a sweep");
    let left = store.list_deliveries(&DeliveryQuery { limit: 100, ..DeliveryQuery::default() }).await.unwrap();
    assert!(left.iter().all(|d| d.webhook != "deleted-only"), "the dead delivery went");
}
