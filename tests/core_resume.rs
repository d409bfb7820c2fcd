//! Behaviour: a client that reconnects (to any replica) and joins with `since` gets exactly
//! the messages it missed, in order, then live ones; `recovered` tells whether any were lost.

#[macro_use]
mod common;

use common::*;

fn texts(messages: &[Value]) -> Vec<String> {
    messages.iter().map(text_of).collect()
}

/// A reader misses three messages while away, reconnects to the other replica and resumes
/// from its last message id: it gets exactly the missed ones in order, then live ones.
async fn resume_after_reconnect_has_no_gap_or_duplicate(c: &Cluster) {
    let room = "resume";
    let mut writer = c.client(1).await;
    writer.join(room, "writer").await;
    let mut reader = c.client(0).await;
    reader.join(room, "reader").await;

    for k in 1..=3 {
        writer.send(room, &format!("m{k}")).await;
    }
    let seen = [
        reader.expect("message").await,
        reader.expect("message").await,
        reader.expect("message").await,
    ];
    assert_eq!(texts(&seen), ["m1", "m2", "m3"]);
    let cursor = id_of(&seen[2]);
    reader.close().await;
    writer.wait_presence(room, "leave", "reader").await;

    let mut missed_ids = Vec::new();
    for k in 4..=6 {
        missed_ids.push(id_of(&writer.send(room, &format!("m{k}")).await));
    }

    let mut reader = c.client(1).await;
    let joined = reader.join_since(room, "reader", &cursor).await;
    assert_eq!(joined["recovered"], true, "nothing was trimmed: {joined}");
    let replay = [
        reader.expect("message").await,
        reader.expect("message").await,
        reader.expect("message").await,
    ];
    assert_eq!(texts(&replay), ["m4", "m5", "m6"]);
    assert_eq!(replay.iter().map(id_of).collect::<Vec<_>>(), missed_ids);

    let live = writer.send(room, "m7").await;
    let m7 = reader.expect("message").await;
    assert_eq!((id_of(&m7), text_of(&m7)), (id_of(&live), "m7".to_string()));
    reader.assert_silent(Duration::from_millis(300)).await;
}
on_both_buses!(resume_after_reconnect_has_no_gap_or_duplicate, 2);

/// A member that received no message keeps `joined.offset` as its cursor: resuming from it
/// replays only what came after its join, not the older history.
async fn resume_from_join_offset_replays_only_newer_messages(c: &Cluster) {
    let room = "offsets";
    let mut writer = c.client(1).await;
    writer.join(room, "writer").await;
    writer.send(room, "old1").await;
    let old2 = writer.send(room, "old2").await;

    let mut reader = c.client(0).await;
    let joined = reader.join(room, "reader").await;
    assert_eq!(
        joined["offset"], old2["id"],
        "offset is the newest message id: {joined}"
    );
    let cursor = joined["offset"].as_str().expect("offset").to_string();
    reader.close().await;
    writer.wait_presence(room, "leave", "reader").await;

    let new = writer.send(room, "new").await;
    let mut reader = c.client(1).await;
    let joined = reader.join_since(room, "reader", &cursor).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let m = reader.expect("message").await;
    assert_eq!((id_of(&m), text_of(&m)), (id_of(&new), "new".to_string()));
    reader.assert_silent(Duration::from_millis(300)).await;
}
on_both_buses!(resume_from_join_offset_replays_only_newer_messages, 2);

fn tiny_history(cfg: &mut roomcast::Config) {
    cfg.history.size = 5;
}

/// When the history was trimmed while the client was away, `recovered` is false and only
/// what is left follows, in order, ending with the newest, then live messages.
async fn resume_after_history_trimmed_is_not_recovered(c: &Cluster) {
    const AWAY: usize = 250;
    let room = "forgetful";
    let mut writer = c.client(1).await;
    writer.join(room, "writer").await;
    let mut reader = c.client(0).await;
    reader.join(room, "reader").await;
    writer.send(room, "seen").await;
    let cursor = id_of(&reader.expect("message").await);
    reader.close().await;
    writer.wait_presence(room, "leave", "reader").await;

    let texts_away: Vec<String> = (0..AWAY).map(|k| format!("away{k}")).collect();
    let ids_away = writer.send_many(room, &texts_away).await;

    let mut reader = c.client(1).await;
    let joined = reader.join_since(room, "reader", &cursor).await;
    assert_eq!(
        joined["recovered"], false,
        "{AWAY} messages cannot fit in 5: {joined}"
    );
    let replay = reader.messages_until(&texts_away[AWAY - 1]).await;
    let replay_ids: Vec<String> = replay.iter().map(id_of).collect();
    assert!(
        replay_ids.len() < AWAY,
        "everything came back although history is 5"
    );
    assert_eq!(
        replay_ids,
        ids_away[AWAY - replay_ids.len()..],
        "the replay is not the newest messages in order"
    );

    let live = writer.send(room, "live").await;
    let m = reader.next_message().await;
    assert_eq!((id_of(&m), text_of(&m)), (id_of(&live), "live".to_string()));
}
on_both_buses!(
    resume_after_history_trimmed_is_not_recovered,
    2,
    tiny_history
);
