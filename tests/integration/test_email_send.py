"""SPEC 5/8: XMPP -> email through the relay (the SMTP sink). A message to
bob\\40example.com@email.localhost from a registered user becomes one mail
from the user's claimed address (envelope and From) to bob@example.com,
with the <subject/> (RFC 2047 when not ASCII) or the configured default,
Date, a Message-ID under mail_domain, a UTF-8 text/plain body
(quoted-printable when not ASCII, lines within 998 octets). CR/LF in the
subject, body or contact node never produce an extra header or
recipient."""

import email.header
import email.utils
import re

import rig
from rig import to_str

import email_rig
from email_rig import (DEFAULT_SUBJECT, EMAIL_JID, MAIL_DOMAIN, contact,
                       send_xmpp, xml_attr)

ALICE = "alice@" + MAIL_DOMAIN


class TestEmailSend(email_rig.EmailTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)

    def sent(self, to, mid, client=None):
        """The one mail for message mid to to, checked for the basics."""
        m = self.stack.wait_mail_to(to, client=client or self.alice, mid=mid)
        return self.check_common(m, to)

    def check_common(self, m, to):
        """What every outbound mail must have."""
        self.assertEqual(m.rcpt_tos, [to], m)
        self.assertEqual(m.mail_from, ALICE, m)
        self.assertEqual(email.utils.parseaddr(str(m.header("From")))[1],
                         ALICE, m)
        self.assertEqual([email.utils.parseaddr(str(v))[1]
                          for v in m.headers("To")], [to], m)
        self.assertEqual(m.headers("Cc") + m.headers("Bcc"), [], m)
        date = m.header("Date")
        self.assertIsNotNone(date, m)
        self.assertIsNotNone(email.utils.parsedate_to_datetime(str(date)),
                             m)
        mid = m.msgid()
        self.assertRegex(mid, r"^[^@<>\s]+@" + re.escape(MAIL_DOMAIN) + "$",
                         m)
        ctype = m.msg.get_content_type()
        self.assertEqual(ctype, "text/plain", m)
        self.assertEqual((m.msg.get_content_charset() or "").lower(),
                         "utf-8", m)
        # 7-bit on the wire, every line within RFC 5322's 998 octets
        self.assertTrue(all(b < 0x80 for b in m.raw), m)
        for line in m.raw.split(b"\r\n"):
            self.assertLessEqual(len(line), 998, m)
        # exactly one of each of these
        for h in ("From", "To", "Date", "Message-ID", "Subject"):
            self.assertEqual(len(m.headers(h)), 1, "%s: %r" % (h, m))
        return m

    def test_plain_ascii(self):
        to = "bob@example.com"
        mid = send_xmpp(self.alice, contact(to), "Hello Bob,\nsee you.",
                        subject="Lunch")
        m = self.sent(to, mid)
        self.assertEqual(str(m.header("Subject")), "Lunch")
        self.assertEqual(m.text().replace("\r\n", "\n").rstrip("\n"),
                         "Hello Bob,\nsee you.")
        self.assertNoErrors(self.alice, mid)

    def test_default_subject(self):
        to = "nosubject@example.com"
        mid = send_xmpp(self.alice, contact(to), "no subject here")
        m = self.sent(to, mid)
        self.assertEqual(str(m.header("Subject")), DEFAULT_SUBJECT, m)

    def test_non_ascii_subject_and_body(self):
        to = "jose@example.com"
        subject = "Caf\u00e9 \u2603 \u65e5\u672c\u8a9e \U0001F600"
        text = "Ol\u00e1 Jos\u00e9! \u00bfQu\u00e9 tal? \u2603 \U0001F600"
        mid = send_xmpp(self.alice, contact(to), text, subject=subject)
        m = self.sent(to, mid)
        raw_subject = [v for n, v in m.raw_headers()
                       if n.lower() == "subject"][0]
        self.assertIn("=?", raw_subject, "subject not RFC 2047: %r"
                      % raw_subject)
        decoded = str(email.header.make_header(
            email.header.decode_header(raw_subject.replace("\r\n", ""))))
        self.assertEqual(decoded.strip(), subject)
        self.assertEqual(m.msg.get("Content-Transfer-Encoding", "").lower(),
                         "quoted-printable", m)
        self.assertEqual(m.text().rstrip("\r\n"), text)

    def test_markup_and_long_lines(self):
        to = "long@example.com"
        text = ("<b>not markup</b> & \"quotes\" 'x'\n"
                + "word " * 600 + "end\n"     # a 3003-octet line
                + "\u00e9" * 1200 + "\n"        # 2400 octets in UTF-8
                + ".\n.. a line with dots\nFrom the start\n"
                + "trailing space \nlast")
        mid = send_xmpp(self.alice, contact(to), text, subject="long")
        m = self.sent(to, mid)
        self.assertEqual(m.text().replace("\r\n", "\n").rstrip("\n"), text)

    def test_message_types(self):
        for t in ("chat", "normal", "headline"):
            to = "type-%s@example.com" % t
            mid = send_xmpp(self.alice, contact(to), "type " + t, type_=t)
            m = self.sent(to, mid)
            self.assertEqual(m.text().strip(), "type " + t)

    def test_resource_and_case_of_contact(self):
        # the contact's resource does not matter; the domain is not case
        # sensitive (and a client may send it in capitals)
        to = "Case@Example.COM"
        mid = send_xmpp(self.alice, contact(to) + "/laptop", "case")
        m = self.stack.wait_mails(lambda m: any(
            r.lower() == to.lower() for r in m.rcpt_tos), 1,
            what="mail to %s" % to, errors=(self.alice, [mid]))[0]
        self.assertEqual(m.rcpt_tos[0].split("@")[1], "example.com", m)
        self.assertEqual(m.text().strip(), "case")

    def test_header_injection_subject(self):
        to = "inject1@example.com"
        subject = ("Hi\r\nBcc: evil1@example.org\r\nX-Injected: yes\r\n"
                   "\r\nbody?")
        mid = send_xmpp(self.alice, contact(to), "subject injection",
                  subject=subject)
        m = self.sent(to, mid)
        self.assert_not_injected(m, "evil1")
        self.assertIn("Hi", str(m.header("Subject")))
        self.assertEqual(m.text().strip(), "subject injection")

    def test_header_injection_body(self):
        to = "inject2@example.com"
        body = ("\r\nBcc: evil2@example.org\r\nX-Injected: yes\r\n\r\n"
                "line\r\n.\r\nMAIL FROM:<evil2@example.org>\r\n")
        mid = send_xmpp(self.alice, contact(to), body,
                        subject="body injection")
        m = self.sent(to, mid)
        self.assert_not_injected(m, "evil2")
        # the text arrives whole, as text (the lone dot did not end DATA)
        self.assertIn("MAIL FROM:<evil2@example.org>", m.text())
        self.assertIn("Bcc: evil2@example.org", m.text())

    def test_header_injection_thread(self):
        # <thread/> is an NMTOKEN; whether postern refuses this one or
        # sends it, no header may come of it
        to = "inject3@example.com"
        mid = send_xmpp(self.alice, contact(to), "thread injection",
                        thread="t1\r\nBcc: evil3@example.org")
        self.alice.barrier(EMAIL_JID)
        self.stack.poll(lambda: self.stack.mails_to(to) or
                       self.alice.errors_for(mid), 10,
                       "mail to %s or an error" % to)
        for m in self.stack.mails_to(to):
            self.check_common(m, to)
            self.assert_not_injected(m, "evil3")

    def test_header_injection_contact_node(self):
        # escaped CR/LF, '>' and ',' in the node: the address is invalid
        # and the sender gets jid-malformed; nothing reaches the relay
        nodes = ["bob\\40example.com\\0d\\0aBcc\\3a evil4\\40example.org",
                 "bob\\40example.com\\3e\\20\\3cevil4\\40example.org",
                 "bob\\40example.com,evil4\\40example.org",
                 "evil4\\40example.org\\0d\\0a"]
        mids = []
        for n in nodes:
            mid = self.alice.new_id()
            self.alice.send_raw("<message to='%s@%s' type='chat' id='%s'>"
                                "<body>node injection</body></message>"
                                % (xml_attr(n), EMAIL_JID, mid))
            mids.append((n, mid))
        for n, mid in mids:
            e = self.wait_error(self.alice, mid)
            self.assertEqual(rig.stanza_error(e)[1], "jid-malformed",
                             "for node %r: %s" % (n, to_str(e)))
        self.alice.barrier(EMAIL_JID)
        for m in self.stack.mails():
            self.assertFalse(any("evil4" in r for r in m.rcpt_tos), m)
            self.assertNotIn(b"evil4", m.raw, m)

    def assert_not_injected(self, m, marker):
        names = [n.lower() for n, _ in m.raw_headers()]
        self.assertNotIn("bcc", names, m)
        self.assertNotIn("x-injected", names, m)
        for h in ("To", "Cc", "Bcc", "From", "Reply-To"):
            for v in m.headers(h):
                self.assertNotIn(marker, str(v), m)
        for r in m.rcpt_tos:
            self.assertNotIn(marker, r, m)
        for n, v in m.raw_headers():
            if marker in v:
                # only inside a header it belongs to (the Subject)
                self.assertIn(n.lower(), ("subject",), m)
        self.assertEqual(self.stack.mails(lambda x: any(
            marker in r for r in x.rcpt_tos)), [])

    def test_each_user_sends_from_own_address(self):
        bob = self.client("bob")
        self.stack.register_email(bob, "bob@" + MAIL_DOMAIN)
        to = "fromcheck@example.com"
        mid = send_xmpp(bob, contact(to), "from bob")
        m = self.stack.wait_mail_to(to, client=bob, mid=mid)
        self.assertEqual(m.mail_from, "bob@" + MAIL_DOMAIN)
        self.assertEqual(email.utils.parseaddr(str(m.header("From")))[1],
                         "bob@" + MAIL_DOMAIN)

    def test_fresh_message_ids(self):
        to = "ids@example.com"
        mids = [send_xmpp(self.alice, contact(to), "id %d" % i)
                for i in range(3)]
        mails = self.stack.wait_mails(lambda m: to in m.rcpt_tos, 3,
                                      what="mails to " + to,
                                      errors=(self.alice, mids))
        self.assertEqual(len({m.msgid() for m in mails}), 3,
                         [m.msgid() for m in mails])
        self.assertEqual(sorted(m.text().strip() for m in mails),
                         ["id 0", "id 1", "id 2"])

    def test_unregistered_and_bad_contact(self):
        carol = self.client("carol")
        mid = send_xmpp(carol, contact("x@example.com"), "not registered")
        self.assertError(self.wait_error(carol, mid), "auth",
                         "registration-required")
        mid = send_xmpp(self.alice, "not-an-address@" + EMAIL_JID, "bad")
        self.assertError(self.wait_error(self.alice, mid), "modify",
                         "jid-malformed")
        mid = send_xmpp(self.alice, contact("blank@example.com"), "  \n ")
        self.assertError(self.wait_error(self.alice, mid), "modify",
                         "bad-request")
        self.alice.barrier(EMAIL_JID)
        self.assertEqual(self.stack.mails_to("x@example.com")
                         + self.stack.mails_to("blank@example.com"), [])


if __name__ == "__main__":
    email_rig.main()
