#!/usr/bin/python3
"""fake-smtp: an SMTP submission server with STARTTLS and AUTH, for tests.

For the hub's email channel tests and the demo. It is a real SMTP server
(Debian's python3-aiosmtpd on asyncio): EHLO advertises STARTTLS; anything
but EHLO/NOOP/STARTTLS/QUIT before TLS is refused with 530 (so MAIL and AUTH
in plaintext fail); after STARTTLS, AUTH PLAIN and LOGIN are offered and
required before MAIL. Each message is stored (a JSON line in the record and,
with --mail-dir, the exact bytes as <seq>.eml) so tests can assert on what
arrived. A script decides answers per recipient: a 4xx/5xx reply at RCPT or
after DATA, a slow answer, or a dropped connection.

docs/fakes.md is the user's guide; this file keeps the why.

Run with Debian's interpreter (/usr/bin/python3), which sees the
python3-aiosmtpd package; a pyenv python3 on PATH does not.
"""

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import signal
import ssl
import sys
import time
import warnings

try:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
except ImportError:
    print("fake-smtp: python3-aiosmtpd is missing (run scripts/deps; use /usr/bin/python3)",
          file=sys.stderr)
    sys.exit(2)

DATA_MAX = 1024 * 1024
LINE_MAX = 998  # RFC 5322 2.1.1, without CRLF

SHORTCUTS = {
    "reject-4xx": (451, "4.3.0 Temporary failure, try again later"),
    "reject-550": (550, "5.1.1 Mailbox unavailable"),
    "reject-553": (553, "5.1.3 Mailbox name not allowed"),
}


class Rule:
    def __init__(self, lineno, rcpt):
        self.lineno = lineno
        self.rcpt = rcpt
        self.at = None       # "rcpt" or "data"
        self.code = None     # reply code; None = accept
        self.text = ""
        self.delay_ms = 0
        self.drop = False
        self.times = None    # None = forever


def parse_script(path):
    """rcpt <addr|*> [at rcpt|data] [delay <ms>] [times <N>]
       (accept | drop | reject-4xx | reject-550 | reject-553 | reply <code> [text...])"""
    rules = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()

            def bad(why, lineno=lineno):
                raise ValueError("%s:%d: %s" % (path, lineno, why))

            if words[0] != "rcpt" or len(words) < 3:
                bad("expected: rcpt <address|*> <action...>")
            rule = Rule(lineno, words[1].lower())
            action = None
            i = 2
            while i < len(words):
                w = words[i]
                if w in ("at", "delay", "times"):
                    if i + 1 >= len(words):
                        bad("%s needs a value" % w)
                    v = words[i + 1]
                    if w == "at":
                        if v not in ("rcpt", "data"):
                            bad("at must be rcpt or data")
                        rule.at = v
                    else:
                        if not v.isdigit():
                            bad("%s: '%s' is not a number" % (w, v))
                        n = int(v)
                        if w == "delay":
                            if n > 3600000:
                                bad("delay at most 3600000 ms")
                            rule.delay_ms = n
                        else:
                            if n < 1:
                                bad("times must be >= 1")
                            rule.times = n
                    i += 2
                    continue
                if action is not None:
                    bad("one action per rule ('%s' after '%s')" % (w, action))
                action = w
                if w == "accept":
                    pass
                elif w == "drop":
                    rule.drop = True
                elif w in SHORTCUTS:
                    rule.code, rule.text = SHORTCUTS[w]
                elif w == "reply":
                    if i + 1 >= len(words) or not re.match(r"^[45][0-9][0-9]$", words[i + 1]):
                        bad("reply needs a 4xx or 5xx code")
                    rule.code = int(words[i + 1])
                    rule.text = " ".join(words[i + 2:]) or "Scripted reply"
                    break  # the text runs to the end of the line
                else:
                    bad("unknown word '%s'" % w)
                i += 1
            if action is None and not rule.delay_ms:
                bad("no action (accept, drop, reject-4xx, reject-550, reject-553, reply)")
            if rule.at is None:
                # A refusal is most often a recipient refusal; a slow answer
                # is most often the final one after the message.
                rule.at = "rcpt" if (rule.code or rule.drop) else "data"
            rules.append(rule)
    return rules


class State:
    def __init__(self, args):
        self.args = args
        self.rules = parse_script(args.script) if args.script else []
        self.seq = 0
        self.record = open(args.record, "a", encoding="utf-8") if args.record else None
        self.username = args.username
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as f:
                self.password = f.read().strip()
        else:
            self.password = args.password
        if not self.username or not self.password:
            raise ValueError("--username and --password or --password-file are required")
        self.counts = {"messages": 0, "rejected": 0, "dropped": 0, "auth_failed": 0}

    def reload(self):
        if not self.args.script:
            return
        try:
            self.rules = parse_script(self.args.script)
        except (OSError, ValueError) as e:
            print("fake-smtp: reload failed, keeping the old rules: %s" % e, file=sys.stderr,
                  flush=True)
            return
        print("fake-smtp: script reloaded (%d rules)" % len(self.rules), file=sys.stderr,
              flush=True)

    def match(self, rcpt, at):
        rcpt = rcpt.lower()
        for r in self.rules:
            if r.times == 0 or r.at != at:
                continue
            if r.rcpt == "*" or r.rcpt == rcpt:
                if r.times is not None:
                    r.times -= 1
                return r
        return None

    def write(self, rec):
        self.seq += 1
        rec = dict({"seq": self.seq, "ts_ms": int(time.time() * 1000)}, **rec)
        if self.record:
            self.record.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.record.flush()
        return self.seq


def session_info(server, session):
    ssl_obj = None
    if session.ssl is not None:
        ssl_obj = session.ssl.get("ssl_object") if isinstance(session.ssl, dict) else None
    if ssl_obj is None and server.transport is not None:
        ssl_obj = server.transport.get_extra_info("ssl_object")
    return {
        "peer": "%s:%s" % tuple(session.peer[:2]) if session.peer else "",
        "tls": ssl_obj is not None,
        "tls_version": ssl_obj.version() if ssl_obj is not None else None,
        "helo": session.host_name,
        "auth": getattr(session, "fake_mech", None),
        "user": getattr(session, "fake_user", None),
    }


def message_problems(data, mail_options):
    """What a strict receiver would object to in the raw message."""
    problems = []
    if re.search(rb"(?<!\r)\n", data) or re.search(rb"\r(?!\n)", data):
        problems.append("bare_cr_or_lf")
    if any(len(line) > LINE_MAX for line in data.split(b"\r\n")):
        problems.append("line_over_998")
    if any(b > 0x7F for b in data) and not any(o.upper() == "BODY=8BITMIME"
                                               for o in mail_options):
        problems.append("8bit_without_8bitmime")
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        problems.append("no_header_body_separator")
    for line in head.split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t") and not re.match(rb"^[!-9;-~]+:", line):
            problems.append("bad_header_line")
            break
    return problems


async def drop_connection(server):
    # No reply, no TLS close_notify: the TCP connection just goes away.
    transport = getattr(server, "_original_transport", None) or server.transport
    if transport is not None:
        transport.abort()
    await asyncio.sleep(3600)  # cancelled by connection_lost


class Handler:
    def __init__(self, state):
        self.state = state

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        st = self.state
        rule = st.match(address, "rcpt")
        if rule is not None:
            if rule.delay_ms:
                await asyncio.sleep(rule.delay_ms / 1000.0)
            if rule.drop:
                st.write(dict(session_info(server, session), event="drop", at="rcpt",
                              rcpt=address, rule=rule.lineno))
                st.counts["dropped"] += 1
                await drop_connection(server)
            if rule.code:
                reply = "%d %s" % (rule.code, rule.text)
                st.write(dict(session_info(server, session), event="rcpt", rcpt=address,
                              mail_from=envelope.mail_from, reply=reply, rule=rule.lineno))
                st.counts["rejected"] += 1
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        st = self.state
        rule = None
        for rcpt in envelope.rcpt_tos:
            rule = st.match(rcpt, "data")
            if rule is not None:
                break
        data = envelope.original_content or b""
        rec = dict(session_info(server, session), event="message",
                   mail_from=envelope.mail_from, mail_options=envelope.mail_options,
                   rcpt_to=envelope.rcpt_tos, size=len(data),
                   problems=message_problems(data, envelope.mail_options))
        if rule is not None:
            rec["rule"] = rule.lineno
            if rule.delay_ms:
                await asyncio.sleep(rule.delay_ms / 1000.0)
            if rule.drop:
                rec.update(event="drop", at="data")
                st.write(rec)
                st.counts["dropped"] += 1
                await drop_connection(server)
            if rule.code:
                reply = "%d %s" % (rule.code, rule.text)
                rec.update(reply=reply, queue_id=None,
                           data=data.decode("utf-8", errors="replace"))
                st.write(rec)
                st.counts["rejected"] += 1
                return reply
        queue_id = secrets.token_hex(5).upper()
        reply = "250 2.0.0 Ok: queued as %s" % queue_id
        rec.update(reply=reply, queue_id=queue_id, data=data.decode("utf-8", errors="replace"))
        if st.args.mail_dir:
            # The seq is known only once written; write the file first under
            # the queue id, then name it in the record.
            path = os.path.join(st.args.mail_dir, "%s.eml" % queue_id)
            with open(path, "wb") as f:
                f.write(data)
            rec["file"] = path
        st.write(rec)
        st.counts["messages"] += 1
        return reply


def make_authenticator(state):
    def authenticator(server, session, envelope, mechanism, auth_data):
        session.fake_mech = mechanism
        ok = False
        user = ""
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", errors="replace")
            ok = hmac.compare_digest(auth_data.login, state.username.encode()) and \
                hmac.compare_digest(auth_data.password, state.password.encode())
        if ok:
            session.fake_user = user
        else:
            state.write(dict(session_info(server, session), event="auth", ok=False,
                             mechanism=mechanism, user=user))
            state.counts["auth_failed"] += 1
        # handled=False: aiosmtpd then answers 535 itself.
        return AuthResult(success=ok, handled=ok, auth_data=auth_data if ok else None)
    return authenticator


def main():
    ap = argparse.ArgumentParser(prog="fake-smtp", description="SMTP server with STARTTLS + AUTH")
    ap.add_argument("--listen", required=True, help="HOST:PORT (port 0 = any free port)")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--username", required=True)
    ap.add_argument("--password")
    ap.add_argument("--password-file")
    ap.add_argument("--record", help="append one JSON line per event (message, refusal, ...)")
    ap.add_argument("--mail-dir", help="store each accepted message as <queue-id>.eml here")
    ap.add_argument("--script", help="answer rules; reloaded on SIGHUP")
    ap.add_argument("--port-file", help="write the port here (atomically) once listening")
    ap.add_argument("--no-starttls", action="store_true",
                    help="a broken server for tests: never offer STARTTLS (AUTH in plaintext)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        ap.error("--listen must be HOST:PORT")
    try:
        state = State(args)
    except (OSError, ValueError) as e:
        print("fake-smtp: %s" % e, file=sys.stderr)
        sys.exit(2)
    if args.mail_dir:
        os.makedirs(args.mail_dir, exist_ok=True)
    # aiosmtpd logs every session at INFO and warns about its own use of a
    # deprecated attribute on each AUTH; keep stderr for what matters.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR,
                        stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.DEBUG if args.verbose else logging.ERROR)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler(state)
    authenticator = make_authenticator(state)

    tls = not args.no_starttls
    if not tls:
        warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH without TLS: intended

    def factory():
        return SMTP(handler, hostname="fake-smtp.test", ident="fake-smtp ESMTP",
                    tls_context=ctx if tls else None, require_starttls=tls,
                    auth_required=True, auth_require_tls=tls, authenticator=authenticator,
                    data_size_limit=DATA_MAX, loop=loop)

    server = loop.run_until_complete(loop.create_server(factory, host=host, port=int(port)))
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, state.reload)

    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % bound)
        os.rename(tmp, args.port_file)
    print("fake-smtp listening on %s:%d" % (host, bound), flush=True)

    loop.run_until_complete(stop.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    if state.record:
        state.record.close()
    c = state.counts
    print("fake-smtp: messages=%d rejected=%d dropped=%d auth_failed=%d"
          % (c["messages"], c["rejected"], c["dropped"], c["auth_failed"]),
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
