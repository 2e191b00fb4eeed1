//! The fleet's host list: `--hosts h1,h2,...` or `--hosts FILE` (one host per line,
//! `#` comments). A host is whatever `ssh` accepts as a destination (an alias from the
//! user's ssh config, `host`, `user@host`), so it is passed through untouched, except
//! that it may not start with `-` (ssh would read it as an option) or contain
//! whitespace or control characters (it would split or hide in a command line).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("host {0:?} is not a valid ssh destination (no leading '-', no spaces or control characters)")]
    BadHost(String),
    #[error("host {0:?} is listed twice")]
    Duplicate(String),
    #[error("the host list is empty")]
    Empty,
    #[error("cannot read host file {path:?}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `spec` as a file when one exists at that path, else as a comma-separated list.
pub fn parse_hosts(spec: &str) -> Result<Vec<String>, HostsError> {
    let path = Path::new(spec);
    let text;
    let entries: Vec<&str> = if !spec.contains(',') && path.is_file() {
        text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
            path: spec.to_string(),
            source,
        })?;
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        spec.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect()
    };
    let mut hosts: Vec<String> = Vec::with_capacity(entries.len());
    for h in entries {
        let ok = !h.starts_with('-') && h.chars().all(|c| !c.is_whitespace() && !c.is_control());
        if !ok {
            return Err(HostsError::BadHost(h.to_string()));
        }
        if hosts.iter().any(|x| x == h) {
            return Err(HostsError::Duplicate(h.to_string()));
        }
        hosts.push(h.to_string());
    }
    if hosts.is_empty() {
        return Err(HostsError::Empty);
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_list() {
        assert_eq!(
            parse_hosts("a, b,root@c").unwrap(),
            vec!["a", "b", "root@c"]
        );
    }

    #[test]
    fn file_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, "# fleet\nweb1\n\nweb2  # second\n").unwrap();
        assert_eq!(
            parse_hosts(f.to_str().unwrap()).unwrap(),
            vec!["web1", "web2"]
        );
    }

    #[test]
    fn rejects_option_injection_and_duplicates() {
        assert!(matches!(
            parse_hosts("-oProxyCommand=x"),
            Err(HostsError::BadHost(_))
        ));
        assert!(matches!(parse_hosts("a,a"), Err(HostsError::Duplicate(_))));
        assert!(matches!(parse_hosts(" , "), Err(HostsError::Empty)));
        assert!(matches!(parse_hosts("a\tb"), Err(HostsError::BadHost(_))));
    }
}
