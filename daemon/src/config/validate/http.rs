//! Validates an inbound listener's `protocol` and `[inbound.http]` table: upstream protocol,
//! JWT issuers and authorization rules.

use std::time::Duration;

use hyper::header::HeaderName;

use super::super::raw::{
    RawCondition, RawHttp, RawInbound, RawJwt, RawOperation, RawRule, RawSource, S,
};
use super::super::{
    ClaimHeader, HttpConfig, JwksSource, JwtIssuer, Protocol, TokenSource, UpstreamProtocol,
};
use super::{Validator, non_empty, nonzero_duration};
use crate::http::rules::{
    Action, Condition, ConditionKey, Field, IpBlock, Operation, Rule, Source, StringMatch,
};
use crate::policy::Principal;

/// Headers mtlsd sets itself, so a JWT claim may not be copied into them.
const RESERVED_HEADERS: [&str; 3] = ["x-forwarded-client-cert", "early-data", "host"];

impl Validator<'_> {
    /// The listener's protocol and, for HTTP, its settings; `(protocol, None)` for TCP.
    pub(super) fn protocol(
        &mut self,
        raw: &RawInbound,
        key: &str,
    ) -> Option<(Protocol, Option<HttpConfig>)> {
        let protocol = self.check_or(
            &raw.protocol,
            &format!("{key}.protocol"),
            Protocol::Tcp,
            |p| match p.as_str() {
                "tcp" => Ok(Protocol::Tcp),
                "http" => Ok(Protocol::Http),
                other => Err(format!(
                    "unknown protocol {other:?}; expected \"tcp\" or \"http\""
                )),
            },
        )?;
        match (protocol, &raw.http) {
            (Protocol::Tcp, Some(http)) => {
                self.report(
                    http,
                    &format!("{key}.http"),
                    "[inbound.http] only applies to protocol = \"http\"",
                );
                None
            }
            (Protocol::Tcp, None) => Some((protocol, None)),
            (Protocol::Http, http) => {
                if raw
                    .mode
                    .as_ref()
                    .is_some_and(|m| m.get_ref() == "permissive")
                {
                    self.report(
                        raw.mode.as_ref().unwrap_or(&raw.name),
                        &format!("{key}.mode"),
                        "an HTTP listener decides every request on the peer's verified identity: \
                         it takes mTLS only (mode = \"strict\")",
                    );
                }
                if raw.proxy_protocol {
                    self.report(
                        &raw.name,
                        &format!("{key}.proxy_protocol"),
                        "proxy_protocol applies to protocol = \"tcp\"; an HTTP listener tells the \
                         service who called in X-Forwarded-Client-Cert",
                    );
                }
                let empty = RawHttp::default();
                let http = http.as_ref().map_or(&empty, S::get_ref);
                let config = self.http(http, &format!("{key}.http"))?;
                Some((protocol, Some(config)))
            }
        }
    }

    fn http(&mut self, raw: &RawHttp, key: &str) -> Option<HttpConfig> {
        let upstream = self.check_or(
            &raw.upstream,
            &format!("{key}.upstream"),
            UpstreamProtocol::Http1,
            |u| match u.as_str() {
                "http1" => Ok(UpstreamProtocol::Http1),
                "h2c" => Ok(UpstreamProtocol::H2c),
                other => Err(format!(
                    "unknown upstream {other:?}; expected \"http1\" or \"h2c\""
                )),
            },
        );
        let header =
            |v: &mut Self, field: &Option<S<String>>, name: &str, default: &'static str| {
                v.check_or(
                    field,
                    &format!("{key}.{name}"),
                    HeaderName::from_static(default),
                    |h| header_name(h),
                )
            };
        let issuer_header = header(self, &raw.issuer_header, "issuer_header", "x-jwt-issuer");
        let subject_header = header(self, &raw.subject_header, "subject_header", "x-jwt-subject");
        let request_timeout = self.check_or(
            &raw.request_timeout,
            &format!("{key}.request_timeout"),
            Duration::from_secs(60),
            |s| nonzero_duration(s),
        );
        let jwt: Vec<_> = raw
            .jwt
            .iter()
            .enumerate()
            .map(|(i, j)| self.jwt(j.get_ref(), &format!("{key}.jwt[{i}]")))
            .collect();
        let mut issuers = std::collections::HashSet::new();
        for (i, j) in raw.jwt.iter().enumerate() {
            if !issuers.insert(j.get_ref().issuer.get_ref()) {
                self.report(
                    &j.get_ref().issuer,
                    &format!("{key}.jwt[{i}].issuer"),
                    "this issuer is configured twice; list its audiences and token places in one [[inbound.http.jwt]]",
                );
            }
        }
        let rules: Vec<_> = raw
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| self.rule(r.get_ref(), i, &format!("{key}.rules[{i}]")))
            .collect();
        let mut names = std::collections::HashSet::new();
        for (i, r) in raw.rules.iter().enumerate() {
            if let Some(name) = &r.get_ref().name
                && !names.insert(name.get_ref())
            {
                self.report(
                    name,
                    &format!("{key}.rules[{i}].name"),
                    format!(
                        "rule name {:?} is used twice; logs and metrics name rules by it",
                        name.get_ref()
                    ),
                );
            }
        }
        Some(HttpConfig {
            upstream: upstream?,
            dry_run: raw.dry_run,
            early_data_unsafe_methods: raw.early_data_unsafe_methods,
            issuer_header: issuer_header?,
            subject_header: subject_header?,
            request_timeout: request_timeout?,
            jwt: jwt.into_iter().collect::<Option<_>>()?,
            rules: rules.into_iter().collect::<Option<_>>()?,
        })
    }

    fn jwt(&mut self, raw: &RawJwt, key: &str) -> Option<JwtIssuer> {
        let issuer = self.check(&raw.issuer, &format!("{key}.issuer"), |s| {
            non_empty(s).map(str::to_owned)
        });
        let audiences: Vec<_> = raw
            .audiences
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.check(a, &format!("{key}.audiences[{i}]"), |s| {
                    non_empty(s).map(str::to_owned)
                })
            })
            .collect();
        let ca = self.opt_path(&raw.jwks_ca, &format!("{key}.jwks_ca"));
        if let (Some(Some(path)), Some(at)) = (&ca, &raw.jwks_ca) {
            self.readable_file(at.span(), &format!("{key}.jwks_ca"), path);
        }
        let jwks = match (&raw.jwks_uri, &raw.jwks) {
            (Some(uri), None) => self.check(uri, &format!("{key}.jwks_uri"), |u| {
                jwks_uri(u).map(|()| JwksSource::Uri {
                    uri: u.clone(),
                    ca: ca.clone().flatten(),
                })
            }),
            (None, Some(path)) => {
                if let Some(at) = &raw.jwks_ca {
                    self.report(at, &format!("{key}.jwks_ca"), "jwks_ca applies to jwks_uri");
                }
                let p = self.check(path, &format!("{key}.jwks"), |p| {
                    non_empty(p).map(std::path::PathBuf::from)
                });
                if let Some(p) = &p
                    && self.check_files
                    && let Err(e) = crate::http::jwks::read_file(p)
                {
                    self.report(path, &format!("{key}.jwks"), e);
                }
                p.map(|path| JwksSource::File { path })
            }
            (Some(uri), Some(_)) => {
                self.report(
                    uri,
                    &format!("{key}.jwks_uri"),
                    "give jwks_uri or jwks, not both",
                );
                None
            }
            // A SPIFFE trust domain as issuer: JWT-SVIDs, keys from the Workload API.
            (None, None) if raw.issuer.get_ref().starts_with("spiffe://") => {
                let td = raw.issuer.get_ref().trim_start_matches("spiffe://");
                let socket = match &raw.socket {
                    Some(s) => self.check(s, &format!("{key}.socket"), |s| {
                        super::identity::workload_socket(s).map(|()| s.clone())
                    }),
                    None => {
                        let default = self.workload_socket.clone();
                        if default.is_none() {
                            self.report(
                                &raw.issuer,
                                &format!("{key}.socket"),
                                "JWT-SVIDs need the Workload API: set socket, identity.socket or \
                                 SPIFFE_ENDPOINT_SOCKET",
                            );
                        }
                        default
                    }
                };
                let td = self.check(&raw.issuer, &format!("{key}.issuer"), |_| {
                    crate::identity::validate_trust_domain(td).map(|()| td.to_owned())
                });
                if raw.audiences.is_empty() {
                    self.report(
                        &raw.issuer,
                        &format!("{key}.audiences"),
                        "JWT-SVIDs must be checked for their audience: list the audiences this \
                         service accepts",
                    );
                }
                match (socket, td) {
                    (Some(socket), Some(trust_domain)) => Some(JwksSource::WorkloadApi {
                        socket,
                        trust_domain,
                    }),
                    _ => None,
                }
            }
            (None, None) => {
                self.report(
                    &raw.issuer,
                    &format!("{key}.jwks_uri"),
                    "an issuer needs its keys: jwks_uri (fetched and cached), jwks (a local file), \
                     or issuer = \"spiffe://<trust domain>\" for JWT-SVIDs from the Workload API",
                );
                None
            }
        };
        if let Some(at) = &raw.socket
            && !matches!(jwks, Some(JwksSource::WorkloadApi { .. }))
        {
            self.report(
                at,
                &format!("{key}.socket"),
                "socket applies to JWT-SVID issuers (issuer = \"spiffe://<trust domain>\")",
            );
        }
        let duration = |v: &mut Self, field: &Option<S<String>>, name: &str, default: u64| {
            v.check_or(
                field,
                &format!("{key}.{name}"),
                Duration::from_secs(default),
                |s| nonzero_duration(s),
            )
        };
        let jwks_cache = duration(self, &raw.jwks_cache, "jwks_cache", 600);
        let jwks_timeout = duration(self, &raw.jwks_timeout, "jwks_timeout", 5);
        let clock_skew = self.check_or(
            &raw.clock_skew,
            &format!("{key}.clock_skew"),
            Duration::from_secs(60),
            |s| {
                let d = super::super::parse_duration(s)?;
                if d > Duration::from_secs(600) {
                    return Err(
                        "must be at most 10m: a larger skew lets expired tokens in".to_owned()
                    );
                }
                Ok(d)
            },
        );
        let mut from = Vec::new();
        let mut ok = true;
        for (i, h) in raw.from_headers.iter().enumerate() {
            let h = h.get_ref();
            match self.check(&h.name, &format!("{key}.from_headers[{i}].name"), |n| {
                header_name(n)
            }) {
                Some(name) => from.push(TokenSource::Header {
                    name,
                    prefix: h.prefix.clone().unwrap_or_default(),
                }),
                None => ok = false,
            }
        }
        for (i, p) in raw.from_params.iter().enumerate() {
            match self.check(p, &format!("{key}.from_params[{i}]"), |n| {
                non_empty(n).map(str::to_owned)
            }) {
                Some(name) => from.push(TokenSource::Param { name }),
                None => ok = false,
            }
        }
        if raw.from_headers.is_empty() && raw.from_params.is_empty() {
            from.push(TokenSource::Header {
                name: hyper::header::AUTHORIZATION,
                prefix: "Bearer ".to_owned(),
            });
        }
        let mut claim_headers = Vec::new();
        for (i, c) in raw.output_claim_to_headers.iter().enumerate() {
            let c = c.get_ref();
            let k = format!("{key}.output_claim_to_headers[{i}]");
            let header = self.check(&c.header, &format!("{k}.header"), |h| {
                let name = header_name(h)?;
                if RESERVED_HEADERS.contains(&name.as_str()) || name == hyper::header::AUTHORIZATION
                {
                    return Err(format!(
                        "{h:?} is set by mtlsd or the client; pick another header"
                    ));
                }
                Ok(name)
            });
            let claim = self.check(&c.claim, &format!("{k}.claim"), |s| {
                non_empty(s).map(str::to_owned)
            });
            match (header, claim) {
                (Some(header), Some(claim)) => claim_headers.push(ClaimHeader { header, claim }),
                _ => ok = false,
            }
        }
        let audiences: Option<Vec<_>> = audiences.into_iter().collect();
        ok.then_some(())?;
        Some(JwtIssuer {
            issuer: issuer?,
            audiences: audiences?,
            jwks: jwks?,
            jwks_cache: jwks_cache?,
            jwks_timeout: jwks_timeout?,
            from,
            forward_original_token: raw.forward_original_token,
            claim_headers,
            clock_skew: clock_skew?,
        })
    }

    fn rule(&mut self, raw: &RawRule, index: usize, key: &str) -> Option<Rule> {
        let action = self.check(&raw.action, &format!("{key}.action"), |a| {
            a.parse::<Action>()
        });
        let name = match &raw.name {
            Some(n) => self.check(n, &format!("{key}.name"), |s| {
                non_empty(s).map(str::to_owned)
            }),
            None => Some(format!("rules[{index}]")),
        };
        let from: Vec<_> = raw
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| self.source(s.get_ref(), &format!("{key}.from[{i}]")))
            .collect();
        let to: Vec<_> = raw
            .to
            .iter()
            .enumerate()
            .map(|(i, o)| self.operation(o.get_ref(), &format!("{key}.to[{i}]")))
            .collect();
        let when: Vec<_> = raw
            .when
            .iter()
            .enumerate()
            .map(|(i, c)| self.condition(c.get_ref(), &format!("{key}.when[{i}]")))
            .collect();
        Some(Rule {
            name: name?,
            action: action?,
            from: from.into_iter().collect::<Option<_>>()?,
            to: to.into_iter().collect::<Option<_>>()?,
            when: when.into_iter().collect::<Option<_>>()?,
        })
    }

    /// `list` and `not_list` parsed with `parse`, each entry reported under its own index.
    fn field<T, E: ToString>(
        &mut self,
        (any, not): (&[S<String>], &[S<String>]),
        key: &str,
        name: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<Field<T>> {
        let list = |v: &mut Self, items: &[S<String>], name: &str| -> Option<Vec<T>> {
            let parsed: Vec<_> = items
                .iter()
                .enumerate()
                .map(|(i, s)| v.check(s, &format!("{key}.{name}[{i}]"), |s| parse(s)))
                .collect();
            parsed.into_iter().collect()
        };
        let any = list(self, any, name);
        let not = list(self, not, &format!("not_{name}"));
        Some(Field {
            any: any?,
            not: not?,
        })
    }

    fn source(&mut self, raw: &RawSource, key: &str) -> Option<Source> {
        let principals = self.field(
            (&raw.principals, &raw.not_principals),
            key,
            "principals",
            |s| s.parse::<Principal>(),
        );
        let request_principals = self.field(
            (&raw.request_principals, &raw.not_request_principals),
            key,
            "request_principals",
            StringMatch::parse,
        );
        let ip_blocks = self.field(
            (&raw.ip_blocks, &raw.not_ip_blocks),
            key,
            "ip_blocks",
            |s| s.parse::<IpBlock>(),
        );
        Some(Source {
            principals: principals?,
            request_principals: request_principals?,
            ip_blocks: ip_blocks?,
        })
    }

    fn operation(&mut self, raw: &RawOperation, key: &str) -> Option<Operation> {
        let methods = self.field((&raw.methods, &raw.not_methods), key, "methods", |s| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'*') {
                return Err(format!("{s:?} is not an HTTP method"));
            }
            StringMatch::parse(s)
        });
        let paths = self.field((&raw.paths, &raw.not_paths), key, "paths", |s| {
            if !s.starts_with('/') && !s.starts_with('*') {
                return Err(format!(
                    "{s:?}: a path starts with '/' (or '*' for a suffix match)"
                ));
            }
            StringMatch::parse(s)
        });
        let hosts = self.field(
            (&raw.hosts, &raw.not_hosts),
            key,
            "hosts",
            StringMatch::parse,
        );
        Some(Operation {
            methods: methods?,
            paths: paths?,
            hosts: hosts?,
        })
    }

    fn condition(&mut self, raw: &RawCondition, key: &str) -> Option<Condition> {
        let cond_key = self.check(&raw.key, &format!("{key}.key"), |k| {
            k.parse::<ConditionKey>()
        })?;
        if raw.values.is_empty() && raw.not_values.is_empty() {
            self.report(
                &raw.key,
                &format!("{key}.values"),
                "a condition needs values or not_values",
            );
            return None;
        }
        // The patterns are checked the way the request will be matched against them.
        let check = |s: &str| -> Result<String, String> {
            match cond_key {
                ConditionKey::SourceIp => s.parse::<IpBlock>().map(|_| s.to_owned()),
                ConditionKey::SourcePrincipal => s
                    .parse::<Principal>()
                    .map(|_| s.to_owned())
                    .map_err(|e| e.to_string()),
                _ => StringMatch::parse(s).map(|_| s.to_owned()),
            }
        };
        let values = self.field((&raw.values, &raw.not_values), key, "values", check)?;
        // Every pattern passed `check` above, which parses them as `Condition::new` does.
        Condition::new(cond_key, values).ok()
    }
}

/// A header name mtlsd may set or read: lower-cased, as HTTP/2 sends them.
fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid header name"))
}

/// Checks a JWKS URL: `http` or `https` with a host.
fn jwks_uri(s: &str) -> Result<(), String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(format!(
            "{s:?}: jwks_uri must be an http:// or https:// URL with a host"
        )),
    }
}
