"""SPEC 5: inbound mail over LMTP (smtplib.LMTP as the MTA). A mail for a
registered address reaches its owner from the sender's escaped address,
with <subject/>, a <thread/> and the text/plain part as body; HTML-only
mail gives derived text; attachments are listed by name and size;
ISO-8859-1 and Shift_JIS are converted; malformed MIME is delivered as
well as it can be, never retried for ever and never fatal. Each recipient
is answered on its own: 550 5.1.1 for an address nobody owns while the
owned one in the same transaction gets 250; over max_message_size: 552."""

import base64
import re

import rig
from rig import to_str

import email_rig
from email_rig import (EMAIL_JID, MAIL_DOMAIN, build_mail, contact,
                       new_msgid, subject_of, thread_of)

ALICE = "alice@" + MAIL_DOMAIN
BOB = "bob@" + MAIL_DOMAIN
MAX = 64 * 1024

_BYTES = ("", "b", "byte", "bytes", "o", "octets")
_SCALE = {"k": (1000, 1024), "kb": (1000, 1024), "kib": (1024,),
          "m": (10 ** 6, 1 << 20), "mb": (10 ** 6, 1 << 20),
          "mib": (1 << 20,)}


def mentions_size(text, size):
    """Whether text states size: exactly in bytes, or in k/M units within
    10% (so rounding is fine, the base64 size is not)."""
    for num, unit in re.findall(
            r"(\d+(?:[.,]\d+)?)\s*(bytes|byte|octets|kib|kb|mib|mb|b|k|m|o)?"
            r"(?![a-z])", text, re.I):
        unit = (unit or "").lower()
        if unit in _BYTES:
            if int(num.replace(",", "").split(".")[0]) == size:
                return True
            continue
        n = float(num.replace(",", "."))
        if any(abs(n * mult - size) <= 0.1 * size for mult in _SCALE[unit]):
            return True
    return False


class TestLmtpInbound(email_rig.EmailTest):
    max_message_size = MAX

    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)
        cls.bob = cls.stack.client("bob")
        cls.stack.register_email(cls.bob, BOB)

    def deliver(self, frm, rcpts, data, expect=250):
        r = self.stack.lmtp(frm, rcpts, data)
        if expect is not None:
            for a in rcpts:
                self.assertEqual(r.rcpt.get(a, (None,))[0], 250, r)
                self.assertEqual(r.data.get(a, (None,))[0], expect, r)
        return r

    def received(self, client, frm, what=None):
        return self.wait_msg(client, frm, what=what)

    def test_plain_text_mail(self):
        frm = "carol@example.net"
        data = build_mail("Carol <%s>" % frm, ALICE, "Hello there",
                          "Hi Alice,\nhow are you?\n")
        r = self.deliver(frm, [ALICE], data)
        self.assertIn("2.0.0", r.data[ALICE][1], r)
        m = self.received(self.alice, frm)
        self.assertEqual(rig.bare(m.get("to")), "alice@localhost")
        self.assertEqual(rig.bare(m.get("from")).lower(),
                         contact(frm).lower())
        self.assertEqual(subject_of(m), "Hello there", to_str(m))
        self.assertTrue(thread_of(m), "no <thread/>: %s" % to_str(m))
        self.assertIn("Hi Alice,\nhow are you?", rig.body(m))
        self.assertNotIn("Content-Type", rig.body(m))

    def test_sender_escaped(self):
        frm = "o'brien+list@Example.NET"
        data = build_mail(frm, ALICE, "escape", "from o'brien\n")
        self.deliver(frm, [ALICE], data)
        m = self.received(self.alice, "o'brien+list@example.net")
        node = rig.bare(m.get("from")).rsplit("@", 1)[0]
        self.assertEqual(node.lower(), "o\\27brien+list\\40example.net")
        self.assertEqual(rig.bare(m.get("from")).rsplit("@", 1)[1],
                         EMAIL_JID)

    def test_alternative_prefers_text(self):
        frm = "alt@example.net"
        data = build_mail(frm, ALICE, "alt", "the plain version\n",
                          html="<p>the <b>HTML</b> version</p>")
        self.deliver(frm, [ALICE], data)
        b = rig.body(self.received(self.alice, frm))
        self.assertIn("the plain version", b)
        self.assertNotIn("HTML version", b)

    def test_html_only(self):
        frm = "html@example.net"
        html = ("<html><head><title>T</title><style>p {color: red}</style>"
                "</head><body><p>Hello <b>world</b>&amp; friends</p>"
                "<script>evil_code()</script><ul><li>first item</li>"
                "<li>second item</li></ul></body></html>")
        data = build_mail(frm, ALICE, "html only", None, html=html)
        self.deliver(frm, [ALICE], data)
        b = rig.body(self.received(self.alice, frm))
        self.assertRegex(b, r"Hello\s+world\s*& friends")
        self.assertIn("first item", b)
        self.assertIn("second item", b)
        self.assertRegex(b, r"first item\s*\n[\s\S]*second item", b)
        for bad in ("<p>", "<b>", "</", "&amp;", "evil_code", "color: red"):
            self.assertNotIn(bad, b)

    def test_attachments_listed(self):
        frm = "files@example.net"
        atts = [("report.pdf", "application/pdf", b"%PDF" + b"x" * 2996),
                ("photo.jpg", "image/jpeg", bytes(range(256)) * 80)]
        data = build_mail(frm, ALICE, "files", "two files attached\n",
                          attachments=atts)
        self.deliver(frm, [ALICE], data)
        b = rig.body(self.received(self.alice, frm))
        self.assertIn("two files attached", b)
        lines = b.splitlines()
        for name, _, payload in atts:
            idx = [i for i, ln in enumerate(lines) if name in ln]
            self.assertTrue(idx, "%s not listed in %r" % (name, b))
            near = " ".join(lines[idx[0]:idx[0] + 2])
            self.assertTrue(mentions_size(near, len(payload)),
                            "size %d of %s not stated in %r"
                            % (len(payload), name, near))
        # the content itself is not pasted into the chat
        self.assertNotIn("%PDF", b)
        self.assertNotIn(base64.b64encode(atts[1][2][:60]).decode()[:40], b)

    def raw_mail(self, frm, subject_raw, headers, body):
        return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Mon, 01 Jan "
                "2024 10:00:00 +0000\r\nMessage-ID: <%s>\r\nMIME-Version: "
                "1.0\r\n%s\r\n" % (frm, ALICE, subject_raw, new_msgid(),
                                   headers)).encode("ascii") + body

    def test_latin1(self):
        frm = "latin@example.net"
        data = self.raw_mail(
            frm, "=?ISO-8859-1?Q?Caf=E9_cr=E8me?=",
            "Content-Type: text/plain; charset=ISO-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n",
            "Cr\u00e8me br\u00fbl\u00e9e \u00e0 la carte\r\n"
            .encode("iso-8859-1"))
        self.deliver(frm, [ALICE], data)
        m = self.received(self.alice, frm)
        self.assertEqual(subject_of(m), "Caf\u00e9 cr\u00e8me")
        self.assertIn("Cr\u00e8me br\u00fbl\u00e9e \u00e0 la carte",
                      rig.body(m))

    def test_shift_jis(self):
        frm = "nihon@example.net"
        subj = "\u65e5\u672c\u8a9e\u306e\u4ef6\u540d"
        text = "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\uff01"
        data = self.raw_mail(
            frm, "=?Shift_JIS?B?%s?=" % base64.b64encode(
                subj.encode("shift_jis")).decode(),
            "Content-Type: text/plain; charset=Shift_JIS\r\n"
            "Content-Transfer-Encoding: base64\r\n",
            base64.encodebytes(text.encode("shift_jis")).replace(
                b"\n", b"\r\n"))
        self.deliver(frm, [ALICE], data)
        m = self.received(self.alice, frm)
        self.assertEqual(subject_of(m), subj)
        self.assertIn(text, rig.body(m))

    def test_bad_and_unknown_charsets(self):
        frm = "oddset@example.net"
        # an unknown label and bytes that are not UTF-8 under a UTF-8
        # label: delivered, as valid text, with the ASCII intact
        for hdr, body in (
                ("text/plain; charset=x-no-such-charset",
                 b"plain words \xff\xfe here\r\n"),
                ("text/plain; charset=utf-8",
                 b"broken \xc3\x28 utf8 \xed\xa0\x80 here\r\n")):
            data = self.raw_mail(frm, "odd", "Content-Type: %s\r\n"
                                 "Content-Transfer-Encoding: 8bit\r\n" % hdr,
                                 body)
            self.deliver(frm, [ALICE], data)
            b = rig.body(self.received(self.alice, frm))
            self.assertIn("here", b)
            self.assertTrue(b.startswith("plain words") or
                            b.startswith("broken"), b)

    def test_malformed_mime(self):
        frm = "broken@example.net"
        cases = [
            # multipart whose closing boundary never comes
            ("Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n",
             b"--XYZ\r\nContent-Type: text/plain\r\n\r\nvisible part one"
             b"\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\nAAAA!!not base64",
             "visible part one"),
            # multipart without a boundary parameter
            ("Content-Type: multipart/mixed\r\n",
             b"--abc\r\nContent-Type: text/plain\r\n\r\nvisible part two"
             b"\r\n--abc--\r\n", None),
            # broken base64 and quoted-printable
            ("Content-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: base64\r\n",
             b"dmlzaWJsZSBwYXJ0IHRocmVl!!!***\r\n", None),
            ("Content-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: quoted-printable\r\n",
             b"visible part four =ZZ =\r\n=3D=\r\n", "visible part four"),
            # garbage header lines, NUL bytes, a header without a colon
            ("X-Junk \x01\x02 no colon here\r\nContent-Type: ;;;=\r\n",
             b"visible part five\x00 with NUL\r\n", None),
            # deep nesting
            ("Content-Type: multipart/mixed; boundary=\"b0\"\r\n",
             b"".join(b"--b%d\r\nContent-Type: multipart/mixed; "
                      b"boundary=\"b%d\"\r\n\r\n" % (i, i + 1)
                      for i in range(60))
             + b"--b60\r\nContent-Type: text/plain\r\n\r\nvisible part six"
               b"\r\n", None),
        ]
        for headers, body, must in cases:
            data = self.raw_mail(frm, "malformed", headers, body)
            r = self.stack.lmtp(frm, [ALICE], data)
            code = r.data.get(ALICE, (None,))[0]
            # delivered (250) or refused for good (5xx); never a 4xx
            # that would make the MTA retry it for ever
            self.assertTrue(code == 250 or (code or 0) >= 500,
                            "%r: %r" % (headers, r))
            self.assertTrue(self.stack.postern.proc.alive(),
                            rig.tail(self.stack.postern.log_path))
            if code == 250:
                m = self.received(self.alice, frm, "malformed %r" % headers)
                if must:
                    self.assertIn(must, rig.body(m) or "")
        # still working afterwards
        self.deliver(frm, [ALICE], build_mail(frm, ALICE, "ok", "after\n"))
        self.assertIn("after", rig.body(self.received(self.alice, frm)))

    def test_nul_byte_does_not_cut_the_text(self):
        # NUL cannot go into XMPP; it is dropped, the text after it stays
        frm = "nul@example.net"
        data = self.raw_mail(frm, "nul", "Content-Type: text/plain; "
                             "charset=utf-8\r\n",
                             b"before the NUL\x00 after the NUL\r\n")
        self.deliver(frm, [ALICE], data)
        b = rig.body(self.received(self.alice, frm))
        self.assertIn("before the NUL", b)
        self.assertIn("after the NUL", b)

    def test_invalid_content_type_is_text(self):
        # RFC 2045 5.2: a syntactically invalid Content-Type is taken as
        # text/plain; charset=us-ascii, so the words reach the user
        frm = "badtype@example.net"
        data = self.raw_mail(frm, "bad type", "Content-Type: ;;;=\r\n",
                             b"words under a broken content type\r\n")
        self.deliver(frm, [ALICE], data)
        b = rig.body(self.received(self.alice, frm))
        self.assertIn("words under a broken content type", b)

    def test_unknown_recipient_answered_alone(self):
        frm = "mixed@example.net"
        nobody = "nobody@" + MAIL_DOMAIN
        data = build_mail(frm, ", ".join([ALICE, nobody]), "mixed",
                          "to alice and nobody\n")
        r = self.stack.lmtp(frm, [nobody, ALICE, "x@example.org"], data)
        self.assertEqual(r.rcpt[nobody][0], 550, r)
        self.assertIn("5.1.1", r.rcpt[nobody][1], r)
        self.assertGreaterEqual(r.rcpt["x@example.org"][0], 500, r)
        self.assertEqual(r.rcpt[ALICE][0], 250, r)
        self.assertEqual(list(r.data), [ALICE], r)
        self.assertEqual(r.data[ALICE][0], 250, r)
        m = self.received(self.alice, frm)
        self.assertIn("to alice and nobody", rig.body(m))
        self.alice.barrier(EMAIL_JID)
        self.assertEqual(len([e for e in self.alice.inbox
                              if email_rig.is_email_msg(e, frm)]), 1,
                         "delivered more than once")

    def test_two_owned_recipients(self):
        frm = "both@example.net"
        data = build_mail(frm, "%s, %s" % (ALICE, BOB), "both", "to both\n")
        r = self.deliver(frm, [ALICE, BOB], data)
        self.assertEqual(len(r.data), 2, r)
        for c in (self.alice, self.bob):
            m = self.received(c, frm)
            self.assertIn("to both", rig.body(m))

    def test_over_max_message_size(self):
        frm = "big@example.net"
        big = build_mail(frm, ALICE, "big", ("x" * 70 + "\n") * 1200)
        self.assertGreater(len(big), MAX)
        r = self.stack.lmtp(frm, [ALICE], big)
        self.assertEqual(r.rcpt[ALICE][0], 250, r)
        self.assertEqual(r.data[ALICE][0], 552, r)
        # a declared SIZE= above the limit is refused at MAIL when SIZE is
        # offered
        r = self.stack.lmtp(frm, [ALICE], big,
                            mail_options=["SIZE=%d" % (MAX * 4)])
        if r.mail[0] == 250 and r.data:
            self.assertEqual(r.data[ALICE][0], 552, r)
        elif r.mail[0] != 250:
            self.assertEqual(r.mail[0], 552, r)
        # just under the limit is delivered
        ok = build_mail(frm, ALICE, "fits", ("y" * 70 + "\n") * 700)
        self.assertLess(len(ok), MAX)
        self.deliver(frm, [ALICE], ok)
        m = self.received(self.alice, frm)
        self.assertEqual(subject_of(m), "fits")
        self.alice.barrier(EMAIL_JID)
        self.assertFalse([e for e in self.alice.inbox
                          if subject_of(e) == "big"])


if __name__ == "__main__":
    email_rig.main()
