//! A connection's per-room state: at most `limits.max_rooms_per_connection` entries,
//! so a small vector (searched linearly) beats a hash map in memory and speed. The first
//! room is kept inline: most connections are in one room, and the fan-out then finds
//! the member's entry without following another pointer (and an idle connection has no
//! allocation for it).

use std::sync::Arc;

use smallvec::SmallVec;

#[derive(Debug)]
pub(super) struct RoomMap<V>(SmallVec<[(Arc<str>, V); 1]>);

impl<V> Default for RoomMap<V> {
    fn default() -> Self {
        RoomMap(SmallVec::new())
    }
}

impl<V> RoomMap<V> {
    fn position(&self, room: &str) -> Option<usize> {
        // A room's frames and the session's entry usually share one allocation of the
        // name (`Rooms::name`): the pointers match and the bytes are never read.
        self.0
            .iter()
            .position(|(r, _)| std::ptr::eq(&**r, room) || **r == *room)
    }
    pub(super) fn contains_key(&self, room: &str) -> bool {
        self.position(room).is_some()
    }
    pub(super) fn get(&self, room: &str) -> Option<&V> {
        self.position(room).map(|i| &self.0[i].1)
    }
    pub(super) fn get_mut(&mut self, room: &str) -> Option<&mut V> {
        self.position(room).map(|i| &mut self.0[i].1)
    }
    pub(super) fn insert(&mut self, room: Arc<str>, value: V) {
        match self.position(&room) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((room, value)),
        }
    }
    pub(super) fn remove(&mut self, room: &str) -> Option<(Arc<str>, V)> {
        self.position(room).map(|i| self.0.swap_remove(i))
    }
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> IntoIterator for RoomMap<V> {
    type Item = (Arc<str>, V);
    type IntoIter = smallvec::IntoIter<[(Arc<str>, V); 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
