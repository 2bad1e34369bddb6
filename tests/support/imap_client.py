"""An IMAP client for the tests, independent of herald's own: Python's imaplib over TLS
verified against the test's authority.

    imap_client.py PORT CA USER PASSWORD append FILE...   delivers each file with APPEND
    imap_client.py PORT CA USER PASSWORD flags            prints {"uid": [flags…]} as JSON
"""

import imaplib
import json
import ssl
import sys


def main():
    port, ca, user, password, command, *files = sys.argv[1:]
    context = ssl.create_default_context(cafile=ca)
    imap = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=context)
    imap.login(user, password)
    if command == "append":
        for name in files:
            with open(name, "rb") as f:
                status, reply = imap.append("INBOX", None, None, f.read())
            assert status == "OK", reply
    elif command == "flags":
        imap.select("INBOX", readonly=True)
        status, lines = imap.uid("FETCH", "1:*", "(FLAGS)")
        assert status == "OK", lines
        flags = {}
        for line in lines:
            if not line:
                continue
            text = line.decode()
            uid = text.split("UID ")[1].split()[0].rstrip(")")
            inner = text.split("FLAGS (")[1].split(")")[0]
            flags[uid] = sorted(f for f in inner.split() if f != "\\Recent")
        print(json.dumps(flags))
    else:
        raise SystemExit(f"unknown command {command}")
    imap.logout()


if __name__ == "__main__":
    main()
