"""A real SMTP server for herald's integration tests (aiosmtpd).

Usage: smtp_server.py PORT OUTDIR
Each accepted message is written to OUTDIR/NNNNNN.eml (atomically) and its envelope
recipients to OUTDIR/NNNNNN.rcpt. Prints "ready" once listening; stops when stdin closes.
"""

import os
import sys

from aiosmtpd.controller import Controller


class SaveToFolder:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.outdir, f"{self.count:06d}")
        with open(base + ".rcpt", "w") as f:
            f.write("\n".join(envelope.rcpt_tos))
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".tmp", base + ".eml")
        return "250 2.0.0 Ok: queued as " + f"{self.count:06d}"


def main():
    port = int(sys.argv[1])
    outdir = sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    controller = Controller(SaveToFolder(outdir), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
