//! A subtree of a map keyed by relative path (`a/b/c`): what a save's paths cover, found in
//! O(log n + k) instead of a pass over every path kdev knows (100,000 on a big monorepo, for
//! every save).

use std::collections::BTreeMap;

/// Whether relative path `p` is `prefix` or below it (`""` holds everything).
pub fn is_under(p: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (p.starts_with(prefix)
            && (p.len() == prefix.len() || p.as_bytes()[prefix.len()] == b'/'))
}

/// The keys of `map` at or below `prefix`.
///
/// Not one range: `a/b-c` and `a/b.txt` sort between `a/b` and `a/b/x` (`-` and `.` come before
/// `/`), so it is `a/b` itself, then the range from `a/b/`.
pub fn keys_under<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &str,
) -> Box<dyn Iterator<Item = &'a String> + 'a> {
    if prefix.is_empty() {
        return Box::new(map.keys());
    }
    let exact = map.get_key_value(prefix).map(|(k, _)| k);
    let below = format!("{prefix}/");
    let children = map
        .range(below.clone()..)
        .map(|(k, _)| k)
        .take_while(move |k| k.starts_with(&below));
    Box::new(exact.into_iter().chain(children))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: seeded, so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn path(&mut self) -> String {
            // Names that sort on both sides of '/': '-', '.', '0', 'a'.
            const PARTS: [&str; 8] = ["a", "b", "a-b", "a.go", "b0", "a0", "-", "ab"];
            let depth = 1 + self.next() % 4;
            (0..depth)
                .map(|_| PARTS[(self.next() % PARTS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join("/")
        }
    }

    #[test]
    fn keys_under_equals_a_full_pass() {
        let seed = std::env::var("KDEV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        let mut rng = Rng(seed);
        for round in 0..200 {
            let map: BTreeMap<String, ()> =
                (0..rng.next() % 300).map(|_| (rng.path(), ())).collect();
            for _ in 0..20 {
                let prefix = if rng.next().is_multiple_of(10) {
                    String::new()
                } else {
                    rng.path()
                };
                let mut fast: Vec<&String> = keys_under(&map, &prefix).collect();
                fast.sort();
                let slow: Vec<&String> = map.keys().filter(|k| is_under(k, &prefix)).collect();
                assert_eq!(
                    fast, slow,
                    "prefix {prefix:?}, round {round}: replay with KDEV_TEST_SEED={seed}"
                );
            }
        }
    }

    #[test]
    fn is_under_is_about_path_components() {
        assert!(is_under("a/b", "a"));
        assert!(is_under("a", "a"));
        assert!(is_under("a", ""));
        assert!(!is_under("ab", "a"));
        assert!(!is_under("a-b/c", "a"));
        assert!(!is_under("a", "a/b"));
    }
}
