//! Subset selectors: application, service, health, locality and Kubernetes
//! label selectors (`matchLabels` and `matchExpressions` with `In`, `NotIn`,
//! `Exists`, `DoesNotExist`), plus the Kubernetes string syntax
//! (`env=prod,version in (v1,v2),!canary,tier!=db`).
//!
//! [`Selector::matches`] is the reference semantics, used by watchers on
//! single changes; [`crate::index::Index::select`] answers the same question
//! for the whole registry with bitmaps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{validate, Health, Instance, ServiceDef};

/// One label requirement (Kubernetes `LabelSelectorRequirement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requirement {
    /// The label exists and its value is one of these.
    In(String, Vec<String>),
    /// The label is absent, or its value is none of these.
    NotIn(String, Vec<String>),
    /// The label exists.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    /// The label key this requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A subset of one namespace's instances. Every set field must match (AND);
/// empty fields do not filter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    /// Application name.
    pub app: Option<String>,
    /// Service (interface) the instance's revision exposes.
    pub service: Option<String>,
    /// Any of these health states; empty means any.
    pub health: Vec<Health>,
    /// Locality region.
    pub region: Option<String>,
    /// Locality zone.
    pub zone: Option<String>,
    /// Locality sub-zone.
    pub subzone: Option<String>,
    /// Label requirements.
    pub labels: Vec<Requirement>,
}

impl Selector {
    /// Does `instance`, whose revision exposes `services`, match?
    pub fn matches(&self, instance: &Instance, services: &[ServiceDef]) -> bool {
        let opt = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        opt(&self.app, &instance.app)
            && self
                .service
                .as_deref()
                .is_none_or(|s| services.iter().any(|d| d.name == s))
            && (self.health.is_empty() || self.health.contains(&instance.health))
            && opt(&self.region, &instance.locality.region)
            && opt(&self.zone, &instance.locality.zone)
            && opt(&self.subzone, &instance.locality.subzone)
            && self.labels.iter().all(|r| r.matches(&instance.labels))
    }

    /// Adds `matchLabels` entries as `In` requirements.
    pub fn with_match_labels(mut self, labels: &BTreeMap<String, String>) -> Self {
        for (k, v) in labels {
            self.labels
                .push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        self
    }

    /// Checks every key and value of the selector.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `field.<part>`.
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        if let Some(a) = &self.app {
            validate::app(&format!("{field}.app"), a)?;
        }
        if let Some(s) = &self.service {
            validate::service_name(&format!("{field}.service"), s)?;
        }
        for (i, r) in self.labels.iter().enumerate() {
            let f = format!("{field}.labels[{i}]");
            validate::label_key(&f, r.key())?;
            if let Requirement::In(_, vs) | Requirement::NotIn(_, vs) = r {
                if vs.is_empty() {
                    return Err(Error::invalid(
                        f,
                        "`in` and `notin` need at least one value",
                    ));
                }
                for v in vs {
                    validate::label_value(&f, v)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses a Kubernetes label-selector string into requirements.
///
/// Grammar (k8s.io/apimachinery `labels.Parse`): terms separated by commas;
/// each term is `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// `key in (v1,v2)` or `key notin (v1,v2)`.
///
/// # Errors
/// [`Error::InvalidArgument`] for `field`, naming the term that failed.
pub fn parse_labels(field: &str, input: &str) -> Result<Vec<Requirement>, Error> {
    let mut out = Vec::new();
    for term in split_terms(input) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let bad = |why: &str| Error::invalid(field, format!("term {term:?}: {why}"));
        let req = if let Some(k) = term.strip_prefix('!') {
            Requirement::DoesNotExist(k.trim().to_string())
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotIn(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::In(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, rest)) = split_set_op(term) {
            let (op, set) = rest;
            let set = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesized value list after `in`/`notin`"))?;
            let values: Vec<String> = if set.trim().is_empty() {
                Vec::new()
            } else {
                set.split(',').map(|v| v.trim().to_string()).collect()
            };
            if op == "in" {
                Requirement::In(k, values)
            } else {
                Requirement::NotIn(k, values)
            }
        } else if term.contains(char::is_whitespace) {
            return Err(bad("expected `key`, `!key`, `key=value`, `key!=value`, `key in (...)` or `key notin (...)`"));
        } else {
            Requirement::Exists(term.to_string())
        };
        out.push(req);
    }
    let probe = Selector {
        labels: out,
        ..Default::default()
    };
    probe.validate(field)?;
    Ok(probe.labels)
}

/// Splits on commas that are not inside parentheses.
fn split_terms(input: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&input[start..]);
    terms
}

/// `key in (...)` / `key notin (...)` → (key, (op, rest)).
fn split_set_op(term: &str) -> Option<(String, (&'static str, &str))> {
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next()?.trim();
    let rest = words.next()?.trim_start();
    for op in ["notin", "in"] {
        if let Some(after) = rest.strip_prefix(op) {
            if after.starts_with(|c: char| c.is_whitespace() || c == '(') {
                return Some((key.to_string(), (op, after)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_syntax() {
        let r = parse_labels(
            "labels",
            "env=prod, version in (v1, v2),!canary,tier!=db,team, zone notin (a)",
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                Requirement::In("env".into(), vec!["prod".into()]),
                Requirement::In("version".into(), vec!["v1".into(), "v2".into()]),
                Requirement::DoesNotExist("canary".into()),
                Requirement::NotIn("tier".into(), vec!["db".into()]),
                Requirement::Exists("team".into()),
                Requirement::NotIn("zone".into(), vec!["a".into()]),
            ]
        );
    }

    #[test]
    fn rejects_bad_terms() {
        for bad in [
            "env in v1",
            "a b c",
            "=x",
            "env=pr od",
            "v in ()",
            "Bad/Key=x",
        ] {
            let e = parse_labels("labels", bad).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { ref field, .. } if field.starts_with("labels")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn notin_matches_absent_labels() {
        let l: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string())].into_iter().collect();
        assert!(Requirement::NotIn("b".into(), vec!["1".into()]).matches(&l));
        assert!(!Requirement::NotIn("a".into(), vec!["1".into()]).matches(&l));
        assert!(!Requirement::In("b".into(), vec!["1".into()]).matches(&l));
    }
}
