#!/usr/bin/env python3
"""Checks sslyze JSON results (--json_out) against mtlsd's TLS profile.

Used by scripts/scan-tls; prints one line per profile item and exits 1 naming
every deviation (2 on unusable input). Standard library only, so it runs with
any python3, inside or outside the scanner's venv.

The profile (what a listener of mtlsd must show to a scanner that presents a
valid client certificate):

  versions      SSL 2.0, SSL 3.0, TLS 1.0 and TLS 1.1 rejected; TLS 1.3 accepted;
                TLS 1.2 may be accepted.
  tls12-suites  every TLS 1.2 suite accepted is AEAD with ECDHE:
                ECDHE-{ECDSA,RSA}-AES{128,256}-GCM or ECDHE-{ECDSA,RSA}-CHACHA20-POLY1305.
  tls13-suites  only TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
                TLS_CHACHA20_POLY1305_SHA256.
  compression   TLS compression not supported.
  renegotiation rustls never renegotiates. sslyze reports two things and both
                must hold: "secure renegotiation supported" (the RFC 5746
                renegotiation_info extension is answered in the TLS 1.2
                ServerHello; with no TLS 1.2 at all sslyze counts it as secure)
                and no client-initiated renegotiation honoured (0 successes).
  early-data    TLS 1.3 early data accepted if and only if the listener is
                configured for it (--early-data yes|no).
  groups        the classical groups sslyze can see are exactly among X25519,
                secp256r1 and secp384r1, with X25519 accepted. sslyze's OpenSSL
                (nassl, OpenSSL 1.1.1) cannot offer ML-KEM hybrids, so
                X25519MLKEM768 and group preference are NOT checked here; the
                e2e test tests/tests/scanner.rs checks them with a rustls client.
  heartbleed, ccs-injection, robot
                not vulnerable (ROBOT: no oracle, or no RSA key exchange).
  client-auth   a second scan without a client certificate finds client auth
                REQUIRED. That scan also probes SSL 2.0: nassl's legacy OpenSSL
                cannot load an ECDSA chain into an SSLv2 context, and an SSLv2
                hello is refused before any certificate is asked for. Every
                other item comes from the scan with the client certificate,
                whose connectivity test must complete.
"""

import argparse
import json
import sys

# TLS 1.2 suites allowed by the profile (IANA names, as sslyze reports them).
TLS12_ALLOWED = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_ALLOWED = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
}
GROUPS_ALLOWED = {"X25519", "secp256r1", "secp384r1"}
ROBOT_OK = {"NOT_VULNERABLE_NO_ORACLE", "NOT_VULNERABLE_RSA_NOT_SUPPORTED"}
REJECTED_VERSIONS = [
    ("ssl_2_0_cipher_suites", "SSL 2.0"),
    ("ssl_3_0_cipher_suites", "SSL 3.0"),
    ("tls_1_0_cipher_suites", "TLS 1.0"),
    ("tls_1_1_cipher_suites", "TLS 1.1"),
]


class Checker:
    def __init__(self, results):
        # scan command name -> result dict, merged over every JSON file given.
        self.results = results
        self.deviations = []

    def result(self, command):
        """The completed result of `command`, or None after recording why it is missing."""
        attempt = self.results.get(command)
        if attempt is None or attempt.get("status") == "NOT_SCHEDULED":
            self.fail(command, "not scanned")
            return None
        if attempt.get("status") != "COMPLETED" or attempt.get("result") is None:
            reason = attempt.get("error_reason") or attempt.get("status")
            trace = (attempt.get("error_trace") or "").strip().splitlines()
            last = f" ({trace[-1]})" if trace else ""
            self.fail(command, f"scan did not complete: {reason}{last}")
            return None
        return attempt["result"]

    def fail(self, item, what):
        self.deviations.append(f"{item}: {what}")
        print(f"FAIL {item}: {what}")

    def ok(self, item, what):
        print(f"ok   {item}: {what}")

    def check(self, item, good, what):
        (self.ok if good else self.fail)(item, what)


def accepted(result):
    return [s["cipher_suite"]["name"] for s in result.get("accepted_cipher_suites", [])]


def check_profile(c, early_data):
    for command, label in REJECTED_VERSIONS:
        r = c.result(command)
        if r is not None:
            c.check(
                "versions",
                not r["is_tls_version_supported"],
                f"{label} {'ACCEPTED' if r['is_tls_version_supported'] else 'rejected'}"
                + (f" ({', '.join(accepted(r))})" if accepted(r) else ""),
            )

    r12 = c.result("tls_1_2_cipher_suites")
    if r12 is not None:
        suites = accepted(r12)
        bad = [s for s in suites if s not in TLS12_ALLOWED]
        c.check(
            "tls12-suites",
            not bad,
            f"TLS 1.2 {'accepted' if r12['is_tls_version_supported'] else 'rejected'}; "
            + (f"non-AEAD/non-ECDHE suites accepted: {', '.join(bad)}" if bad else f"accepted: {', '.join(suites) or 'none'}"),
        )

    r13 = c.result("tls_1_3_cipher_suites")
    if r13 is not None:
        suites = accepted(r13)
        bad = [s for s in suites if s not in TLS13_ALLOWED]
        c.check("versions", r13["is_tls_version_supported"], f"TLS 1.3 {'accepted' if r13['is_tls_version_supported'] else 'REJECTED'}")
        c.check(
            "tls13-suites",
            not bad,
            f"unexpected suites accepted: {', '.join(bad)}" if bad else f"accepted: {', '.join(suites) or 'none'}",
        )

    r = c.result("tls_compression")
    if r is not None:
        c.check("compression", not r["supports_compression"], "supported" if r["supports_compression"] else "not supported")

    r = c.result("session_renegotiation")
    if r is not None:
        c.check(
            "renegotiation",
            r["supports_secure_renegotiation"],
            f"secure renegotiation {'reported' if r['supports_secure_renegotiation'] else 'NOT reported (insecure legacy renegotiation)'}",
        )
        honoured = r["is_vulnerable_to_client_renegotiation_dos"] or r["client_renegotiations_success_count"] > 0
        c.check(
            "renegotiation",
            not honoured,
            f"client-initiated renegotiation {'HONOURED' if honoured else 'refused'} "
            f"({r['client_renegotiations_success_count']} succeeded)",
        )

    r = c.result("tls_1_3_early_data")
    if r is not None:
        got = r["supports_early_data"]
        c.check(
            "early-data",
            got == early_data,
            f"early data {'accepted' if got else 'not accepted'}, listener {'has' if early_data else 'has no'} early_data",
        )

    r = c.result("elliptic_curves")
    if r is not None:
        if not r["supports_ecdh_key_exchange"]:
            c.fail("groups", "no ECDH key exchange at all")
        else:
            names = [g["name"] for g in r["supported_curves"] or []]
            bad = [n for n in names if n not in GROUPS_ALLOWED]
            c.check("groups", not bad, f"unexpected groups accepted: {', '.join(bad)}" if bad else f"accepted: {', '.join(names)}")
            c.check("groups", "X25519" in names, "X25519 " + ("accepted" if "X25519" in names else "NOT accepted"))
        print("note groups: X25519MLKEM768 is invisible to sslyze (nassl's OpenSSL 1.1.1); not checked here")

    r = c.result("heartbleed")
    if r is not None:
        c.check("heartbleed", not r["is_vulnerable_to_heartbleed"], "VULNERABLE" if r["is_vulnerable_to_heartbleed"] else "not vulnerable")
    r = c.result("openssl_ccs_injection")
    if r is not None:
        v = r["is_vulnerable_to_ccs_injection"]
        c.check("ccs-injection", not v, "VULNERABLE" if v else "not vulnerable")
    r = c.result("robot")
    if r is not None:
        c.check("robot", r["robot_result"] in ROBOT_OK, r["robot_result"])


def load(path, with_cert):
    """The scan results of the one server scan in `path` and its connectivity result.

    Connectivity problems are returned as deviations: nothing was scanned.
    """
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    scans = doc.get("server_scan_results") or []
    if len(scans) != 1:
        return {}, None, [f"{path}: {len(scans)} server scans, expected 1"]
    scan = scans[0]
    loc = scan.get("server_location", {})
    where = f"{loc.get('hostname')}:{loc.get('port')}"
    creds = (scan.get("network_configuration") or {}).get("tls_client_auth_credentials")
    if with_cert and not creds:
        return {}, None, [f"{path}: scanned without a client certificate"]
    if scan.get("connectivity_status") != "COMPLETED":
        trace = (scan.get("connectivity_error_trace") or "").strip().splitlines()
        return {}, None, [f"{where}: connectivity {scan.get('connectivity_status')}: {trace[-1] if trace else '?'}"]
    results = {
        command: attempt
        for command, attempt in (scan.get("scan_result") or {}).items()
        if attempt and attempt.get("status") != "NOT_SCHEDULED"
    }
    return results, scan.get("connectivity_result") or {}, []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--early-data", choices=["yes", "no"], required=True, help="whether the listener is configured for 0-RTT")
    parser.add_argument("--with-cert", required=True, help="sslyze --json_out of the scan made with the client certificate")
    parser.add_argument(
        "--without-cert",
        required=True,
        help="sslyze --json_out of the scan made without one (SSL 2.0 and the client-auth requirement)",
    )
    args = parser.parse_args()
    try:
        main_results, _, main_problems = load(args.with_cert, True)
        bare_results, bare_conn, bare_problems = load(args.without_cert, False)
    except (OSError, ValueError) as e:
        print(f"scan_tls_profile: {e}", file=sys.stderr)
        return 2
    checker = Checker({**main_results, **{k: v for k, v in bare_results.items() if k == "ssl_2_0_cipher_suites"}})
    for p in main_problems + bare_problems:
        checker.fail("connectivity", p)
    if main_problems:
        print("\nnothing was scanned with the client certificate: no profile item can be checked")
        return 1
    checker.ok("connectivity", "handshakes completed with the client certificate")
    if bare_conn is not None:
        req = bare_conn.get("client_auth_requirement")
        checker.check("client-auth", req == "REQUIRED", f"without a client certificate sslyze finds client auth {req}")
    check_profile(checker, args.early_data == "yes")
    if checker.deviations:
        print(f"\n{len(checker.deviations)} deviation(s) from the profile:")
        for d in checker.deviations:
            print(f"  - {d}")
        return 1
    print("\nprofile: all items hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
