//! The confd side: the template resource (`keys`, `prefix`, `src`) and the template, whose
//! `{{range gets "/prefix/*"}}` / `{{range getvs ...}}` loop inside a backend section makes that
//! backend etcd-discovered, its `server` line inside the loop the backend's server settings.
//! Loops over `lsdir` (one backend per directory) are `tree.rs`'s: this scanner leaves the
//! lines it names alone.

use std::collections::{HashMap, HashSet};

use super::haproxy::{Kind, Line, section_kind, words};
use super::{MigrateError, Source, Warn, Warning};

#[derive(Debug, Default)]
pub(super) struct Confd {
    /// `[template] prefix` (prepended to keys, as confd does).
    pub(super) prefix: String,
    pub(super) keys: Vec<(String, usize)>,
    pub(super) keys_line: usize,
}

pub(super) fn toml_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

pub(super) fn confd_resource(src: &Source, w: &mut Warn) -> Result<Confd, MigrateError> {
    let err = |message: String| MigrateError::Input {
        file: src.name.to_string(),
        message,
    };
    let t: toml::Table = toml::from_str(src.text).map_err(|e| err(e.to_string()))?;
    let tpl = t
        .get("template")
        .and_then(|v| v.as_table())
        .ok_or_else(|| err("no [template] table (not a confd template resource?)".into()))?;
    for k in t.keys().filter(|k| *k != "template") {
        w.at(
            toml_line(src.text, k),
            k.clone(),
            "not a confd template resource key; ignored",
        );
    }
    let mut c = Confd {
        keys_line: toml_line(src.text, "keys"),
        ..Confd::default()
    };
    for (k, v) in tpl {
        match k.as_str() {
            // Replaced by Switchyard itself: no file to write, no reload, `switchyard check`.
            "src" | "dest" | "reload_cmd" | "check_cmd" | "owner" | "mode" | "uid" | "gid" => {}
            "prefix" => c.prefix = v.as_str().unwrap_or("").trim_end_matches('/').to_string(),
            "keys" => {
                let keys = v
                    .as_array()
                    .ok_or_else(|| err("[template] keys must be an array".into()))?;
                for key in keys {
                    let key = key
                        .as_str()
                        .ok_or_else(|| err("[template] keys must be strings".into()))?;
                    c.keys.push((key.to_string(), c.keys_line));
                }
            }
            _ => w.at(
                toml_line(src.text, k),
                format!("[template] {k}"),
                "not supported by Switchyard; ignored",
            ),
        }
    }
    Ok(c)
}

/// What a confd template says about one backend section.
#[derive(Debug, Default)]
pub(super) struct TemplateBackend {
    /// The etcd prefix of the range loop, and the line of the loop.
    pub(super) prefix: Option<(String, usize)>,
    /// The server line inside the loop: its line and its words.
    pub(super) server: Option<Line>,
    /// Names of literal server lines outside any loop (static servers).
    pub(super) static_names: HashSet<String>,
}

/// One `{{ ... }}` action or a run of text.
pub(super) enum Seg {
    Text(String),
    Action(String),
}

pub(super) fn segments(line: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push(Seg::Text(rest[..start].to_string()));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(Seg::Text(rest[start..].to_string()));
            return out;
        };
        let inner = after[..end]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push(Seg::Action(inner.to_string()));
        rest = &after[end + 2..];
    }
    out.push(Seg::Text(rest.to_string()));
    out
}

/// The quoted key after `gets`/`getvs` in a range action.
pub(super) fn range_key(action: &str) -> Option<String> {
    let pos = action
        .find("getvs \"")
        .map(|p| p + 7)
        .or_else(|| action.find("gets \"").map(|p| p + 6))?;
    let rest = &action[pos..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Reads the template's backends; `lsdir_lines` (the lines of lsdir loops) are left to
/// `tree.rs`, and the keys below `tree_dirs` count as used.
pub(super) fn scan_template(
    src: &Source,
    confd: &Confd,
    confd_file: &str,
    lsdir_lines: &HashSet<usize>,
    tree_dirs: &[String],
    w: &mut Warn,
) -> HashMap<String, TemplateBackend> {
    let mut out: HashMap<String, TemplateBackend> = HashMap::new();
    // Open blocks: Some(prefix) for a gets/getvs range.
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut section: Option<(Kind, String)> = None;
    for (i, raw) in src.text.lines().enumerate() {
        let no = i + 1;
        let mut text = String::new();
        let mut range_at_text: Option<Option<String>> = None;
        for seg in segments(raw) {
            match seg {
                Seg::Text(t) => {
                    if range_at_text.is_none() && !t.trim().is_empty() {
                        range_at_text = Some(stack.iter().rev().flatten().next().cloned());
                    }
                    text.push_str(&t);
                }
                Seg::Action(a) => {
                    let first = a.split_whitespace().next().unwrap_or("");
                    match first {
                        "range" if lsdir_lines.contains(&no) => stack.push(None),
                        "range" => {
                            let key = range_key(&a);
                            let prefix = key.as_ref().map(|k| {
                                let k = k.trim_end_matches('*').trim_end_matches('/');
                                format!("{}{k}", confd.prefix)
                            });
                            match (&prefix, &section) {
                                (Some(p), Some((Kind::Backend | Kind::Listen, name))) => {
                                    let b = out.entry(name.clone()).or_default();
                                    if b.prefix.is_some() {
                                        w.at(no, format!("{{{{{a}}}}}"), "a second range loop in one backend: Switchyard watches one etcd_prefix per backend; only the first is used");
                                    } else {
                                        b.prefix = Some((p.clone(), no));
                                    }
                                    if !confd.keys.is_empty()
                                        && !confd.keys.iter().any(|(k, _)| {
                                            p.starts_with(&format!("{}{k}", confd.prefix))
                                        })
                                    {
                                        w.at(no, format!("{{{{{a}}}}}"), "this key is not below any of the confd resource's keys; used anyway");
                                    }
                                }
                                (Some(_), _) => w.at(
                                    no,
                                    format!("{{{{{a}}}}}"),
                                    "range loop outside a backend section; not migrated",
                                ),
                                (None, _) => w.at(
                                    no,
                                    format!("{{{{{a}}}}}"),
                                    "only `range gets \"/prefix/*\"` and `range getvs \"/prefix/*\"` loops map to etcd_prefix; not migrated",
                                ),
                            }
                            stack.push(prefix);
                        }
                        "if" | "with" | "block" | "define" => stack.push(None),
                        "end" => {
                            stack.pop();
                        }
                        "else" => {}
                        _ => {
                            if range_at_text.is_none() {
                                range_at_text = Some(stack.iter().rev().flatten().next().cloned());
                            }
                            text.push_str("@TEMPLATE@");
                        }
                    }
                }
            }
        }
        let l = Line {
            no,
            words: words(&text),
        };
        let Some(first) = l.words.first() else {
            continue;
        };
        if let Some(kind) = section_kind(first) {
            section = Some((kind, l.word(1).to_string()));
            continue;
        }
        if first != "server" || lsdir_lines.contains(&no) {
            continue;
        }
        let Some((Kind::Backend | Kind::Listen, name)) = &section else {
            continue;
        };
        let b = out.entry(name.clone()).or_default();
        match range_at_text.flatten() {
            Some(_) if b.server.is_none() => b.server = Some(l),
            Some(_) => {}
            None => {
                b.static_names.insert(l.word(1).to_string());
            }
        }
    }
    for (key, line) in &confd.keys {
        let full = format!("{}{key}", confd.prefix);
        let used = out
            .values()
            .filter_map(|b| b.prefix.as_ref().map(|(p, _)| p))
            .chain(tree_dirs)
            .any(|p| p.starts_with(&full) || full.starts_with(p.as_str()));
        if !used {
            w.out.push(Warning {
                file: confd_file.to_string(),
                line: *line,
                directive: format!("keys {key:?}"),
                why: "no range loop over this key inside a backend of the template; not migrated"
                    .to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_segments_and_range_keys() {
        assert_eq!(
            range_key(r#"range gets "/testservice/backend/*""#).as_deref(),
            Some("/testservice/backend/*")
        );
        assert_eq!(
            range_key(r#"range $i, $v := getvs "/app/servers/*""#).as_deref(),
            Some("/app/servers/*")
        );
        assert!(range_key(r#"range lsdir "/services""#).is_none());
        assert_eq!(segments("a {{- .Key -}} b").len(), 3);
    }
}
