//! [`RoutePattern`]: the paths a rule matches.

use crate::ConfigError;
use crate::key::normalize_path;

/// A route pattern: exact, template or prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePattern {
    text: String,
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    Exact(String),
    Template(Vec<Segment>),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl RoutePattern {
    /// Parses `/login`, `/users/{id}`, `/files/{*rest}` or `/api/*`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `path` when the pattern does not start with `/` or has a brace
    /// out of place.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::Invalid {
            field: "path",
            value: text.to_owned(),
            reason,
        };
        if !text.starts_with('/') {
            return Err(invalid("must start with '/'"));
        }
        let kind = if let Some(prefix) = text.strip_suffix("/*") {
            if prefix.contains(['{', '}', '*']) {
                return Err(invalid(
                    "a prefix pattern ends with /* and has no other wildcard",
                ));
            }
            PatternKind::Prefix(normalize_path(prefix).trim_end_matches('/').to_owned())
        } else if text.contains(['{', '}']) {
            // Empty segments are dropped as the request path's are (`//`, a trailing `/`):
            // `/users/{id}/` matches `/users/42`, as `/login/` matches `/login`.
            let raw: Vec<&str> = text.split('/').filter(|seg| !seg.is_empty()).collect();
            let mut segments = Vec::new();
            for (i, seg) in raw.iter().enumerate() {
                let segment = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if name.starts_with('*') && i + 1 == raw.len() && name.len() > 1 => {
                        Segment::Rest
                    }
                    Some(name) if !name.is_empty() && !name.contains(['{', '}', '*']) => {
                        Segment::Param
                    }
                    Some(_) => {
                        return Err(invalid(
                            "a parameter is {name} or, last, {*name}, alone in its segment",
                        ));
                    }
                    None if seg.contains(['{', '}']) => {
                        return Err(invalid("a parameter must be a whole segment: /{name}/"));
                    }
                    None => Segment::Literal((*seg).to_owned()),
                };
                segments.push(segment);
            }
            PatternKind::Template(segments)
        } else {
            if text.contains('*') {
                return Err(invalid("'*' is only allowed as a trailing /* (a prefix)"));
            }
            PatternKind::Exact(normalize_path(text).into_owned())
        };
        Ok(Self {
            text: text.to_owned(),
            kind,
        })
    }

    /// The pattern as written.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the normalized `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.kind {
            PatternKind::Exact(exact) => path == exact,
            PatternKind::Prefix(prefix) => {
                path == prefix
                    || (path.starts_with(prefix.as_str())
                        && path.as_bytes().get(prefix.len()) == Some(&b'/'))
                    || (prefix.is_empty() && path.starts_with('/'))
            }
            PatternKind::Template(segments) => {
                let mut parts = path.split('/').skip(1);
                for segment in segments {
                    match segment {
                        Segment::Rest => return true,
                        Segment::Param => {
                            if parts.next().is_none_or(str::is_empty) {
                                return false;
                            }
                        }
                        Segment::Literal(literal) => {
                            if parts.next() != Some(literal.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}
