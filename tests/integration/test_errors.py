"""SPEC 3: the error table, row by row (those a sandbox provider can
produce), and the messages that must be ignored without an error."""

import glob
import os

import rig
from rig import OTHER_DOMAIN, SMS_JID, contact, to_str

RATE = 3


def limits_implemented():
    """Rate limits are enforced: something calls ratelimit_check() (src/
    limits.c) or reads per_user_per_minute outside config and limits."""
    root = rig.repo_root()
    for path in glob.glob(os.path.join(root, "src", "*.c")) + glob.glob(
            os.path.join(root, "transports", "**", "*.c"), recursive=True):
        if os.path.basename(path) in ("config.c", "limits.c"):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        if "ratelimit_check(" in text or "per_user_per_minute" in text:
            return True
    return False


class TestErrors(rig.StackTest):
    limits = {"per_user_per_minute": RATE}
    # temporary provider failures give up quickly here
    extra = ("queue = { max_age = 3; retry_base_ms = 200; "
             "retry_cap_ms = 1000; };")

    def error_for(self, c, mid, timeout=rig.DEFAULT_TIMEOUT):
        return c.wait(lambda e: e.get("id") == mid and
                      e.get("type") == "error", timeout,
                      "error reply to message %s" % mid)

    def registered(self, user, number):
        c = self.client(user)
        self.stack.register(c, number)
        return c

    def sent_to(self, number):
        return [o for o in self.stack.outbox_lines() if o["to"] == number]

    def test_registration_required(self):
        c = self.client("carol")
        who = contact("+15557770001")
        mid = c.message(who, "hello")
        e = self.error_for(c, mid)
        self.assertEqual(rig.bare(e.get("from")), who, to_str(e))
        self.assertError(e, "auth", "registration-required")
        self.assertEqual(self.sent_to("+15557770001"), [])

    def test_not_allowed_domain(self):
        m = self.client("mallory", OTHER_DOMAIN)
        mid = m.message(contact("+15557770002"), "hello")
        self.assertError(self.error_for(m, mid), "cancel", "not-allowed")
        self.assertEqual(self.sent_to("+15557770002"), [])

    def test_jid_malformed(self):
        c = self.registered("alice", "+15550001111")
        for node in ("notanumber", "+1", "15557770003x"):
            mid = c.message("%s@%s" % (node, SMS_JID), "hello")
            self.assertError(self.error_for(c, mid), "modify", "jid-malformed",
                             "for %s" % node)

    def test_blank_body_bad_request(self):
        c = self.registered("bob", "+15550002222")
        mid = c.message(contact("+15557770004"), "  \n\t ")
        self.assertError(self.error_for(c, mid), "modify", "bad-request")
        c.barrier(SMS_JID)
        self.assertEqual(self.sent_to("+15557770004"), [])

    def test_unknown_iq_namespace(self):
        c = self.client("alice")
        for to in (SMS_JID, contact("+15557770005")):
            for t in ("get", "set"):
                r = c.iq(to, t, "<query xmlns='urn:example:nonexistent'/>")
                self.assertError(r, "cancel", "service-unavailable",
                                 "iq %s to %s" % (t, to))

    def test_bodiless_groupchat_and_error_ignored(self):
        c = self.registered("dave", "+15550004444")
        who = contact("+15557770006")
        mids = [
            c.message(who, None, extra="<active xmlns="
                      "'http://jabber.org/protocol/chatstates'/>"),
            c.message(who, None, extra="<composing xmlns="
                      "'http://jabber.org/protocol/chatstates'/>"),
            c.message(who, None, extra="<received xmlns='urn:xmpp:receipts'"
                      " id='x1'/>"),
            c.message(who, None, extra="<displayed xmlns="
                      "'urn:xmpp:chat-markers:0' id='x1'/>"),
            c.message(who, "group text", type_="groupchat"),
            c.message(who, "an error", type_="error",
                      extra="<error type='cancel'><item-not-found xmlns="
                      "'urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"),
        ]
        c.barrier(who)
        c.barrier(SMS_JID)
        for mid in mids:
            self.assertNoErrors(c, mid)
        self.assertEqual(self.sent_to("+15557770006"), [])
        self.assertTrue(self.stack.postern.proc.alive())

    def test_provider_permanent_failure(self):
        c = self.registered("erin", "+15550005555")
        mid = c.message(contact("+15557770000"), "to a rejected number")
        e = self.error_for(c, mid)
        etype, cond, text = rig.stanza_error(e)
        self.assertEqual(etype, "cancel", to_str(e))
        self.assertIn(cond, ("item-not-found", "not-acceptable"), to_str(e))
        self.assertIn("rejected", text or "", "provider reason missing: %s"
                      % to_str(e))

    def test_provider_unreachable_after_retries(self):
        c = self.registered("frank", "+15550006666")
        mid = c.message(contact("+15557770503"), "provider is down")
        # max_age is 3 s here; allow for backoff and the queue's timers
        e = self.error_for(c, mid, timeout=20)
        self.assertError(e, "wait", "remote-server-timeout")

    def test_rate_limit_policy_violation(self):
        if not limits_implemented():
            self.skipTest("per-user rate limits are not enforced yet: nothing"
                          " in src/ or transports/ calls ratelimit_check() or "
                          "reads limits.per_user_per_minute")
        c = self.registered("alice", "+15550001111")
        who = contact("+15557770007")
        mids = [c.message(who, "burst %d" % i) for i in range(RATE + 3)]
        e = self.error_for(c, mids[-1])
        self.assertError(e, "wait", "policy-violation")
        c.barrier(SMS_JID)
        self.assertLessEqual(len(self.sent_to("+15557770007")), RATE)


if __name__ == "__main__":
    rig.main()
