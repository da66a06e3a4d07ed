"""SPEC 3/5: registration on the email gateway with <email/>: only an
address in mail_domain is accepted (not-acceptable otherwise), an address
held by another JID is a conflict, re-registering replaces, <remove/>
unregisters; the same through the data form, the ad-hoc command
jabber:iq:register and the chat commands register/status/unregister."""

import rig
from rig import NS_COMMANDS, NS_DATA, NS_REGISTER, OTHER_DOMAIN, child, to_str

import email_rig
from email_rig import EMAIL_JID, MAIL_DOMAIN, contact, send_xmpp, xml_text


def legacy(addr):
    return ("<query xmlns='jabber:iq:register'><email>%s</email></query>"
            % xml_text(addr))


def form(addr):
    return ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' "
            "type='submit'><field var='FORM_TYPE'><value>jabber:iq:register"
            "</value></field><field var='email'><value>%s</value></field>"
            "</x></query>" % xml_text(addr))


REMOVE = "<query xmlns='jabber:iq:register'><remove/></query>"


class TestEmailRegister(email_rig.EmailTest):
    def get(self, c):
        r = c.iq(EMAIL_JID, "get", "<query xmlns='%s'/>" % NS_REGISTER)
        self.assertEqual(r.get("type"), "result", to_str(r))
        return child(r, NS_REGISTER, "query")

    def registered(self, c):
        q = self.get(c)
        if child(q, NS_REGISTER, "registered") is None:
            return None
        e = child(q, NS_REGISTER, "email")
        self.assertIsNotNone(e, to_str(q))
        return e.text

    def set(self, c, payload):
        return c.iq(EMAIL_JID, "set", payload)

    def test_get_has_email_field_and_form(self):
        q = self.get(self.client("frank"))
        self.assertIsNotNone(child(q, NS_REGISTER, "email"), to_str(q))
        ins = child(q, NS_REGISTER, "instructions")
        self.assertTrue(ins is not None and (ins.text or "").strip())
        x = child(q, NS_DATA, "x")
        self.assertIsNotNone(x, to_str(q))
        self.assertIn("email", [f.get("var") for f in
                                x.findall("{%s}field" % NS_DATA)])

    def test_register_conflict_replace_remove(self):
        a = self.client("alice")
        r = self.set(a, legacy("alice@" + MAIL_DOMAIN))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(self.registered(a), "alice@" + MAIL_DOMAIN)

        # another JID may not take it
        b = self.client("bob")
        r = self.set(b, legacy("alice@" + MAIL_DOMAIN))
        self.assertError(r, "cancel", "conflict")
        self.assertIsNone(self.registered(b))

        # re-registering replaces: the old address is free again
        r = self.set(a, legacy("alice2@" + MAIL_DOMAIN))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(self.registered(a), "alice2@" + MAIL_DOMAIN)
        r = self.set(b, legacy("alice@" + MAIL_DOMAIN))
        self.assertEqual(r.get("type"), "result",
                         "old address not released: %s" % to_str(r))

        # remove: afterwards nothing is sent for alice
        r = self.set(a, REMOVE)
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertIsNone(self.registered(a))
        mid = send_xmpp(a, contact("zed@example.com"), "after remove")
        e = self.wait_error(a, mid)
        self.assertError(e, "auth", "registration-required")
        a.barrier(EMAIL_JID)
        self.assertEqual(self.stack.mails_to("zed@example.com"), [])
        # ... and alice2@ can be taken by someone else now
        r = self.set(self.client("carol"), legacy("alice2@" + MAIL_DOMAIN))
        self.assertEqual(r.get("type"), "result", to_str(r))

    def test_outside_mail_domain_not_acceptable(self):
        c = self.client("dave")
        for bad in ("dave@example.com",            # another domain
                    "dave@sub." + MAIL_DOMAIN,     # a subdomain is not it
                    "dave@" + MAIL_DOMAIN + ".evil.org",
                    "not an address",
                    "dave@@" + MAIL_DOMAIN,
                    "dave\r\nBcc: x@example.com@" + MAIL_DOMAIN,
                    ""):
            r = self.set(c, legacy(bad))
            e = rig.stanza_error(r)
            self.assertIsNotNone(e, "%r accepted: %s" % (bad, to_str(r)))
            self.assertEqual(e[1], "not-acceptable", "for %r: %s"
                             % (bad, to_str(r)))
            self.assertIsNone(self.registered(c), "registered %r" % bad)

    def test_form_registration(self):
        c = self.client("erin")
        r = self.set(c, form("erin@" + MAIL_DOMAIN))
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(self.registered(c), "erin@" + MAIL_DOMAIN)
        r = self.set(c, form("erin@example.com"))
        self.assertEqual(rig.stanza_error(r)[1], "not-acceptable",
                         to_str(r))
        self.assertEqual(self.registered(c), "erin@" + MAIL_DOMAIN)
        self.assertEqual(self.set(c, REMOVE).get("type"), "result")

    def test_other_domain_not_allowed(self):
        m = self.client("mallory", OTHER_DOMAIN)
        r = self.set(m, legacy("mallory@" + MAIL_DOMAIN))
        self.assertError(r, "cancel", "not-allowed")

    def adhoc(self, c, sessionid=None, addr=None, action="execute"):
        sid = " sessionid='%s'" % sessionid if sessionid else ""
        x = ""
        if addr is not None:
            x = ("<x xmlns='jabber:x:data' type='submit'><field var='email'>"
                 "<value>%s</value></field></x>" % xml_text(addr))
        return c.iq(EMAIL_JID, "set", "<command xmlns='%s' node='jabber:"
                    "iq:register' action='%s'%s>%s</command>"
                    % (NS_COMMANDS, action, sid, x))

    def test_adhoc_command(self):
        c = self.client("carol")
        self.set(c, REMOVE)
        r = self.adhoc(c)
        self.assertEqual(r.get("type"), "result", to_str(r))
        cmd = child(r, NS_COMMANDS, "command")
        sid = cmd.get("sessionid")
        x = child(cmd, NS_DATA, "x")
        self.assertIsNotNone(x, to_str(r))
        self.assertIn("email", [f.get("var") for f in
                                x.findall("{%s}field" % NS_DATA)])
        # a refused address: an IQ error or a completed command with an
        # error note; nothing registered either way
        r = self.adhoc(c, sid, "carol@example.com", "complete")
        if r.get("type") == "result":
            notes = [n.get("type") for n in child(r, NS_COMMANDS, "command")
                     .findall("{%s}note" % NS_COMMANDS)]
            self.assertIn("error", notes, to_str(r))
        else:
            self.assertEqual(rig.stanza_error(r)[1], "not-acceptable",
                             to_str(r))
        self.assertIsNone(self.registered(c))

        r = self.adhoc(c)
        sid = child(r, NS_COMMANDS, "command").get("sessionid")
        r = self.adhoc(c, sid, "carol@" + MAIL_DOMAIN, "complete")
        self.assertEqual(r.get("type"), "result", to_str(r))
        self.assertEqual(child(r, NS_COMMANDS, "command").get("status"),
                         "completed", to_str(r))
        self.assertEqual(self.registered(c), "carol@" + MAIL_DOMAIN)
        self.assertEqual(self.set(c, REMOVE).get("type"), "result")

    def chat(self, c, text):
        c.message(EMAIL_JID, text)
        m = c.wait(lambda e: rig.is_msg(e, EMAIL_JID),
                   what="chat reply to %r" % text)
        self.assertTrue(rig.body(m).strip(), to_str(m))
        return rig.body(m)

    def test_chat_commands(self):
        c = self.client("frank")
        self.assertIn("register", self.chat(c, "help").lower())
        reply = self.chat(c, "register frank@example.com")
        self.assertIsNone(self.registered(c), "refused address registered;"
                          " reply was %r" % reply)
        self.chat(c, "register frank@" + MAIL_DOMAIN)
        self.assertEqual(self.registered(c), "frank@" + MAIL_DOMAIN)
        self.assertIn("frank@" + MAIL_DOMAIN, self.chat(c, "status"))
        self.chat(c, "unregister")
        self.assertIsNone(self.registered(c))
        self.assertNotIn("frank@" + MAIL_DOMAIN, self.chat(c, "status"))


if __name__ == "__main__":
    email_rig.main()
