"""Verify a message's DKIM signature with dkimpy against a given DNS TXT record.

Usage: dkim_verify.py MESSAGE.eml "v=DKIM1; k=rsa; p=..."
Prints "pass" and exits 0 when the signature verifies, prints "fail" and exits 1 otherwise.
"""

import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    record = sys.argv[2].encode()
    ok = dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
    print("pass" if ok else "fail")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
