//! A repo's read level from its name (`_ddd_` suffix, `pub_` prefix).

/// The widest audience a repo's read permission grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    Owner,
    Account,
    Everyone,
}

/// StaticBackend's default for repos without a `_ddd_` suffix.
const DEFAULT_DIGITS: [u8; 3] = [7, 4, 0];

/// Read level of a repo from its table name: `_\d\d\d_$` gives the owner, account and everyone
/// digits (no suffix means 740); a digit reads when it has bit 4; `pub_` repos are public.
pub fn read_level(repo: &str) -> ReadLevel {
    if repo.starts_with("pub_") {
        return ReadLevel::Everyone;
    }
    let digits = suffix_digits(repo).unwrap_or(DEFAULT_DIGITS);
    let reads = |d: u8| d & 4 != 0;
    if reads(digits[2]) {
        ReadLevel::Everyone
    } else if reads(digits[1]) {
        ReadLevel::Account
    } else {
        ReadLevel::Owner
    }
}

fn suffix_digits(repo: &str) -> Option<[u8; 3]> {
    let bytes = repo.as_bytes();
    let n = bytes.len();
    if n < 5 || bytes[n - 1] != b'_' || bytes[n - 5] != b'_' {
        return None;
    }
    let mut digits = [0u8; 3];
    for (slot, &b) in digits.iter_mut().zip(&bytes[n - 4..n - 1]) {
        if !b.is_ascii_digit() {
            return None;
        }
        *slot = b - b'0';
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_from_names() {
        assert_eq!(read_level("tasks_760_"), ReadLevel::Account);
        assert_eq!(read_level("tasks_700_"), ReadLevel::Owner);
        assert_eq!(read_level("tasks_744_"), ReadLevel::Everyone);
        assert_eq!(read_level("tasks"), ReadLevel::Account);
        assert_eq!(read_level("pub_tasks_700_"), ReadLevel::Everyone);
        assert_eq!(read_level("tasks_704_"), ReadLevel::Everyone);
        assert_eq!(read_level("tasks_7a0_"), ReadLevel::Account);
        assert_eq!(read_level("_700_"), ReadLevel::Owner);
        assert_eq!(read_level("700_"), ReadLevel::Account);
        assert_eq!(read_level("x_999_"), ReadLevel::Owner);
        assert_eq!(read_level("x_300_"), ReadLevel::Owner);
    }
}
