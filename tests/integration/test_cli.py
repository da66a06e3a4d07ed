"""SPEC 1: command line. --version, --help, --check on good and bad
configurations (FILE:LINE: KEY: why, exit 0/1, contacts nothing), and a bad
configuration at start exits 1 with one line naming the key."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import rig


class FakeStack:
    """Enough of a Stack for rig.postern_config, pointing at closed ports."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.http_port = rig.free_port()
        self.smtp_port = rig.free_port()
        self.lmtp_port = rig.free_port()
        self.prefix = "clitest"
        self.outbox = os.path.join(tmp, "outbox.jsonl")

        class R:
            url = "redis://127.0.0.1:%d/0" % rig.free_port()
        self.redis = R()

        class S:
            component_port = rig.free_port()
        self.server = S()


class TestCli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="postern-cli-")
        self.fake = FakeStack(self.tmp)
        self.bin = rig.postern_bin()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_postern(self, *args, timeout=20):
        return subprocess.run([self.bin] + list(args), capture_output=True,
                              text=True, timeout=timeout)

    def good(self, **kw):
        return rig.postern_config(self.fake, **kw)

    def test_version(self):
        r = self.run_postern("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"postern\s+\d+\.\d+")

    def test_help(self):
        r = self.run_postern("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout + r.stderr
        for opt in ("-c", "--check", "--version"):
            self.assertIn(opt, out)

    def test_check_good(self):
        for email in (False, True):
            path = self.write("good.conf", self.good(email=email))
            r = self.run_postern("-c", path, "--check")
            self.assertEqual(r.returncode, 0, "email=%s: %s%s"
                             % (email, r.stdout, r.stderr))
        # --check contacts nothing and creates nothing
        self.assertFalse(os.path.exists(self.fake.outbox))

    def assert_problem(self, r, path, key):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        pat = r"%s:\d+: [\w.\[\]]*%s[\w.\[\]]*: \S" % (re.escape(path),
                                                      re.escape(key))
        self.assertRegex(out, pat, "no FILE:LINE: KEY: why line for %s" % key)

    def test_check_unknown_key(self):
        text = self.good().replace("xmpp = {", "xmpp = { colour = 3;")
        path = self.write("bad1.conf", text)
        self.assert_problem(self.run_postern("-c", path, "--check"), path,
                            "colour")

    def test_check_wrong_type_and_missing(self):
        text = self.good().replace('secret = "%s";' % rig.SMS_SECRET,
                                   "secret = 42;")
        path = self.write("bad2.conf", text)
        self.assert_problem(self.run_postern("-c", path, "--check"), path,
                            "secret")
        text = re.sub(r"allowed_domains = \[[^\]]*\];", "", self.good())
        path = self.write("bad3.conf", text)
        self.assert_problem(self.run_postern("-c", path, "--check"), path,
                            "allowed_domains")

    def test_check_syntax_error(self):
        path = self.write("bad4.conf", self.good() + "\nthis is not { libconfig")
        r = self.run_postern("-c", path, "--check")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stdout + r.stderr, re.escape(path) + r":\d+:")

    def test_start_with_bad_config(self):
        text = self.good().replace("xmpp = {", "xmpp = { colour = 3;")
        path = self.write("bad5.conf", text)
        r = self.run_postern("-c", path, timeout=15)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("colour", r.stderr)
        # nothing half-started: the HTTP port was never opened
        self.assertFalse(rig.port_open(self.fake.http_port))

    def test_missing_file(self):
        r = self.run_postern("-c", os.path.join(self.tmp, "nope.conf"),
                             "--check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.conf", r.stdout + r.stderr)


if __name__ == "__main__":
    rig.main()
