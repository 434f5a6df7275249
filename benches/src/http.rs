//! `mtlsd-bench http`: what a request costs an HTTP-terminating mTLS proxy, mtlsd's
//! `protocol = "http"` listeners against HAProxy `mode http`, in one run with one client.
//!
//! Each contender gets the same certificates (client certificate required and verified, TLS
//! 1.3), the same keep-alive HTTP/1.1 upstream, a listener refusing `/admin/*` (`plain`) and a
//! listener that also requires a valid ES256 bearer token (`jwt`, checked against the same key:
//! a JWKS file for mtlsd, the PEM public key for HAProxy's `jwt_verify`). Four cases run against
//! each fresh server process: HTTP/1.1 and h2 (chosen by ALPN), without and with the token.
//!
//! A case opens N keep-alive connections (hyper's client over tokio-rustls with a client
//! certificate), warms them up, checks the refusals both must give (403 for `/admin/users` and
//! for `/api/../admin/users`; on `jwt` 401 without a token and for a tampered one), then sends M
//! requests on each connection at a fixed total rate (or as fast as answered with `--rps 0`).
//! The server's CPU time (user + system, from `/proc`) is read around those M×N requests only,
//! after the handshakes. Each proxied request is paired with one sent straight to a second,
//! identical upstream over plain keep-alive HTTP/1.1 (alternating which goes first), so the
//! added latency is taken against a floor measured in the same moments. Every proxied request
//! must get 200, and the upstream must have seen exactly those requests; otherwise the run fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mtlsd_e2e::{Pki, WAIT, tls_connect};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

use crate::contender::{HttpRunning, HttpSetup, Kind, Spec};
use crate::tokens::{SigningKey, claims, jwks_json};
use crate::{Metrics, QUANTILES, command_line, finite, machine, num, summarize};

const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "urn:mtlsd:bench";
const AUTHORITY: &str = "api.bench.example";
/// What the upstream answers to every request: a small JSON document.
const BODY: &[u8] =
    br#"{"id":42,"name":"widget","tags":["a","b"],"price":{"amount":1999,"currency":"EUR"}}"#;

/// Options of `http`.
#[derive(clap::Args)]
pub struct Args {
    /// Contenders, comma-separated: mtlsd, haproxy. "auto": mtlsd and HAProxy when installed
    /// (with CI set, HAProxy is required).
    #[arg(long, default_value = "auto")]
    compare: String,
    /// Interleaved rounds; each contender runs every case once per round in a fresh process.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Keep-alive connections per case.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Requests each connection sends per case, after a warm-up of a tenth as many.
    #[arg(long, default_value_t = 1000)]
    requests: u32,
    /// Total request rate of a case over all its connections; 0 sends each next request as
    /// soon as the previous one is answered.
    #[arg(long, default_value_t = 2000)]
    rps: u32,
    /// Cases, comma-separated, from h1, h1-jwt, h2, h2-jwt.
    #[arg(long, value_delimiter = ',', default_value = "h1,h1-jwt,h2,h2-jwt")]
    cases: Vec<String>,
    /// One log line per request on both: mtlsd's access line (its default; otherwise turned
    /// off with `mtlsd::access=off`) and HAProxy's `option httplog` (it logs nothing by default).
    #[arg(long)]
    access_log: bool,
    /// Where the server and this client run.
    #[command(flatten)]
    pin: crate::contender::Pinning,
    /// Tiny numbers for the test suite: proves the workload and the refusals, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

impl Args {
    fn apply_smoke(&mut self) {
        self.rounds = 1;
        self.connections = 2;
        self.requests = 50;
        self.rps = 0;
        self.pin.no_pin = true;
    }
}

/// One of the four request mixes.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    h2: bool,
    jwt: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "h1",
        h2: false,
        jwt: false,
    },
    Case {
        name: "h1-jwt",
        h2: false,
        jwt: true,
    },
    Case {
        name: "h2",
        h2: true,
        jwt: false,
    },
    Case {
        name: "h2-jwt",
        h2: true,
        jwt: true,
    },
];

fn resolve(args: &Args) -> Result<(Vec<Spec>, Vec<Case>), String> {
    let names: Vec<String> = if args.compare == "auto" {
        let haproxy = Spec::parse("haproxy")?;
        if haproxy.available() {
            vec!["mtlsd".into(), "haproxy".into()]
        } else if std::env::var_os("CI").is_some() {
            return Err("CI is set but haproxy is not installed (Debian: haproxy)".into());
        } else {
            eprintln!("mtlsd-bench: skipping haproxy: not installed (Debian: haproxy)");
            vec!["mtlsd".into()]
        }
    } else {
        args.compare
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let specs = names
        .iter()
        .map(|n| {
            let spec = Spec::parse(n)?;
            if !matches!(spec.kind, Kind::Mtlsd | Kind::Haproxy) {
                return Err(format!("{n}: the http workload compares mtlsd and haproxy"));
            }
            if !spec.available() {
                return Err(format!("{n} is not installed (Debian: {})", spec.package()));
            }
            Ok(spec)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let cases = args
        .cases
        .iter()
        .map(|c| {
            CASES
                .iter()
                .find(|k| k.name == c.trim())
                .copied()
                .ok_or_else(|| format!("unknown case {c:?}: expected h1, h1-jwt, h2 or h2-jwt"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((specs, cases))
}

/// A keep-alive HTTP/1.1 service on loopback answering [`BODY`] to everything, counting requests.
async fn upstream(count: Arc<AtomicU64>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<_>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One client connection, HTTP/1.1 or h2.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// An mTLS connection to `addr` speaking what ALPN chose (which must be what was offered).
    async fn tls(addr: SocketAddr, config: Arc<ClientConfig>, h2: bool) -> Result<Self, String> {
        let tls = tls_connect(addr, config)
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let want: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        if alpn.as_deref() != Some(want) {
            return Err(format!(
                "{addr} negotiated ALPN {:?}, not {}",
                alpn.map(|a| String::from_utf8_lossy(&a).into_owned()),
                String::from_utf8_lossy(want)
            ));
        }
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 with {addr}: {e}"))?;
            tokio::spawn(conn);
            Ok(Self::H2(send))
        } else {
            let (send, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 with {addr}: {e}"))?;
            tokio::spawn(conn);
            Ok(Self::H1(send))
        }
    }

    /// A plain keep-alive HTTP/1.1 connection (the direct path to the upstream).
    async fn plain(addr: SocketAddr) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self::H1(send))
    }

    /// Sends `GET path` (with `token` as a bearer token, if any) and reads the whole response;
    /// returns its status.
    async fn get(&mut self, path: &str, token: Option<&HeaderValue>) -> Result<StatusCode, String> {
        let mut req = match self {
            // h2 takes :scheme and :authority from the URI; HTTP/1.1 the Host header.
            Self::H2(_) => Request::get(format!("https://{AUTHORITY}{path}")),
            Self::H1(_) => Request::get(path).header(HOST, AUTHORITY),
        }
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
        if let Some(token) = token {
            req.headers_mut().insert(AUTHORIZATION, token.clone());
        }
        let exchange = async {
            let response = match self {
                Self::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Self::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .map_err(|_| format!("no answer to GET {path} within {WAIT:?}"))?
            .map_err(|e| format!("GET {path}: {e}"))
    }
}

/// What one case measured against one contender.
struct CaseRun {
    metrics: Metrics,
    probes: Vec<(String, u16)>,
}

/// The client's view of the fixed requests every contender must refuse, and how.
fn probes(
    case: Case,
    token: &HeaderValue,
    tampered: &HeaderValue,
) -> Vec<(&'static str, &'static str, Option<HeaderValue>, u16)> {
    let bearer = case.jwt.then(|| token.clone());
    let mut p = vec![
        ("admin", "/admin/users", bearer.clone(), 403),
        ("admin_dotdot", "/api/../admin/users", bearer, 403),
    ];
    if case.jwt {
        p.push(("no_token", "/api/items/1", None, 401));
        p.push((
            "tampered_token",
            "/api/items/1",
            Some(tampered.clone()),
            401,
        ));
    }
    p
}

/// Runs one case against `addr`: see the module documentation.
#[allow(clippy::too_many_arguments)]
async fn run_case(
    case: Case,
    addr: SocketAddr,
    direct: SocketAddr,
    client: &Arc<ClientConfig>,
    token: &HeaderValue,
    tampered: &HeaderValue,
    args: &Args,
    server_cpu: impl Fn() -> f64,
    upstream_count: &AtomicU64,
) -> Result<CaseRun, String> {
    let n = args.connections.max(1);
    let m = args.requests.max(1);
    let warm = (m / 10).max(5);
    let mut config = (**client).clone();
    config.alpn_protocols = vec![if case.h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let config = Arc::new(config);

    // The refusals, on a connection of their own; nothing of them may reach the upstream.
    let before = upstream_count.load(Ordering::Relaxed);
    let mut probe_conn = Sender::tls(addr, config.clone(), case.h2).await?;
    let mut seen = Vec::new();
    for (name, path, bearer, want) in probes(case, token, tampered) {
        let got = probe_conn.get(path, bearer.as_ref()).await?;
        if got.as_u16() != want {
            return Err(format!(
                "{}: GET {path} ({name}) got {got}, expected {want}",
                case.name
            ));
        }
        seen.push((name.to_owned(), got.as_u16()));
    }
    drop(probe_conn);
    if upstream_count.load(Ordering::Relaxed) != before {
        return Err(format!(
            "{}: a refused request reached the upstream",
            case.name
        ));
    }

    let ready = Arc::new(Barrier::new(n as usize + 1));
    let go = Arc::new(Barrier::new(n as usize + 1));
    let bearer = case.jwt.then(|| token.clone());
    let interval =
        (args.rps > 0).then(|| Duration::from_secs_f64(f64::from(n) / f64::from(args.rps)));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (config, ready, go, bearer) =
                (config.clone(), ready.clone(), go.clone(), bearer.clone());
            tokio::spawn(async move {
                let mut proxied = Sender::tls(addr, config, case.h2).await?;
                let mut floor = Sender::plain(direct).await?;
                let path = |k: u32| format!("/api/items/{}", (i * 7919 + k) % 1000);
                for k in 0..warm {
                    expect_ok(proxied.get(&path(k), bearer.as_ref()).await?, &path(k))?;
                    floor.get(&path(k), None).await?;
                }
                ready.wait().await;
                go.wait().await;
                let start = tokio::time::Instant::now();
                // Connections start staggered over one interval, so the total rate is even.
                let offset = interval.map(|iv| iv * i / n).unwrap_or_default();
                let (mut through, mut straight) = (
                    Vec::with_capacity(m as usize),
                    Vec::with_capacity(m as usize),
                );
                for k in 0..m {
                    if let Some(iv) = interval {
                        tokio::time::sleep_until(start + offset + iv * k).await;
                    }
                    let p = path(warm + k);
                    for via_proxy in [k % 2 == 0, k % 2 == 1] {
                        let sent = Instant::now();
                        if via_proxy {
                            expect_ok(proxied.get(&p, bearer.as_ref()).await?, &p)?;
                            through.push(sent.elapsed().as_secs_f64() * 1e6);
                        } else {
                            floor.get(&p, None).await?;
                            straight.push(sent.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                }
                // The connections go back with the figures, closed only after the CPU is read.
                Ok::<_, String>((through, straight, proxied, floor))
            })
        })
        .collect();
    if tokio::time::timeout(WAIT, ready.wait()).await.is_err() {
        // A connection failed before it was ready (its error says why); the rest wait forever.
        let mut why = format!(
            "{}: the connections were not ready within {WAIT:?}",
            case.name
        );
        for t in tasks {
            if t.is_finished() {
                if let Ok(Err(e)) = t.await {
                    why = e;
                }
            } else {
                t.abort();
            }
        }
        return Err(why);
    }
    let upstream0 = upstream_count.load(Ordering::Relaxed);
    let cpu0 = server_cpu();
    let t0 = Instant::now();
    go.wait().await;
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.map_err(|e| e.to_string())??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = server_cpu() - cpu0;
    let upstream_seen = upstream_count.load(Ordering::Relaxed) - upstream0;
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    for (t, s, _, _) in &results {
        through.extend_from_slice(t);
        straight.extend_from_slice(s);
    }
    drop(results);
    let total = u64::from(n) * u64::from(m);
    if through.len() as u64 != total || upstream_seen != total {
        return Err(format!(
            "{}: {} of {total} requests answered 200, the upstream saw {upstream_seen}",
            case.name,
            through.len()
        ));
    }
    through.sort_by(f64::total_cmp);
    straight.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| {
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    let mut metrics = Metrics::new();
    let per = total as f64;
    metrics.insert("server_cpu_us_per_request".into(), cpu * 1e6 / per);
    metrics.insert("requests_per_s".into(), per / wall);
    metrics.insert("responses_200".into(), per);
    metrics.insert("upstream_requests".into(), upstream_seen as f64);
    for (p, name) in QUANTILES {
        let (a, b) = (q(&through, p), q(&straight, p));
        metrics.insert(format!("latency_{name}_us"), a);
        metrics.insert(format!("direct_latency_{name}_us"), b);
        metrics.insert(format!("added_latency_{name}_us"), a - b);
    }
    Ok(CaseRun {
        metrics,
        probes: seen,
    })
}

fn expect_ok(status: StatusCode, path: &str) -> Result<(), String> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("GET {path} got {status}, expected 200 OK"))
    }
}

/// What one contender reported, per case, over all rounds.
struct Outcome {
    spec: Spec,
    software: String,
    rounds: Vec<Vec<(Case, CaseRun)>>,
}

/// Runs `http` and prints (and writes) its report.
pub async fn run(mut args: Args) -> Result<(), String> {
    if args.smoke {
        args.apply_smoke();
    }
    let (specs, cases) = resolve(&args)?;
    let server_cpu = args.pin.apply();
    let pin = server_cpu.is_some();

    let pki = Pki::new("bench.example");
    let day = Duration::from_secs(86_400);
    let server = pki.issue_for(&pki.id("/web"), day);
    let client = pki.issue_for(&pki.id("/client"), day);
    // Both contenders: TLS 1.3, X25519 (what OpenSSL 3.0 offers), no resumption. The
    // handshakes are outside the measured window.
    let client_config = crate::workload::client_config(&pki, &client, true, false);

    let key = SigningKey::es256("bench-es256");
    let jwks = pki.dir.path().join("jwks.json");
    let public_pem = pki.dir.path().join("jwt-es256-public.pem");
    std::fs::write(&jwks, jwks_json(&[&key])).map_err(|e| e.to_string())?;
    std::fs::write(&public_pem, &key.public_pem).map_err(|e| e.to_string())?;
    let token = key.token(&claims(ISSUER, "bench-client", AUDIENCE, &["dev"]));
    let tampered = {
        // The same token with another subject in its payload: the signature no longer holds.
        let forged = key.token(&claims(ISSUER, "someone-else", AUDIENCE, &["dev"]));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap_or_default();
        parts.join(".")
    };
    let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| e.to_string());
    let (token, tampered) = (bearer(&token)?, bearer(&tampered)?);

    let upstream_count = Arc::new(AtomicU64::new(0));
    let up = upstream(upstream_count.clone()).await?;
    let direct = upstream(Arc::new(AtomicU64::new(0))).await?;
    let setup = HttpSetup {
        pki: &pki,
        server: &server,
        upstream: up,
        cpu: server_cpu,
        issuer: ISSUER,
        audience: AUDIENCE,
        jwks: &jwks,
        public_pem: &public_pem,
        alg: "ES256",
        access_log: args.access_log,
    };

    let mut outcomes: Vec<Outcome> = specs
        .iter()
        .map(|spec| Outcome {
            spec: spec.clone(),
            software: spec.software(),
            rounds: Vec::new(),
        })
        .collect();
    for round in 1..=args.rounds {
        for outcome in &mut outcomes {
            eprintln!(
                "mtlsd-bench: http round {round}/{}: {}",
                args.rounds, outcome.spec.name
            );
            let running = HttpRunning::start(&outcome.spec, &setup)
                .map_err(|e| format!("starting {}: {e}", outcome.spec.name))?;
            let mut runs = Vec::new();
            for &case in &cases {
                let addr = if case.jwt { running.jwt } else { running.plain };
                let run = run_case(
                    case,
                    addr,
                    direct,
                    &client_config,
                    &token,
                    &tampered,
                    &args,
                    || running.server.cpu_seconds(),
                    &upstream_count,
                )
                .await
                .map_err(|e| format!("{}: {e}", outcome.spec.name))?;
                runs.push((case, run));
            }
            drop(running);
            outcome.rounds.push(runs);
        }
    }
    let report = report(&args, pin, &cases, &outcomes);
    if let Some(path) = &args.json_out {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", table(&report));
    }
    Ok(())
}

fn report(args: &Args, pin: bool, cases: &[Case], outcomes: &[Outcome]) -> Value {
    let per_case = |o: &Outcome, case: &str| -> Vec<Metrics> {
        o.rounds
            .iter()
            .flat_map(|r| r.iter().filter(|(c, _)| c.name == case))
            .map(|(_, run)| run.metrics.clone())
            .collect()
    };
    let haproxy = outcomes.iter().find(|o| o.spec.kind == Kind::Haproxy);
    let contenders: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let mut by_case = serde_json::Map::new();
            for case in cases {
                let rounds = per_case(o, case.name);
                let (med, min, max) = summarize(&rounds);
                let base = haproxy.map(|h| summarize(&per_case(h, case.name)).0);
                let ratio: Metrics = base
                    .map(|b| {
                        med.iter()
                            .filter_map(|(k, v)| {
                                Some((k.clone(), v / b.get(k).filter(|x| **x != 0.0)?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let probes: serde_json::Map<String, Value> = o
                    .rounds
                    .last()
                    .and_then(|r| r.iter().find(|(c, _)| c.name == case.name))
                    .map(|(_, run)| {
                        run.probes
                            .iter()
                            .map(|(name, status)| (name.clone(), json!(status)))
                            .collect()
                    })
                    .unwrap_or_default();
                by_case.insert(
                    case.name.to_owned(),
                    json!({
                        "median": finite(&med),
                        "min": finite(&min),
                        "max": finite(&max),
                        "ratio_vs_haproxy": finite(&ratio),
                        "refusals": probes,
                        "rounds": rounds.iter().map(finite).collect::<Vec<_>>(),
                    }),
                );
            }
            json!({
                "name": o.spec.name,
                "software": o.software,
                "cases": by_case,
            })
        })
        .collect();
    json!({
        "tool": "mtlsd-bench http",
        "format": 1,
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "settings": {
            "rounds": args.rounds,
            "connections": args.connections,
            "requests_per_connection": args.requests,
            "rps": args.rps,
            "cases": cases.iter().map(|c| c.name).collect::<Vec<_>>(),
            "access_log": args.access_log,
            "jwt_alg": "ES256",
            "pinned": pin,
            "server_cpu": pin.then_some(args.pin.server_cpu),
            "client_cpu": pin.then_some(args.pin.client_cpu),
            "smoke": args.smoke,
        },
        "contenders": contenders,
    })
}

/// The comparison as Markdown: one row per case and contender, then the targets of issue #12.
fn table(report: &Value) -> String {
    let empty = vec![];
    let cs = report["contenders"].as_array().unwrap_or(&empty);
    let cases: Vec<&str> = report["settings"]["cases"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "{} connections × {} requests per case, {} req/s target, {} round(s), medians; × is mtlsd / HAProxy.",
        report["settings"]["connections"],
        report["settings"]["requests_per_connection"],
        match report["settings"]["rps"].as_u64() {
            Some(0) => "no".to_owned(),
            Some(r) => r.to_string(),
            None => "?".to_owned(),
        },
        report["settings"]["rounds"],
    ));
    line(String::new());
    line("| case | contender | server CPU µs / request | × | req/s | p50 µs | p99 µs | added p50 µs | added p99 µs |".into());
    line("|---|---|---:|---:|---:|---:|---:|---:|---:|".into());
    for case in &cases {
        for c in cs {
            let k = &c["cases"][case];
            let ratio = k["ratio_vs_haproxy"]["server_cpu_us_per_request"]
                .as_f64()
                .map_or("–".to_owned(), |r| format!("{r:.2}×"));
            line(format!(
                "| {case} | {} | {} | {ratio} | {} | {} | {} | {} | {} |",
                c["name"].as_str().unwrap_or(""),
                num(&k["median"]["server_cpu_us_per_request"], 1),
                num(&k["median"]["requests_per_s"], 0),
                num(&k["median"]["latency_p50_us"], 0),
                num(&k["median"]["latency_p99_us"], 0),
                num(&k["median"]["added_latency_p50_us"], 0),
                num(&k["median"]["added_latency_p99_us"], 0),
            ));
        }
    }
    if let Some(m) = cs.iter().find(|c| c["name"] == "mtlsd") {
        line(String::new());
        for case in &cases {
            let k = &m["cases"][case];
            let cpu = k["ratio_vs_haproxy"]["server_cpu_us_per_request"]
                .as_f64()
                .map_or("no HAProxy figure".to_owned(), |r| {
                    format!(
                        "{r:.2}× HAProxy's CPU per request: {}",
                        if r <= 0.5 { "met" } else { "not met" }
                    )
                });
            let p99 = k["median"]["added_latency_p99_us"]
                .as_f64()
                .map_or("–".to_owned(), |us| {
                    format!(
                        "added p99 {us:.0} µs: {}",
                        if us < 1000.0 { "met" } else { "not met" }
                    )
                });
            line(format!(
                "- {case}: {cpu} (target ≤ 0.50×); {p99} (target < 1,000 µs)"
            ));
        }
    }
    out
}
