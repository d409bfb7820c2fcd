//! Behaviour of large rooms (issue 13): `joined` carries a bounded first page of members
//! and `member_count`; `members` requests page through the rest exactly once across
//! replicas; presence notices stop above `presence.notify_max_members` and summaries take
//! over (and back); the `joined` list and the notices after it never overlap or miss
//! anyone; and what a join storm writes grows linearly with the room, not quadratically.

#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use futures_util::future::join_all;

fn name_of(user: &Value) -> String {
    user["name"].as_str().expect("member name").to_string()
}

fn names_in(frame: &Value) -> Vec<String> {
    frame["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {frame}"))
        .iter()
        .map(name_of)
        .collect()
}

/// Joins `n` clients named `{prefix}{i}` to `room`, spread over the replicas, one after
/// the other; returns them.
async fn fill(c: &Cluster, room: &str, prefix: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = c.client(i).await;
        client.join(room, &format!("{prefix}{i}")).await;
        clients.push(client);
    }
    clients
}

/// Pages through `room`'s members with `members` requests of `limit` from the cursor
/// `joined` gave; returns every name listed (the joined page first) and the counts seen.
async fn page_all(client: &mut Client, joined: &Value, limit: u32) -> (Vec<String>, Vec<u64>) {
    let room = joined["room"].as_str().expect("room").to_string();
    let mut names = names_in(joined);
    let mut counts = vec![joined["member_count"].as_u64().expect("member_count")];
    let mut next = joined
        .get("members_next")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let mut pages = 0;
    while let Some(after) = next {
        pages += 1;
        assert!(pages < 1000, "paging does not end");
        client
            .send_json(json!({"type": "members", "room": room, "after": after, "limit": limit, "ref": format!("p{pages}")}))
            .await;
        let page = loop {
            let f = client.next_of_type("members").await;
            if f["ref"] == format!("p{pages}") {
                break f;
            }
        };
        assert_eq!(page["room"], room.as_str(), "{page}");
        assert!(
            names_in(&page).len() <= limit as usize,
            "a page longer than its limit: {page}"
        );
        names.extend(names_in(&page));
        counts.push(page["member_count"].as_u64().expect("member_count"));
        next = page.get("next").and_then(|n| n.as_str()).map(str::to_owned);
    }
    (names, counts)
}

fn small_pages(cfg: &mut roomcast::Config) {
    cfg.presence.members_in_join = 5;
}

/// `joined` lists at most `presence.members_in_join` members plus `member_count`, and
/// paging with `members` from its cursor lists every member on every replica exactly
/// once, even while others join and leave during the paging.
async fn members_paging_lists_every_member_exactly_once_across_replicas(c: &Cluster) {
    let room = "big-hall";
    let stayers = fill(c, room, "stay", 23).await;
    let mut pager = c.client(1).await;
    let joined = pager.join(room, "pager").await;
    assert_eq!(joined["member_count"], 24, "{joined}");
    assert_eq!(
        names_in(&joined).len(),
        5,
        "members_in_join caps joined: {joined}"
    );
    assert!(joined["members_next"].is_string(), "{joined}");

    // Churn while paging: members who come and go may or may not be listed.
    let churn = {
        let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url.clone()).collect();
        tokio::spawn(async move {
            for round in 0..3 {
                let mut comers = Vec::new();
                for (i, url) in urls.iter().enumerate() {
                    let mut cl = Client::connect(url).await;
                    cl.join(room, &format!("churn{round}-{i}")).await;
                    comers.push(cl);
                }
                for mut cl in comers {
                    cl.leave(room).await;
                }
            }
        })
    };
    let (names, counts) = page_all(&mut pager, &joined, 4).await;
    churn.await.expect("churn task");

    let mut listed: HashMap<&str, usize> = HashMap::new();
    for n in &names {
        *listed.entry(n.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = listed.iter().filter(|(_, k)| **k > 1).collect();
    assert!(dupes.is_empty(), "listed more than once: {dupes:?}");
    let mut expected: BTreeSet<String> = (0..23).map(|i| format!("stay{i}")).collect();
    expected.insert("pager".into());
    let present: BTreeSet<String> = names
        .iter()
        .filter(|n| !n.starts_with("churn"))
        .cloned()
        .collect();
    assert_eq!(present, expected, "every steady member exactly once");
    assert!(counts.iter().all(|n| *n >= 24), "counts: {counts:?}");

    // Without churn the count and the listing agree exactly.
    let (names, counts) = page_all(&mut pager, &joined, 1000).await;
    assert_eq!(names.len(), 24, "{names:?}");
    assert_eq!(counts.last(), Some(&24));
    drop(stayers);
}
on_both_buses!(
    members_paging_lists_every_member_exactly_once_across_replicas,
    3,
    small_pages
);

/// A `members` request is answered only for a joined room, and a bad `limit` or cursor
/// is refused with `bad_request` without affecting the connection.
async fn members_requests_are_checked(c: &Cluster) {
    let mut alice = c.client(0).await;
    alice.join("checked", "alice").await;
    alice
        .send_json(json!({"type": "members", "room": "elsewhere", "ref": "m1"}))
        .await;
    let e = alice.expect_error("not_joined").await;
    assert_eq!(e["ref"], "m1");
    alice
        .send_json(json!({"type": "members", "room": "checked", "limit": 0}))
        .await;
    alice.expect_error("bad_request").await;
    alice
        .send_json(json!({"type": "members", "room": "checked", "after": "x".repeat(2000)}))
        .await;
    alice.expect_error("bad_request").await;
    // A cursor past every member is an empty last page.
    alice
        .send_json(json!({"type": "members", "room": "checked", "after": "\u{10ffff}"}))
        .await;
    let page = alice.expect("members").await;
    assert_eq!(page["members"], json!([]), "{page}");
    assert_eq!(page["member_count"], 1);
    assert!(page.get("next").is_none(), "{page}");
    alice.send("checked", "still here").await;
}
on_both_buses!(members_requests_are_checked, 2);

fn notify_four(cfg: &mut roomcast::Config) {
    cfg.presence.notify_max_members = 4;
    cfg.presence.summary_interval = Duration::from_millis(300);
}

/// Reads `watcher`'s presence frames in `room` until one satisfies `done`; returns them.
async fn presence_until(
    watcher: &mut Client,
    room: &str,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let f = watcher.next_of_type("presence").await;
        if f["room"] != room {
            continue;
        }
        let stop = done(&f);
        seen.push(f);
        if stop {
            return seen;
        }
    }
}

/// Up to `presence.notify_max_members` members every join and leave is a notice with the
/// member count; above it notices stop and summaries carry the count, joins and leaves;
/// back at or below it, notices resume.
async fn crossing_notify_max_members_switches_to_summaries_and_back(c: &Cluster) {
    let room = "growing";
    let mut watcher = c.client(0).await;
    watcher.join(room, "watcher").await;
    // Members 2..=4: exact notices, each with the count after it.
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = c.client(i + 1).await;
        m.join(room, &format!("m{i}")).await;
        members.push(m);
        let p = watcher.wait_presence(room, "join", &format!("m{i}")).await;
        assert_eq!(p["member_count"], i + 2, "{p}");
    }
    // Members 5..=7: above the limit, no notice; a summary reaches the count 7.
    for i in 3..6 {
        let mut m = c.client(i + 1).await;
        m.join(room, &format!("m{i}")).await;
        members.push(m);
    }
    let seen = presence_until(&mut watcher, room, |f| {
        f["event"] == "summary" && f["member_count"] == 7
    })
    .await;
    for f in &seen {
        assert_eq!(f["event"], "summary", "no notice above the limit: {f}");
        assert!(f.get("user").is_none(), "{f}");
    }
    let joins: u64 = seen
        .iter()
        .map(|f| f["joins"].as_u64().expect("joins"))
        .sum();
    assert_eq!(
        joins, 3,
        "every join above the limit is in a summary: {seen:?}"
    );

    // Leaves while the room (counting the leaver) is above 4: summaries only; the leave
    // that starts from 4 members is a notice again, with the count 3.
    for _ in 0..4 {
        let mut m = members.pop().expect("member");
        m.leave(room).await;
    }
    let seen = presence_until(&mut watcher, room, |f| f["event"] == "leave").await;
    let last = seen.last().expect("a leave notice");
    assert_eq!(last["user"]["name"], "m2", "{last}");
    assert_eq!(last["member_count"], 3, "{last}");
    let leaves: u64 = seen
        .iter()
        .filter(|f| f["event"] == "summary")
        .map(|f| f["leaves"].as_u64().expect("leaves"))
        .sum();
    assert!(
        seen.iter().all(|f| f["event"] == "summary" || f == last),
        "only summaries before the notice: {seen:?}"
    );
    // Summaries may trail the notice (they go out on their interval): the three leaves
    // above the limit are all told, and the final count is 3.
    let mut told = leaves;
    while told < 3 {
        let f = watcher.next_of_type("presence").await;
        assert_eq!(f["event"], "summary", "{f}");
        told += f["leaves"].as_u64().expect("leaves");
        assert_eq!(f["member_count"], 3, "{f}");
    }
    assert_eq!(told, 3);
    // Small again: the next join is a notice.
    let mut late = c.client(9).await;
    late.join(room, "late").await;
    let p = watcher.wait_presence(room, "join", "late").await;
    assert_eq!(p["member_count"], 4, "{p}");
}
on_both_buses!(
    crossing_notify_max_members_switches_to_summaries_and_back,
    2,
    notify_four
);

/// Connects `n` clients (spread over the replicas), then joins them all to `room` at once
/// as `s0`, `s1`, ...; returns each with its `joined`.
async fn storm(c: &Cluster, room: &str, n: usize) -> Vec<(Client, Value)> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(c.client(i).await);
    }
    let joins = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut cl)| async move {
            let joined = cl.join(room, &format!("s{i}")).await;
            (cl, joined)
        });
    join_all(joins).await
}

/// Many members join one room at once: for each, the members its `joined` lists and the
/// join notices it receives afterwards are disjoint, and together they are everyone.
async fn joined_and_notices_never_overlap_in_a_join_storm(c: &Cluster) {
    let room = "storm";
    let n = 80;
    let joined = storm(c, room, n).await;
    let everyone: BTreeSet<String> = (0..n).map(|i| format!("s{i}")).collect();
    let checks = joined.into_iter().map(|(mut cl, joined)| {
        let everyone = everyone.clone();
        async move {
            let listed: BTreeSet<String> = names_in(&joined).into_iter().collect();
            let mut known = listed.clone();
            while known != everyone {
                let p = cl.next_of_type("presence").await;
                assert_eq!(p["event"], "join", "{p}");
                let who = name_of(&p["user"]);
                assert!(
                    !listed.contains(&who),
                    "{who} was in joined and announced again: {joined} / {p}"
                );
                assert!(known.insert(who.clone()), "{who} announced twice");
            }
            cl
        }
    });
    // Every client stays connected until each has checked (a client that leaves early
    // would be announced); then nothing more arrives: no late duplicate notice.
    let mut clients = join_all(checks).await;
    join_all(
        clients
            .iter_mut()
            .map(|cl| cl.assert_silent(Duration::from_millis(300))),
    )
    .await;
}
on_both_buses!(joined_and_notices_never_overlap_in_a_join_storm, 2);

fn storm_config(cfg: &mut roomcast::Config) {
    cfg.presence.members_in_join = 10;
    cfg.presence.notify_max_members = 20;
    // No summary during the storm: the frames counted are `joined` and notices only, so
    // the count does not depend on how long the storm takes.
    cfg.presence.summary_interval = Duration::from_secs(3600);
}

/// What `n` clients joining one room at once receive in total (frames, bytes of text),
/// once every client is joined and the room has gone quiet.
async fn storm_totals(c: &Cluster, room: &str, n: usize) -> (usize, usize) {
    let joined = storm(c, room, n).await;
    let reads = joined.into_iter().map(|(mut cl, joined)| async move {
        let (mut frames, mut bytes) = (1, joined.to_string().len());
        while let Some(f) = cl.try_next_json(Duration::from_millis(500)).await {
            frames += 1;
            bytes += f.to_string().len();
        }
        (frames, bytes)
    });
    join_all(reads)
        .await
        .into_iter()
        .fold((0, 0), |(f, b), (f1, b1)| (f + f1, b + b1))
}

/// A join storm's frames and bytes grow linearly with the number of members: doubling
/// the members at most (2.5x with slack) doubles them. Every member listed in every
/// `joined` and notified of every join would quadruple them.
async fn join_storm_bytes_grow_linearly(c: &Cluster) {
    let (f1, b1) = storm_totals(c, "storm-a", 60).await;
    let (f2, b2) = storm_totals(c, "storm-b", 120).await;
    let (fr, br) = (f2 as f64 / f1 as f64, b2 as f64 / b1 as f64);
    eprintln!("storm 60: {f1} frames {b1} B; storm 120: {f2} frames {b2} B; x{fr:.2} x{br:.2}");
    assert!(
        fr <= 2.5,
        "frames grew x{fr:.2} for 2x members ({f1} -> {f2})"
    );
    assert!(
        br <= 2.5,
        "bytes grew x{br:.2} for 2x members ({b1} -> {b2})"
    );
}
on_both_buses!(join_storm_bytes_grow_linearly, 2, storm_config);
