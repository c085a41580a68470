# covid-stats' shared cache: Varnish 7 (Debian's 7.1) with the xkey vmod (varnish-modules).
#
# Keeps every cacheable api answer until the fetcher purges it, and drops exactly what changed:
# - TTL from the api's `Surrogate-Control: max-age=N` (the edge's; stripped before delivery),
#   else the usual `Cache-Control` rules; `Surrogate-Key` indexed by xkey (the vmod reads the
#   object's `xkey` header);
# - `PURGE` with `xkey-purge: <space-separated keys>` soft-purges those keys' objects: they are
#   never served again while the api answers, but stay as stale copies for an outage. It is
#   accepted only on the listener named `purge` (varnishd -a purge=HOST:PORT) from the
#   `purgers` ACL; the public listener answers PURGE with 405, the purge listener anything
#   else (and a PURGE from outside the ACL) with 403, both in the api's error shape (JSON);
# - stale copies served while the api is down (its /readyz probe sick, or a fetch failing);
# - misses of one URL coalesced onto one backend fetch (Varnish's default waiting list: no
#   hit-for-pass here; an uncacheable answer makes a hit-for-miss object, as the builtin VCL);
# - the api's own encodings (br, gzip) kept: run varnishd with -p http_gzip_support=off, the
#   `Vary: Accept-Encoding` answers are keyed by a normalized Accept-Encoding.
# Rendered with another backend by devstack (`EDGE_CACHE=1 make run`, the tests, the bench)
# and by the chart (edgeCache): keep the backend's `.host` and `.port` lines and the ACL's
# entries each on a line of their own.
vcl 4.1;

import std;
import xkey;

backend api {
    .host = "127.0.0.1";
    .port = "8000";
    .connect_timeout = 2s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 10s;
    # /readyz: 200 while the api can serve data (a store or its workers' memory), 503 when
    # it cannot; /healthz would stay 200 with nothing to serve.
    .probe = {
        .url = "/readyz";
        .timeout = 2s;
        .interval = 2s;
        .window = 3;
        .threshold = 2;
        .initial = 2;
    }
}

# Who may PURGE (on the purge listener): the fetcher. Loopback by default.
acl purgers {
    "127.0.0.1";
    "::1";
}

# How long a purged or expired copy is kept to be served while the api is down: the answer's
# `Cache-Control: stale-if-error=N`, else a day.
sub edge_stale_limit {
    if (beresp.http.Cache-Control ~ "(^|[,\s])stale-if-error=[0-9]+") {
        set beresp.grace = std.duration(
            regsub(beresp.http.Cache-Control, "^(.*[,\s])?stale-if-error=([0-9]+).*$", "\2")
            + "s", 1d);
    } else {
        set beresp.grace = 1d;
    }
}

sub vcl_recv {
    if (local.socket == "purge") {
        if (req.method != "PURGE" || client.ip !~ purgers) {
            return (synth(403, "forbidden"));
        }
        if (!req.http.xkey-purge) {
            return (synth(400, "missing_xkey_purge"));
        }
        set req.http.X-Purged = xkey.softpurge(req.http.xkey-purge);
        return (synth(200, "purged"));
    }
    if (req.method == "PURGE") {
        return (synth(405, "method_not_allowed"));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        # OPTIONS (CORS preflights) and anything else: the api answers each.
        return (pass);
    }
    # Never kept: live status, the metrics (their own port on the api; 404 here), test
    # control paths, and anything carrying credentials.
    if (req.url ~ "^/(readyz|healthz|metrics)(\?|$)" || req.url ~ "^/_control(/|\?|$)"
        || req.http.Authorization) {
        return (pass);
    }
    # The api reads no cookie: one copy for every client.
    unset req.http.Cookie;
    # One cache variant per coding the api serves (it answers with Vary: Accept-Encoding).
    if (req.http.Accept-Encoding ~ "(^|,)\s*br\s*(,|$|;\s*q=(1|0?\.?[1-9]))") {
        set req.http.Accept-Encoding = "br";
    } elsif (req.http.Accept-Encoding ~ "(^|,)\s*gzip\s*(,|$|;\s*q=(1|0?\.?[1-9]))") {
        set req.http.Accept-Encoding = "gzip";
    } else {
        unset req.http.Accept-Encoding;
    }
    # Fresh copies only while the api answers: a purged copy is then fetched again (one
    # fetch for all waiting clients); stale ones when it does not (probe sick, or a restart
    # after a failed fetch, vcl_deliver / vcl_synth).
    if (req.restarts == 0 && std.healthy(req.backend_hint)) {
        set req.grace = 0s;
    } else {
        # No limit of ours, the copy's grace (edge_stale_limit) applies; set even so, as
        # req.grace outlives a restart.
        set req.grace = 365d;
    }
    return (hash);
}

sub vcl_backend_response {
    # A failed answer never replaces a copy: a background fetch gives up (the stale copy
    # stays), a foreground one is restarted to look for a stale copy (vcl_synth).
    if (beresp.status >= 500) {
        return (abandon);
    }
    if (beresp.http.Surrogate-Control ~ "(^|[,\s])max-age=[0-9]+") {
        set beresp.ttl = std.duration(
            regsub(beresp.http.Surrogate-Control, "^(.*[,\s])?max-age=([0-9]+).*$", "\2") + "s",
            0s);
        unset beresp.http.Surrogate-Control;
    }
    if (beresp.http.Surrogate-Key) {
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    }
    call edge_stale_limit;
}

sub vcl_backend_error {
    # The api did not answer: as a 5xx above (the stale copy stays; a client's fetch restarts).
    return (abandon);
}

sub vcl_deliver {
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    unset resp.http.Surrogate-Control;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}

sub vcl_synth {
    # A failed fetch of a GET: once more, taking a stale copy if there is one.
    if (resp.status == 503 && req.restarts == 0 && (req.method == "GET" || req.method == "HEAD")
        && local.socket != "purge") {
        return (restart);
    }
    set resp.http.Content-Type = "application/json";
    set resp.http.Cache-Control = "no-store";
    if (resp.status == 200 && resp.reason == "purged") {
        set resp.body = {"{"purged":"} + req.http.X-Purged + "}";
        return (deliver);
    }
    # The api's error shape: {"error": {"status", "code", "message"[, "parameter"]}}.
    if (resp.status == 405) {
        set resp.http.Allow = "GET, HEAD";
        set req.http.X-Error-Code = "method_not_allowed";
        set req.http.X-Error-Message = "PURGE is accepted on the cache's purge listener only";
        set resp.reason = "Method Not Allowed";
    } elsif (resp.status == 403) {
        set req.http.X-Error-Code = "forbidden";
        set req.http.X-Error-Message = "The purge listener accepts PURGE from the purgers ACL only";
        set resp.reason = "Forbidden";
    } elsif (resp.status == 400) {
        set req.http.X-Error-Code = "missing_header";
        set req.http.X-Error-Message = "PURGE needs an xkey-purge header: the surrogate keys to purge, space-separated";
        set req.http.X-Error-Parameter = "xkey-purge";
        set resp.reason = "Bad Request";
    } else {
        set resp.status = 503;
        set resp.reason = "Service Unavailable";
        set resp.http.Retry-After = "5";
        set req.http.X-Error-Code = "backend_unavailable";
        set req.http.X-Error-Message = "The api does not answer and the cache holds no copy of this document; retry later";
    }
    if (req.http.X-Error-Parameter) {
        set req.http.X-Error-Parameter = {","parameter":""} + req.http.X-Error-Parameter + {"""};
    }
    set resp.body = {"{"error":{"status":"} + resp.status + {","code":""}
        + req.http.X-Error-Code + {"","message":""} + req.http.X-Error-Message + {"""}
        + req.http.X-Error-Parameter + "}}";
    return (deliver);
}
