"""SPEC 5 (threads): a mail sent from XMPP and its reply from the mail side
thread together on both sides. XMPP <thread/> T -> mail M1; a mail
replying to M1 (In-Reply-To, or only References) arrives in XMPP with
<thread/> T; an XMPP reply in T goes out with In-Reply-To = the reply's
Message-ID and References = the chain (RFC 5322 3.6.4). The same when the
first XMPP message had no <thread/>, and for a conversation that starts by
mail. Threads are per user: another user's thread id does not join."""

import rig

import email_rig
from email_rig import (MAIL_DOMAIN, build_mail, contact, ids, new_msgid,
                       send_xmpp, subject_of, thread_of)

ALICE = "alice@" + MAIL_DOMAIN
BOB = "bob@" + MAIL_DOMAIN


class TestEmailThreads(email_rig.EmailTest):
    @classmethod
    def prepare(cls):
        cls.alice = cls.stack.client("alice")
        cls.stack.register_email(cls.alice, ALICE)
        cls.bob = cls.stack.client("bob")
        cls.stack.register_email(cls.bob, BOB)

    def xmpp_to_mail(self, client, to, body, **kw):
        mid = send_xmpp(client, contact(to), body, **kw)
        ms = self.stack.wait_mails(
            lambda m: to in m.rcpt_tos and body in (m.text() or ""), 1,
            what="mail %r to %s" % (body, to), errors=(client, [mid]))
        self.assertEqual(len(ms), 1, ms)
        return ms[0]

    def mail_to_xmpp(self, client, frm, to, body, **kw):
        msgid = new_msgid()
        data = build_mail(frm, to, kw.pop("subject", "Re: hello"), body,
                          msgid=msgid, **kw)
        r = self.stack.lmtp(frm, [to], data)
        self.assertEqual(r.data.get(to, (None,))[0], 250, r)
        m = client.wait(lambda e: email_rig.is_email_msg(e, frm) and
                        body.strip() in (rig.body(e) or ""),
                        what="reply %r from %s" % (body, frm))
        return msgid, m

    def test_xmpp_thread_round_trip(self):
        peer = "peer1@example.com"
        t = "thread-6d1b2c0e-aaaa-4bbb-8ccc-000000000001"
        m1 = self.xmpp_to_mail(self.alice, peer, "first from xmpp",
                               subject="Plans", thread=t)
        self.assertEqual(m1.headers("In-Reply-To"), [], m1)
        id1 = m1.msgid()

        # the peer answers by mail
        id2, x = self.mail_to_xmpp(self.alice, peer, ALICE,
                                   "answer by mail\n", subject="Re: Plans",
                                   in_reply_to=id1, references=[id1])
        self.assertEqual(thread_of(x), t, rig.to_str(x))
        self.assertEqual(subject_of(x), "Re: Plans")

        # alice answers in the thread from XMPP
        m3 = self.xmpp_to_mail(self.alice, peer, "second from xmpp",
                               thread=t)
        self.assertEqual(ids(m3.header("In-Reply-To")), [id2], m3)
        self.assertEqual(ids(m3.header("References")), [id1, id2], m3)
        self.assertNotIn(m3.msgid(), (id1, id2))
        # no <subject/>: the thread's subject as a reply, not the default
        self.assertIn("Plans", str(m3.header("Subject")), m3)

        # and a further mail reply that only carries References
        _, y = self.mail_to_xmpp(self.alice, peer, ALICE, "third by mail\n",
                                 references=[id1, id2, m3.msgid()])
        self.assertEqual(thread_of(y), t, rig.to_str(y))

    def test_xmpp_without_thread(self):
        peer = "peer2@example.com"
        m1 = self.xmpp_to_mail(self.alice, peer, "no thread element")
        id1 = m1.msgid()
        _, x = self.mail_to_xmpp(self.alice, peer, ALICE,
                                 "reply to a threadless one\n",
                                 in_reply_to=id1, references=[id1])
        t = thread_of(x)
        self.assertTrue(t, rig.to_str(x))
        m3 = self.xmpp_to_mail(self.alice, peer, "continuing it", thread=t)
        self.assertEqual(len(ids(m3.header("In-Reply-To"))), 1, m3)
        self.assertIn(id1, ids(m3.header("References")), m3)

    def test_conversation_started_by_mail(self):
        peer = "peer3@example.com"
        id1, x = self.mail_to_xmpp(self.alice, peer, ALICE,
                                   "hello from mail\n", subject="Question")
        t = thread_of(x)
        self.assertTrue(t, rig.to_str(x))
        m2 = self.xmpp_to_mail(self.alice, peer, "answer from xmpp",
                               thread=t)
        self.assertEqual(ids(m2.header("In-Reply-To")), [id1], m2)
        self.assertEqual(ids(m2.header("References")), [id1], m2)
        self.assertIn("Question", str(m2.header("Subject")), m2)
        # the peer's next mail (replying to alice's) is in the same thread
        _, y = self.mail_to_xmpp(self.alice, peer, ALICE, "and again\n",
                                 in_reply_to=m2.msgid(),
                                 references=[id1, m2.msgid()])
        self.assertEqual(thread_of(y), t)

    def test_unrelated_mails_get_different_threads(self):
        peer = "peer4@example.com"
        _, x = self.mail_to_xmpp(self.alice, peer, ALICE, "topic one\n",
                                 subject="One")
        _, y = self.mail_to_xmpp(self.alice, peer, ALICE, "topic two\n",
                                 subject="Two")
        self.assertTrue(thread_of(x) and thread_of(y))
        self.assertNotEqual(thread_of(x), thread_of(y))

    def test_threads_are_per_user(self):
        # bob uses alice's thread id: his mail must not reply to her mail
        peer = "peer5@example.com"
        t = "thread-6d1b2c0e-aaaa-4bbb-8ccc-000000000005"
        m1 = self.xmpp_to_mail(self.alice, peer, "alice starts", thread=t)
        mb = self.xmpp_to_mail(self.bob, peer, "bob in same id", thread=t)
        self.assertEqual(mb.headers("In-Reply-To"), [], mb)
        self.assertNotIn(m1.msgid(), ids(mb.header("References")), mb)
        # a mail replying to alice's mail but addressed to bob does not
        # reveal alice's thread id to bob
        _, x = self.mail_to_xmpp(self.bob, peer, BOB, "to bob re alice\n",
                                 in_reply_to=m1.msgid())
        _, y = self.mail_to_xmpp(self.alice, peer, ALICE,
                                 "to alice re alice\n",
                                 in_reply_to=m1.msgid())
        self.assertEqual(thread_of(y), t)
        self.assertTrue(thread_of(x))


if __name__ == "__main__":
    email_rig.main()
