#!/usr/bin/python3
"""A minimal XMPP client for trying postern out without a real client.

Logs in, optionally sends one message, then prints every message that
arrives until Ctrl-C (or --wait seconds). Meant for the loopback Prosody
that deploy/quickstart.sh starts: it accepts that server's self-signed
certificate, so never point it at a server across a network.

    quickstart-client.py [--port 5222] JID PASSWORD [TO [BODY]]
"""

import argparse
import asyncio
import logging
import ssl
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, to, body, receipt):
        super().__init__(jid, password)
        self.to = to
        self.body = body
        self.receipt = receipt
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0184")
        self.register_plugin("xep_0199")
        # Loopback test server with a self-signed certificate.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self["xep_0184"].auto_ack = True
        self["xep_0184"].auto_request = receipt
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("receipt_received", self.on_receipt)
        self.add_event_handler("failed_auth", self.on_failed_auth)

    async def on_start(self, _event):
        self.send_presence()
        await self.get_roster()
        print(f"logged in as {self.boundjid.full}", flush=True)
        if self.to and self.body:
            msg = self.make_message(mto=self.to, mbody=self.body,
                                    mtype="chat")
            msg.send()
            print(f"-> {self.to}: {self.body} (id {msg['id']})", flush=True)

    def on_message(self, msg):
        if msg["type"] == "error":
            err = msg["error"]
            print(f"<- error from {msg['from']}: {err['condition']} "
                  f"({err['type']}) {err['text']}", flush=True)
        elif msg["body"]:
            print(f"<- {msg['from']}: {msg['body']}", flush=True)

    def on_receipt(self, msg):
        print(f"<- receipt from {msg['from']} for {msg['receipt']}",
              flush=True)

    def on_failed_auth(self, _event):
        print("login failed: wrong JID or password", file=sys.stderr)
        self.disconnect()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5222)
    ap.add_argument("--wait", type=float, default=0,
                    help="exit after this many seconds (0: until Ctrl-C)")
    ap.add_argument("--no-receipt", action="store_true",
                    help="do not ask for a delivery receipt (XEP-0184)")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("jid")
    ap.add_argument("password")
    ap.add_argument("to", nargs="?")
    ap.add_argument("body", nargs="?", default="hello from postern")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR)

    xmpp = Client(args.jid, args.password, args.to, args.body,
                  not args.no_receipt)
    xmpp.connect((args.host, args.port))
    loop = asyncio.get_event_loop()
    try:
        if args.wait > 0:
            loop.run_until_complete(asyncio.sleep(args.wait))
        else:
            loop.run_until_complete(xmpp.disconnected)
    except KeyboardInterrupt:
        pass
    xmpp.disconnect()


if __name__ == "__main__":
    main()
