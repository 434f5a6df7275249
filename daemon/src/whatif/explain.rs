//! `mtlsd policy explain`: per listener, who can reach what, in words.

use std::fmt;

use serde::Serialize;

use super::{Listener, WhatIfError, find_listener, in_evaluation_order};
use crate::config::{Config, InboundConfig, Mode, OutboundConfig, Protocol};
use crate::http::rules::{Action, Condition, Field, Operation, Rule, Source};
use crate::policy::Principal;

/// What `mtlsd policy explain` shows: per listener, who can reach what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The listeners, inbound first, in file order.
    pub listeners: Vec<ListenerView>,
}

/// One listener's policy, readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerView {
    /// Its name.
    pub name: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Its address.
    pub listen: String,
    /// `tcp` or `http` (inbound), none for outbound.
    pub protocol: Option<Protocol>,
    /// `strict` or `permissive` (inbound).
    pub mode: Option<Mode>,
    /// Who may connect, as written.
    pub allow: Vec<String>,
    /// Who may not, as written (beats `allow`).
    pub deny: Vec<String>,
    /// The trusted JWT issuers (HTTP), each with its audiences.
    pub issuers: Vec<String>,
    /// The HTTP rules in evaluation order: deny, allow, audit.
    pub rules: Vec<RuleView>,
    /// What happens to what no rule decides.
    pub default: String,
    /// Request decisions are only logged.
    pub dry_run: bool,
    /// Anything else that changes who gets through.
    pub notes: Vec<String>,
}

/// One HTTP rule, readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleView {
    /// What it does.
    pub action: Action,
    /// Its name.
    pub name: String,
    /// Whom and what it matches, in words: `from … to … when …`.
    pub matches: String,
}

impl fmt::Display for RuleView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<5} {}: {}",
            self.action.as_str(),
            self.name,
            self.matches
        )
    }
}

/// Lists who can reach what on every listener, or on the one named.
pub fn explain(config: &Config, listener: Option<&str>) -> Result<Explanation, WhatIfError> {
    let listeners = match listener {
        Some(name) => vec![match find_listener(config, name)? {
            Listener::Inbound(l) => inbound_view(l),
            Listener::Outbound(l) => outbound_view(l),
        }],
        None => config
            .inbound
            .iter()
            .map(inbound_view)
            .chain(config.outbound.iter().map(outbound_view))
            .collect(),
    };
    Ok(Explanation { listeners })
}

fn inbound_view(l: &InboundConfig) -> ListenerView {
    let strings = |v: &[Principal]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut view = ListenerView {
        name: l.name.clone(),
        direction: "inbound",
        listen: l.listen.to_string(),
        protocol: Some(l.protocol),
        mode: Some(l.mode),
        allow: strings(&l.policy.allow),
        deny: strings(&l.policy.deny),
        issuers: Vec::new(),
        rules: Vec::new(),
        default: "peers named by no allow entry are refused; deny entries beat allow entries"
            .to_owned(),
        dry_run: false,
        notes: Vec::new(),
    };
    if l.mode == Mode::Permissive {
        view.notes.push(if l.policy.mentions_unauthenticated() {
            "permissive: a plaintext client is the peer \"unauthenticated\"".to_owned()
        } else {
            "permissive, but no entry names \"unauthenticated\": plaintext clients are refused"
                .to_owned()
        });
    }
    let Some(http) = &l.http else {
        return view;
    };
    view.dry_run = http.dry_run;
    view.issuers = http
        .jwt
        .iter()
        .map(|i| match i.audiences.as_slice() {
            [] => format!("{} (any audience)", i.issuer),
            a => format!("{} (audiences {})", i.issuer, a.join(", ")),
        })
        .collect();
    view.rules = in_evaluation_order(&http.rules)
        .map(|r| RuleView {
            action: r.action,
            name: r.name.clone(),
            matches: describe_rule(r),
        })
        .collect();
    view.default = if http.rules.iter().any(|r| r.action == Action::Allow) {
        "requests matching no allow rule are refused".to_owned()
    } else if http.rules.iter().any(|r| r.action == Action::Deny) {
        "no allow rules: every admitted peer passes unless a deny rule matches".to_owned()
    } else {
        "no allow rules: every admitted peer passes".to_owned()
    };
    if !http.jwt.is_empty() {
        view.notes.push(
            "a request with a token that fails validation is refused (401) whatever the rules say"
                .to_owned(),
        );
    }
    if http.dry_run {
        view.notes
            .push("dry run: request decisions are only logged, nothing is refused".to_owned());
    }
    view
}

fn outbound_view(l: &OutboundConfig) -> ListenerView {
    ListenerView {
        name: l.name.clone(),
        direction: "outbound",
        listen: l.listen.to_string(),
        protocol: None,
        mode: None,
        allow: Vec::new(),
        deny: Vec::new(),
        issuers: Vec::new(),
        rules: Vec::new(),
        default: format!(
            "every local client that reaches {} is connected to {}, which must present {}",
            l.listen, l.connect, l.server_id
        ),
        dry_run: false,
        notes: Vec::new(),
    }
}

/// A rule's `from`, `to` and `when` in words.
fn describe_rule(rule: &Rule) -> String {
    let mut parts = Vec::new();
    if !rule.from.is_empty() {
        parts.push(format!("from {}", entries(&rule.from, describe_source)));
    }
    if !rule.to.is_empty() {
        parts.push(format!("to {}", entries(&rule.to, describe_operation)));
    }
    if !rule.when.is_empty() {
        let conds: Vec<String> = rule.when.iter().map(describe_condition).collect();
        parts.push(format!("when {}", conds.join(" and ")));
    }
    if parts.is_empty() {
        "every request".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Entries of `from` or `to`: any one matches, so they are joined by "or".
fn entries<T>(list: &[T], describe: fn(&T) -> String) -> String {
    match list {
        [one] => describe(one),
        many => many
            .iter()
            .map(|e| format!("({})", describe(e)))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// `principals a, b and not principals c`: fields of one entry, each of which must hold.
fn fields(list: &mut Vec<String>, name: &str, field: &Field<impl fmt::Display>) {
    let join = |v: &[_]| {
        v.iter()
            .map(|x: &_| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !field.any.is_empty() {
        list.push(format!("{name} {}", join(&field.any)));
    }
    if !field.not.is_empty() {
        list.push(format!("not {name} {}", join(&field.not)));
    }
}

fn describe_source(s: &Source) -> String {
    let mut list = Vec::new();
    fields(&mut list, "principals", &s.principals);
    fields(&mut list, "request principals", &s.request_principals);
    fields(&mut list, "ip blocks", &s.ip_blocks);
    if list.is_empty() {
        "anyone".to_owned()
    } else {
        list.join(" and ")
    }
}

fn describe_operation(o: &Operation) -> String {
    let mut list = Vec::new();
    fields(&mut list, "methods", &o.methods);
    fields(&mut list, "paths", &o.paths);
    fields(&mut list, "hosts", &o.hosts);
    if list.is_empty() {
        "anything".to_owned()
    } else {
        list.join(" and ")
    }
}

fn describe_condition(c: &Condition) -> String {
    let values = |v: &[String]| v.join(", ");
    let mut said = Vec::new();
    match c.values.any.as_slice() {
        [] => {}
        [one] => said.push(format!("is {one}")),
        many => said.push(format!("is one of {}", values(many))),
    }
    match c.values.not.as_slice() {
        [] => {}
        [one] => said.push(format!("is not {one}")),
        many => said.push(format!("is none of {}", values(many))),
    }
    if said.is_empty() {
        said.push("is present".to_owned());
    }
    format!("{} {}", c.key, said.join(" and "))
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.listeners.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{} {} ({}", l.direction, l.name, l.listen)?;
            if let Some(p) = l.protocol {
                write!(f, ", {}", if p == Protocol::Http { "http" } else { "tcp" })?;
            }
            if let Some(m) = l.mode {
                write!(
                    f,
                    ", {}",
                    if m == Mode::Strict {
                        "strict"
                    } else {
                        "permissive"
                    }
                )?;
            }
            writeln!(f, ")")?;
            if l.direction == "inbound" {
                writeln!(f, "  peers     deny  {}", list_or_none(&l.deny))?;
                writeln!(f, "            allow {}", list_or_none(&l.allow))?;
            }
            if !l.issuers.is_empty() {
                writeln!(f, "  tokens    {}", l.issuers.join("; "))?;
            }
            let mut label = "  requests ";
            for r in &l.rules {
                writeln!(f, "{label} {r}")?;
                label = "           ";
            }
            let label = if l.direction == "inbound" {
                "default"
            } else {
                "clients"
            };
            writeln!(f, "  {label:<9} {}", l.default)?;
            for note in &l.notes {
                writeln!(f, "  note      {note}")?;
            }
        }
        Ok(())
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(", ")
    }
}
