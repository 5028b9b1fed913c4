#!/usr/bin/python3
"""fake-sms: a fake Twilio Messages API (HTTPS, Basic auth, form posts).

For the hub's SMS channel tests and the demo. It speaks real HTTP/1.1 over
TLS, checks what Twilio checks before it queues a message (path, method,
Basic auth, form body, E.164 "To", sender, body length, ValidityPeriod,
StatusCallback) and answers with Twilio's real status codes and JSON bodies
({"code":..,"message":..,"more_info":..,"status":..}). A script decides
answers per "To" number (an error code, a status, Retry-After, a delay, a
dropped connection). Every request is recorded as one JSON line.

docs/fakes.md is the user's guide; this file keeps the why.

Run with Debian's interpreter (/usr/bin/python3): it needs only the
standard library. One thread per connection (ThreadingHTTPServer), so a
delayed answer never holds up the others.
"""

import argparse
import base64
import binascii
import hmac
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_PREFIX = "/2010-04-01/Accounts/"
BODY_MAX_CHARS = 1600          # Twilio: 21617 beyond this
REQUEST_BODY_MAX = 64 * 1024   # larger posts are refused (413) unread
VALIDITY_MIN, VALIDITY_MAX = 1, 36000
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")

# code -> (HTTP status, message). Messages follow Twilio's wording; "%s" is
# the To number where Twilio names it.
ERRORS = {
    20003: (401, "Authenticate"),
    20004: (405, "Method not allowed"),
    20404: (404, "The requested resource %s was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number %s is not a valid phone number."),
    21408: (400, "Permission to send an SMS has not been enabled for the region indicated "
                 "by the 'To' number: %s."),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (400, "The 'From' phone number provided is not a valid message-capable Twilio "
                 "phone number for this destination."),
    21609: (400, "Invalid StatusCallback"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21611: (400, "This 'From' number has exceeded the maximum number of queued messages"),
    21612: (400, "The 'To' phone number: %s, is not currently reachable using the 'From' "
                 "phone number via SMS."),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    90007: (400, "Invalid validity period value"),
}
STATUS_DEFAULT_CODE = {400: 21211, 401: 20003, 404: 20404, 405: 20004, 429: 20429,
                       500: 20500, 503: 20503}

# GSM 03.38 default alphabet and its extension table (each extension
# character costs two septets: ESC + code). Independent of the hub's C
# implementation on purpose: the component test compares the two.
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXT = set("\f^{}\\[~]|€")


def segments(text):
    """(encoding, units, segments) the way carriers count them: GSM-7 when
    every character is in the default alphabet or its extension, else UCS-2
    (UTF-16 code units, so a character outside the BMP costs two). One
    segment holds 160 septets / 70 units; concatenated ones 153 / 67, and a
    two-unit character is never split across segments."""
    if all(c in GSM7_BASIC or c in GSM7_EXT for c in text):
        enc, costs, single, multi = "GSM-7", [2 if c in GSM7_EXT else 1 for c in text], 160, 153
    else:
        enc, costs, single, multi = "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text], 70, 67
    units = sum(costs)
    if units <= single:
        return enc, units, 1 if units else 0
    segs, cur = 1, 0
    for c in costs:
        if cur + c > multi:
            segs, cur = segs + 1, 0
        cur += c
    return enc, units, segs


# Delivery statuses a message can move through after "queued"/"accepted",
# and the ones after which nothing changes any more.
FLOW_STATES = ("queued", "accepted", "sending", "sent", "delivered", "undelivered", "failed",
               "read", "canceled")
FINAL_STATES = ("delivered", "undelivered", "failed", "read", "canceled")
DEFAULT_FLOW = ("sent", "delivered")


class Rule:
    """to <+E164|*> [error <code>] [status <http>] [retry-after <s>]
    [retry-after-date <s>] [delay <ms>] [drop] [flow <s1,s2,..>]
    [error-code <n>] [times <N>]"""

    def __init__(self, lineno, to):
        self.lineno = lineno
        self.to = to
        self.code = None
        self.status = None
        self.retry_after = None
        self.retry_after_date = False
        self.delay_ms = 0
        self.drop = False
        self.flow = None        # statuses after creation; None = DEFAULT_FLOW
        self.error_code = None  # ErrorCode of a final undelivered/failed
        self.times = None  # None = forever


def parse_script(path):
    rules = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()

            def bad(why, lineno=lineno):
                raise ValueError("%s:%d: %s" % (path, lineno, why))

            if words[0] != "to" or len(words) < 3:
                bad("expected: to <+E164|*> <action...>")
            rule = Rule(lineno, words[1])
            if rule.to != "*" and not E164.match(rule.to):
                bad("'%s' is neither * nor an E.164 number" % rule.to)
            i = 2
            while i < len(words):
                key = words[i]
                if key == "drop":
                    rule.drop = True
                    i += 1
                    continue
                if i + 1 >= len(words):
                    bad("%s needs a value" % key)
                val = words[i + 1]
                if key == "flow":
                    flow = tuple(val.split(","))
                    for st_ in flow:
                        if st_ not in FLOW_STATES:
                            bad("flow: '%s' is not one of %s" % (st_, " ".join(FLOW_STATES)))
                    if any(st_ in FINAL_STATES for st_ in flow[:-1]):
                        bad("flow: a final status must come last")
                    rule.flow = flow
                    i += 2
                    continue
                if not val.isdigit():
                    bad("%s: '%s' is not a number" % (key, val))
                n = int(val)
                if key == "error":
                    if n not in ERRORS:
                        bad("error %d is not one this fake knows (%s)"
                            % (n, " ".join(str(c) for c in sorted(ERRORS))))
                    rule.code = n
                elif key == "status":
                    if n != 201 and not 400 <= n <= 599:
                        bad("status must be 201 or 400..599")
                    rule.status = n
                elif key == "retry-after":
                    rule.retry_after = n
                elif key == "retry-after-date":
                    rule.retry_after = n
                    rule.retry_after_date = True
                elif key == "error-code":
                    if not 1 <= n <= 99999:
                        bad("error-code must be 1..99999")
                    rule.error_code = n
                elif key == "delay":
                    if n > 3600000:
                        bad("delay at most 3600000 ms")
                    rule.delay_ms = n
                elif key == "times":
                    if n < 1:
                        bad("times must be >= 1")
                    rule.times = n
                else:
                    bad("unknown word '%s'" % key)
                i += 2
            if rule.drop and (rule.code or rule.status):
                bad("drop answers nothing: no error/status with it")
            if rule.code and rule.status is None:
                rule.status = ERRORS[rule.code][0]
            if rule.status and rule.status != 201 and rule.code is None:
                rule.code = STATUS_DEFAULT_CODE.get(rule.status, 20500 if rule.status >= 500
                                                    else 21211)
            rules.append(rule)
    return rules


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.rules = []
        self.seq = 0
        self.record = None
        self.counts = {"requests": 0, "created": 0, "errors": 0, "dropped": 0}
        self.account_sid = args.account_sid
        if args.auth_token_file:
            with open(args.auth_token_file, encoding="utf-8") as f:
                self.auth_token = f.read().strip()
        else:
            self.auth_token = args.auth_token
        if not self.auth_token:
            raise ValueError("--auth-token or --auth-token-file is required")
        self.senders = set(args.sender or [])
        self.messages = {}  # sid -> dict(status, flow, step, error_code, to, from, callback)
        if args.record:
            self.record = open(args.record, "a", encoding="utf-8")
        if args.script:
            self.rules = parse_script(args.script)

    def reload(self):
        if not self.args.script:
            return
        try:
            rules = parse_script(self.args.script)
        except (OSError, ValueError) as e:
            print("fake-sms: reload failed, keeping the old rules: %s" % e, file=sys.stderr,
                  flush=True)
            return
        with self.lock:
            self.rules = rules
        print("fake-sms: script reloaded (%d rules)" % len(rules), file=sys.stderr, flush=True)

    def match(self, to):
        """The first unspent rule for this To number (or *), spent by one."""
        with self.lock:
            for r in self.rules:
                if r.times == 0:
                    continue
                if r.to == "*" or r.to == to:
                    if r.times is not None:
                        r.times -= 1
                    return r
        return None

    def advance(self, sid):
        """One step along the message's flow; posts the status callback
        (with --callbacks) when the status changed."""
        with self.lock:
            m = self.messages[sid]
            if m["step"] >= len(m["flow"]):
                return False
            status = m["flow"][m["step"]]
            m["step"] += 1
            obj = m["obj"]
            obj["status"] = status
            obj["date_updated"] = formatdate(usegmt=False)[:-5] + "+0000"
            if status in ("undelivered", "failed"):
                obj["error_code"] = m["error_code"] or 30003
                obj["error_message"] = "Unreachable destination handset"
            cb = m["callback"]
            params = {"AccountSid": self.account_sid, "MessageSid": sid, "SmsSid": sid,
                      "MessageStatus": status, "SmsStatus": status, "To": obj["to"],
                      "From": obj["from"] or "", "ApiVersion": "2010-04-01"}
            if obj["error_code"]:
                params["ErrorCode"] = str(obj["error_code"])
        if cb and self.args.callbacks:
            self.post_callback(cb, params)
        return True

    def run_flow(self, sid):
        while True:
            time.sleep(self.args.status_step_ms / 1000.0)
            if not self.advance(sid):
                return

    def post_callback(self, url, params):
        """POST the status callback as Twilio does: form body, and
        X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + each
        parameter name and value, sorted by name))."""
        import hashlib
        import http.client
        signed = url + "".join(k + params[k] for k in sorted(params))
        sig = base64.b64encode(hmac.new(self.auth_token.encode(), signed.encode(),
                                        hashlib.sha1).digest()).decode()
        body = urllib.parse.urlencode(params)
        u = urllib.parse.urlsplit(url)
        rec = {"method": "CALLBACK", "path": url, "params": params, "status": 0,
               "action": "callback"}
        try:
            if u.scheme == "https":
                ctx = ssl.create_default_context(cafile=self.args.callback_ca)
                conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=10,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
            conn.request("POST", u.path + ("?" + u.query if u.query else ""), body,
                         {"Content-Type": "application/x-www-form-urlencoded",
                          "X-Twilio-Signature": sig, "User-Agent": "TwilioProxy/1.1"})
            rec["status"] = conn.getresponse().status
            conn.close()
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            rec["error"] = str(e)
        self.write_record(rec)

    def write_record(self, rec):
        with self.lock:
            self.seq += 1
            self.counts["requests"] += 1
            rec = dict({"seq": self.seq, "ts_ms": int(time.time() * 1000)}, **rec)
            if self.record:
                self.record.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.record.flush()


def twilio_error(code, to=""):
    status, msg = ERRORS[code]
    if "%s" in msg:
        msg = msg % to
    return status, {"code": code, "message": msg,
                    "more_info": "https://www.twilio.com/docs/errors/%d" % code,
                    "status": status}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Twilio's front end does
    server_version = "fake-sms/1"
    sys_version = ""
    state = None  # set in main

    def setup(self):
        # The TLS handshake runs here, in this connection's thread, so a
        # client that connects and stalls never blocks the accept loop.
        self.request.settimeout(30)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            if self.state.args.verbose:
                print("fake-sms: TLS handshake failed: %s" % e, file=sys.stderr, flush=True)
            self.handshake_failed = True
        else:
            self.handshake_failed = False
        super().setup()

    def handle(self):
        if self.handshake_failed:
            return
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, socket.timeout):
            pass

    def log_message(self, fmt, *args):
        if self.state.args.verbose:
            sys.stderr.write("fake-sms: %s %s\n" % (self.address_string(), fmt % args))

    def answer(self, status, obj, extra_headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Twilio-Request-Id", "RQ" + secrets.token_hex(16))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def drop(self):
        # No answer, no TLS close_notify: the TCP connection just goes away.
        self.close_connection = True
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_PUT(self):
        self.refuse_method()

    def do_DELETE(self):
        self.refuse_method()

    def refuse_method(self):
        self.read_body()
        status, err = twilio_error(20004)
        self.state.write_record({"method": self.command, "path": self.path, "auth": "",
                                 "params": {}, "status": status, "code": 20004,
                                 "action": "reply"})
        self.answer(status, err)

    def read_body(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n < 0 or n > REQUEST_BODY_MAX:
            self.close_connection = True
            return None
        return self.rfile.read(n) if n else b""

    def check_auth(self, sid):
        """'ok', 'missing' or 'invalid'. Twilio checks the credentials and
        that they belong to the account in the path."""
        h = self.headers.get("Authorization")
        if not h:
            return "missing"
        parts = h.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "basic":
            return "invalid"
        try:
            user, _, pw = base64.b64decode(parts[1], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "invalid"
        ok = hmac.compare_digest(user.encode(), self.state.account_sid.encode()) and \
            hmac.compare_digest(pw.encode(), self.state.auth_token.encode()) and \
            sid == self.state.account_sid
        return "ok" if ok else "invalid"

    def authorized(self, sid, rec):
        """Check Basic auth for account sid; answer 401 20003 (recorded) and
        return False when it fails."""
        auth = self.check_auth(sid)
        rec["auth"] = auth
        if auth == "ok":
            return True
        status, err = twilio_error(20003)
        rec.update(status=status, code=20003)
        self.state.write_record(rec)
        self.answer(status, err, [("WWW-Authenticate", 'Basic realm="Twilio API"')])
        return False

    def do_POST(self):
        st = self.state
        raw = self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        rec = {"method": "POST", "path": self.path, "auth": "", "content_type":
               self.headers.get("Content-Type", ""), "params": {}, "status": 0, "code": None,
               "action": "reply"}
        m = re.match(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$", path)
        if raw is None:
            rec.update(status=413, action="reply")
            st.write_record(rec)
            self.send_response(413)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not m:
            status, err = twilio_error(20404)
            err["message"] = err["message"] % path if "%s" in err["message"] else err["message"]
            rec.update(status=status, code=20404)
            st.write_record(rec)
            self.answer(status, err)
            return
        sid = m.group(1)
        if not self.authorized(sid, rec):
            return

        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            text = raw.decode("utf-8") if ctype == "application/x-www-form-urlencoded" else ""
            params = urllib.parse.parse_qs(text, keep_blank_values=True, strict_parsing=bool(text),
                                           encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            params = None
        if params is None:
            # Twilio treats an unreadable body as missing parameters.
            params = {}
        flat = {k: v[0] if len(v) == 1 else v for k, v in params.items()}
        rec["params"] = flat
        if any(isinstance(v, list) for k, v in flat.items() if k != "MediaUrl"):
            rec["duplicate_params"] = True

        def error(code, to=""):
            status, err = twilio_error(code, to)
            rec.update(status=status, code=code)
            st.write_record(rec)
            with st.lock:
                st.counts["errors"] += 1
            self.answer(status, err)

        to = flat.get("To")
        frm = flat.get("From")
        mss = flat.get("MessagingServiceSid")
        body = flat.get("Body")
        if not to:
            return error(21604)
        if not E164.match(to):
            return error(21211, to)
        if not frm and not mss:
            return error(21603)
        if frm and st.senders and frm not in st.senders:
            return error(21606)
        if mss is not None and not re.match(r"^MG[0-9a-fA-F]{32}$", mss):
            return error(21606)
        if not body:
            return error(21602)
        enc, units, segs = segments(body)
        rec.update(encoding=enc, units=units, num_segments=segs)
        # Twilio counts the 1600 limit in characters (UTF-16 units for UCS-2).
        if (units if enc == "UCS-2" else len(body)) > BODY_MAX_CHARS:
            return error(21617)
        vp = flat.get("ValidityPeriod")
        if vp is not None and (not vp.isdigit() or not VALIDITY_MIN <= int(vp) <= VALIDITY_MAX):
            return error(90007)
        cb = flat.get("StatusCallback")
        if cb is not None:
            u = urllib.parse.urlsplit(cb)
            if u.scheme not in ("http", "https") or not u.hostname or "_" in u.hostname:
                return error(21609)

        rule = st.match(to)
        if rule is not None:
            rec["rule"] = rule.lineno
            if rule.delay_ms:
                time.sleep(rule.delay_ms / 1000.0)
            if rule.drop:
                rec.update(action="drop")
                st.write_record(rec)
                with st.lock:
                    st.counts["dropped"] += 1
                self.drop()
                return
            if rule.status and rule.status != 201:
                status, err = twilio_error(rule.code, to)
                status = rule.status
                err["status"] = status
                extra = []
                if rule.retry_after is not None and rule.retry_after_date:
                    # an HTTP-date (IMF-fixdate) that many seconds ahead
                    extra.append(("Retry-After",
                                  formatdate(time.time() + rule.retry_after, usegmt=True)))
                elif rule.retry_after is not None:
                    extra.append(("Retry-After", str(rule.retry_after)))
                rec.update(status=status, code=rule.code)
                st.write_record(rec)
                with st.lock:
                    st.counts["errors"] += 1
                self.answer(status, err, extra)
                return

        msg_sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=False)
        now = now[:-5] + "+0000"
        obj = {
            "account_sid": st.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": frm,
            "messaging_service_sid": mss,
            "num_media": "0",
            "num_segments": str(segs),
            "price": None,
            "price_unit": "USD",
            "sid": msg_sid,
            "status": "queued" if frm else "accepted",
            "subresource_uris": {"media": "%s%s/Messages/%s/Media.json"
                                 % (API_PREFIX, st.account_sid, msg_sid)},
            "to": to,
            "uri": "%s%s/Messages/%s.json" % (API_PREFIX, st.account_sid, msg_sid),
        }
        rec.update(status=201, sid=msg_sid)
        st.write_record(rec)
        with st.lock:
            st.counts["created"] += 1
            st.messages[msg_sid] = {
                "obj": obj, "flow": rule.flow if rule is not None and rule.flow else DEFAULT_FLOW,
                "step": 0, "error_code": rule.error_code if rule is not None else None,
                "callback": cb}
        self.answer(201, obj)
        if st.args.status_step_ms > 0:
            threading.Thread(target=st.run_flow, args=(msg_sid,), daemon=True).start()

    def do_GET(self):
        """GET .../Messages/{Sid}.json: the message resource, its status one
        step further along its flow per request (or per --status-step-ms)."""
        st = self.state
        self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        m = re.match(r"^/2010-04-01/Accounts/([^/]+)/Messages/([A-Za-z0-9]+)\.json$", path)
        rec = {"method": "GET", "path": self.path, "auth": "", "params": {}, "status": 0,
               "code": None, "action": "reply"}
        if not m:
            return self.refuse_method()
        if not self.authorized(m.group(1), rec):
            return
        sid = m.group(2)
        with st.lock:
            known = sid in st.messages
        if not known:
            status, err = twilio_error(20404, path)
            rec.update(status=status, code=20404, sid=sid)
            st.write_record(rec)
            self.answer(status, err)
            return
        if st.args.status_step_ms == 0:
            st.advance(sid)
        with st.lock:
            obj = dict(st.messages[sid]["obj"])
        rec.update(status=200, sid=sid, message_status=obj["status"],
                   error_code=obj["error_code"])
        st.write_record(rec)
        self.answer(200, obj)


def main():
    ap = argparse.ArgumentParser(prog="fake-sms", description="fake Twilio Messages API")
    ap.add_argument("--listen", required=True, help="HOST:PORT (port 0 = any free port)")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--account-sid", required=True)
    ap.add_argument("--auth-token")
    ap.add_argument("--auth-token-file")
    ap.add_argument("--sender", action="append",
                    help="an allowed From number (repeatable); none given = any E.164 sender")
    ap.add_argument("--record", help="append one JSON line per request")
    ap.add_argument("--script", help="answer rules; reloaded on SIGHUP")
    ap.add_argument("--port-file", help="write the port here (atomically) once listening")
    ap.add_argument("--status-step-ms", type=int, default=0,
                    help="move each message one status along its flow this often; 0 (default) "
                         "= one step per status GET")
    ap.add_argument("--callbacks", action="store_true",
                    help="POST each status change to the message's StatusCallback")
    ap.add_argument("--callback-ca", help="CA file to verify https status callback URLs")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.status_step_ms < 0 or args.status_step_ms > 3600000:
        ap.error("--status-step-ms must be 0..3600000")

    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        ap.error("--listen must be HOST:PORT")
    try:
        state = State(args)
    except (OSError, ValueError) as e:
        print("fake-sms: %s" % e, file=sys.stderr)
        sys.exit(2)
    Handler.state = state

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])

    ThreadingHTTPServer.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((host, int(port)), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True,
                                   do_handshake_on_connect=False)
    bound = httpd.socket.getsockname()[1]

    def stop(signo, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda s, f: state.reload())

    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % bound)
        os.rename(tmp, args.port_file)
    print("fake-sms listening on %s:%d" % (host, bound), flush=True)
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    if state.record:
        state.record.close()
    c = state.counts
    print("fake-sms: requests=%d created=%d errors=%d dropped=%d"
          % (c["requests"], c["created"], c["errors"], c["dropped"]), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
