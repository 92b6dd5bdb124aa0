//! A list cut to a limit that remembers how much it left out: no list is ever cut
//! silently.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed<T> {
    pub total: usize,
    pub omitted: usize,
    pub items: Vec<T>,
}

impl<T: Clone> Listed<T> {
    /// The first `limit` of `all` (all of it for `None`).
    pub fn cut(all: &[T], limit: Option<usize>) -> Self {
        let shown = limit.map_or(all.len(), |l| l.min(all.len()));
        Self {
            total: all.len(),
            omitted: all.len() - shown,
            items: all[..shown].to_vec(),
        }
    }
}

impl<T> Listed<T> {
    /// For lists whose items were collected with a cap and counted in full.
    pub fn from_parts(items: Vec<T>, total: usize) -> Self {
        Self {
            omitted: total.saturating_sub(items.len()),
            total,
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_lists_count_what_they_leave_out() {
        let all: Vec<u32> = (0..10).collect();
        let listed = Listed::cut(&all, Some(3));
        assert_eq!(
            (listed.items.len(), listed.total, listed.omitted),
            (3, 10, 7)
        );
        assert_eq!(Listed::cut(&all, None).omitted, 0);
        assert_eq!(Listed::from_parts(vec![1, 2], 5).omitted, 3);
    }
}
