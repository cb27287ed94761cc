//! Misspelt keys and values: turns serde's "unknown field `lisen`, expected one of `listen`,
//! `token`" (from `deny_unknown_fields` in `file.rs`) or "unknown variant" into an error that
//! names the key with its table (`admin.lisen`) and, when one expected name is close, asks
//! "did you mean `listen`?". TOML's own report (line, column, the line itself) follows.

/// A suggestion is made when at most this share of the written name's characters must change
/// (and always for one): `lisen` -> `listen`, `intr` -> `inter`, but `foo` suggests nothing.
const MAX_EDIT_SHARE: usize = 3;

/// The parse error's text, led by the key and a suggestion when it is an unknown name.
pub(super) fn explain(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message();
    let (what, rest) = if let Some(r) = msg.strip_prefix("unknown field ") {
        ("key", r)
    } else if let Some(r) = msg.strip_prefix("unknown variant ") {
        ("value", r)
    } else {
        return e.to_string();
    };
    let names = quoted(rest);
    let Some((written, expected)) = names.split_first() else {
        return e.to_string();
    };
    let start = e.span().map(|s| s.start).unwrap_or(0);
    let table = table_at(text, start);
    // A value's key is what its line has before the `=`.
    let name = match what {
        "key" => written.to_string(),
        _ => key_at(text, start).unwrap_or_default(),
    };
    let key = [table.as_str(), name.as_str()]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    let subject = match what {
        "key" => "unknown key".to_string(),
        _ => format!("unknown value {written:?}"),
    };
    let hint = match closest(written, expected) {
        Some(name) => format!("; did you mean `{name}`?"),
        None if expected.is_empty() => String::new(),
        None => format!("; expected one of {}", expected.join(", ")),
    };
    format!("{key}: {subject}{hint}\n{e}")
}

/// The key on the line that holds byte `offset` (`api` in `api = "v4"`), if it has one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line = before.rsplit('\n').next()?;
    let (key, _) = line.split_once('=')?;
    Some(key.trim().trim_matches('"').to_string())
}

/// The backtick-quoted names in serde's message, in order (the written one first).
fn quoted(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The expected name nearest to `written` (Damerau-Levenshtein: a swap of two letters is one
/// edit), if it is near enough and no other is as near (`v4` is as near `v2` as `v3`).
fn closest<'a>(written: &str, expected: &[&'a str]) -> Option<&'a str> {
    let limit = (written.chars().count() / MAX_EDIT_SHARE).max(1);
    let near: Vec<(usize, &str)> = expected
        .iter()
        .map(|name| (strsim::damerau_levenshtein(written, name), *name))
        .filter(|(d, _)| *d <= limit)
        .collect();
    let best = near.iter().map(|(d, _)| *d).min()?;
    match near.iter().filter(|(d, _)| *d == best).collect::<Vec<_>>()[..] {
        [(_, name)] => Some(name),
        _ => None,
    }
}

/// The dotted name of the table that holds byte `offset` of `text`: the last `[header]` or
/// `[[header]]` line before it (`""` at the top level).
fn table_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let l = l.split('#').next().unwrap_or(l).trim();
            l.trim_start_matches('[')
                .trim_end_matches(']')
                .split('.')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        crate::config::Config::from_toml(text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn misspelt_key_is_named_with_its_table_and_a_suggestion() {
        let e = err("[admin]\nlisen = \"127.0.0.1:1\"\n");
        assert!(
            e.starts_with("admin.lisen: unknown key; did you mean `listen`?"),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
        // A misspelt table: its header is the line the error points into.
        let e = err("[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n[backend.chek]\n");
        assert!(
            e.starts_with("backend.chek: unknown key; did you mean `check`?"),
            "{e}"
        );
        let e = err(
            "[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n[backend.check]\nintr = \"1s\"\n",
        );
        assert!(
            e.starts_with("backend.check.intr: unknown key; did you mean `inter`?"),
            "{e}"
        );
    }

    #[test]
    fn far_key_lists_what_is_expected_and_bad_value_gets_a_suggestion() {
        let e = err("[admin]\nfrobnicate = 1\n");
        assert!(
            e.starts_with("admin.frobnicate: unknown key; expected one of listen, token"),
            "{e}"
        );
        let e = err(
            "[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\nbalance = \"roundrobn\"\n",
        );
        assert!(
            e.starts_with(
                "backend.balance: unknown value \"roundrobn\"; did you mean `roundrobin`?"
            ),
            "{e}"
        );
        let e = err("[etcd]\napi = \"v4\"\n");
        assert!(
            e.starts_with("etcd.api: unknown value \"v4\"; expected one of v2, v3"),
            "{e}"
        );
    }

    #[test]
    fn closest_needs_a_near_name() {
        assert_eq!(
            closest("treads", &["threads", "shutdown_grace"]),
            Some("threads")
        );
        assert_eq!(closest("tokne", &["listen", "token"]), Some("token"));
        assert_eq!(closest("xyz", &["listen", "token"]), None);
        assert_eq!(closest("v4", &["v2", "v3"]), None);
    }
}
