"""A real SMTP server for herald's integration tests (aiosmtpd).

Usage: smtp_server.py PORT OUTDIR [--starttls CERT KEY | --tls CERT KEY] [--auth USER:PASSWORD]
Each accepted message is written to OUTDIR/NNNNNN.eml (atomically), its envelope
recipients to OUTDIR/NNNNNN.rcpt and its envelope sender (MAIL FROM) to OUTDIR/NNNNNN.from. Prints "ready" once listening; stops when stdin closes.

--starttls offers STARTTLS and refuses mail until the session is encrypted; --tls speaks
TLS from the first byte (port 465 style); --auth refuses mail until the client has
logged in (PLAIN or LOGIN) with that user and password.
"""

import argparse
import os
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class SaveToFolder:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.outdir, f"{self.count:06d}")
        with open(base + ".rcpt", "w") as f:
            f.write("\n".join(envelope.rcpt_tos))
        with open(base + ".from", "w") as f:
            f.write(envelope.mail_from or "")
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".tmp", base + ".eml")
        return "250 2.0.0 Ok: queued as " + f"{self.count:06d}"


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False)

    return authenticate


def main():
    # Expected here: AUTH over --tls, which aiosmtpd cannot tell is encrypted, and its
    # own deprecations.
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("outdir")
    parser.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth", metavar="USER:PASSWORD")
    args = parser.parse_args()
    os.makedirs(args.outdir, exist_ok=True)

    options = {}
    if args.starttls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.starttls)
        options.update(tls_context=context, require_starttls=True)
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
        options.update(ssl_context=context)
    if args.auth:
        user, password = args.auth.split(":", 1)
        options.update(
            auth_required=True,
            # Under --tls the session is encrypted from the start; aiosmtpd only
            # knows of encryption it started itself (STARTTLS).
            auth_require_tls=not args.tls,
            authenticator=authenticator_for(user, password),
        )
    controller = Controller(
        SaveToFolder(args.outdir), hostname="127.0.0.1", port=args.port, **options
    )
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
