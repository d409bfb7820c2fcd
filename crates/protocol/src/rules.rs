//! The rules every replica and client apply alike: room names, display names, and the
//! color of a name (a hash, so every replica agrees without asking the others).

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::frames::FrameError;

/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest display name after trimming, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Whether `room` is a valid room name: 1-64 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_CHARS
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks a room name (see [`is_valid_room`]), as an `invalid_room` refusal.
pub fn validate_room(room: &str) -> Result<(), FrameError> {
    if is_valid_room(room) {
        Ok(())
    } else {
        Err(FrameError::new(
            ErrorCode::InvalidRoom,
            "a room name is 1-64 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// Trims a display name and checks it: 1-32 printable characters.
pub fn normalize_name(name: &str) -> Result<String, FrameError> {
    let trimmed = name.trim();
    let count = trimmed.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || trimmed.chars().any(char::is_control) {
        return Err(FrameError::new(
            ErrorCode::InvalidName,
            "a display name is 1-32 printable characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// A member as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The token's `sub` (jwt mode); absent for anonymous users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    pub color: String,
}

impl User {
    /// An anonymous user, with the color derived from the (already normalized) name.
    pub fn new(name: String) -> Self {
        let color = color_for(&name).to_string();
        Self {
            id: None,
            name,
            color,
        }
    }

    /// An authenticated user: the color derives from the id, so two users who chose the
    /// same name still look different.
    pub fn with_id(id: String, name: String) -> Self {
        let color = color_for(&id).to_string();
        Self {
            id: Some(id),
            name,
            color,
        }
    }
}

const PALETTE: [&str; 16] = [
    "#e6194b", "#3cb44b", "#b8860b", "#4363d8", "#f58231", "#911eb4", "#0e9aa7", "#d6336c",
    "#2f9e44", "#9c36b5", "#1c7ed6", "#e8590c", "#5c940d", "#c2255c", "#087f5b", "#5f3dc4",
];

/// The color of a display name: FNV-1a over its bytes, so every replica agrees.
pub fn color_for(name: &str) -> &'static str {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PALETTE[(hash % PALETTE.len() as u32) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_and_name_rules() {
        assert!(validate_room("general").is_ok());
        assert!(validate_room("a.b_c:d-9").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room("has space").is_err());
        assert!(validate_room(&"x".repeat(64)).is_ok());
        assert!(validate_room(&"x".repeat(65)).is_err());
        assert!(validate_room("é").is_err());
        assert_eq!(normalize_name("  alice ").unwrap(), "alice");
        assert!(normalize_name("   ").is_err());
        assert!(normalize_name(&"é".repeat(32)).is_ok());
        assert!(normalize_name(&"é".repeat(33)).is_err());
        assert!(normalize_name("a\u{7}b").is_err());
    }

    #[test]
    fn color_is_stable() {
        assert_eq!(color_for("alice"), color_for("alice"));
        assert!(color_for("bob").starts_with('#'));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_room_is_valid_iff_1_to_64_allowed_characters(room in "[a-c.:_ *é-]{0,3}|[a-z]{60,70}") {
            let allowed = room.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c));
            let expected = (1..=MAX_ROOM_CHARS).contains(&room.len()) && allowed;
            prop_assert_eq!(validate_room(&room).is_ok(), expected);
            prop_assert_eq!(is_valid_room(&room), expected);
        }

        #[test]
        fn a_normalized_name_is_trimmed_printable_and_stable(name in "\\PC{0,40}|[ a\\x07é]{0,40}") {
            if let Ok(n) = normalize_name(&name) {
                prop_assert_eq!(n.as_str(), name.trim());
                prop_assert!((1..=MAX_NAME_CHARS).contains(&n.chars().count()));
                prop_assert!(!n.chars().any(char::is_control));
                prop_assert_eq!(normalize_name(&n), Ok(n.clone()));
            } else {
                let t = name.trim();
                let count = t.chars().count();
                prop_assert!(count == 0 || count > MAX_NAME_CHARS || t.chars().any(char::is_control));
            }
        }

        #[test]
        fn a_color_is_one_of_the_palette(name in "\\PC{0,20}") {
            prop_assert!(PALETTE.contains(&color_for(&name)));
            prop_assert_eq!(User::new(name.clone()).color, color_for(&name));
        }
    }
}
