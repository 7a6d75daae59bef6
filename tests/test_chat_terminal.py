"""`kernelgpt chat` in a pseudo-terminal, as a person uses it: two turns (the second refers to
the first), Ctrl-C in the middle of a reply ("[stopped]" and a new prompt), Ctrl-C at the
prompt (a hint), /reset, the up arrow recalling the previous line (readline), /quit.
Needs pexpect and SmolLM2 (`kernelgpt fetch smollm2`); skips without them."""
import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

from kernelgpt.io import fetch

pexpect = pytest.importorskip("pexpect")
from pexpect import fdpexpect  # noqa: E402

pytestmark = [pytest.mark.skipif(fetch.cached("smollm2") is None,
                                 reason="SmolLM2 not fetched (kernelgpt fetch smollm2)"),
              pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid")]

TIMEOUT = 180  # per step: the CPU may be shared
PROMPT = "\r\n> "


class _Terminal(fdpexpect.fdspawn):
    """A command in a new pseudo-terminal, typed at with pexpect. Started by subprocess (fork
    and exec in C, no Python in the child before exec: pexpect.spawn's Python-level fork from
    this many-threaded test process can deadlock in the child before it execs), with the
    terminal made its controlling one (`setsid --ctty`), so Ctrl-C is a SIGINT as in a shell."""

    def __init__(self, args, env, dimensions=(24, 80)):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *dimensions, 0, 0))
        self.proc = subprocess.Popen(["setsid", "--ctty", sys.executable, *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        super().__init__(master, encoding="utf-8", timeout=TIMEOUT)

    def sendcontrol(self, char: str) -> int:
        return self.send(chr(ord(char.lower()) - ord("a") + 1))

    def read_nonblocking(self, size=1, timeout=-1):
        try:
            return super().read_nonblocking(size, timeout)
        except OSError:  # EIO: every end of the terminal's other side closed
            self.flag_eof = True
            raise pexpect.EOF("the command closed the terminal") from None

    def close(self, force=False):  # sets exitstatus, as pexpect.spawn's close
        if force and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.exitstatus = self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.child_fd != -1:
                super().close()


@pytest.fixture
def chat(tmp_path):
    env = dict(os.environ, TERM="xterm", KERNELGPT_DEBUG="")
    child = _Terminal(["-m", "kernelgpt", "chat", "--max-new-tokens", "200", "--seed", "0",
                       "--history", str(tmp_path / "history")], env, dimensions=(40, 250))
    yield child
    child.close(force=True)


def _say(child, line: str) -> str:
    """Types a line and returns the reply, up to the next prompt."""
    child.sendline(line)
    child.expect_exact(line)
    child.expect_exact(PROMPT)
    return child.before


def test_a_conversation_in_a_terminal(chat, tmp_path):
    chat.expect(r"context \d+ tokens \(KV cache up to \d+ MB\)")
    chat.expect_exact("> ")

    # two turns, the second refers to the first
    first = _say(chat, "What is the capital of France?")
    assert "Paris" in first and "Traceback" not in first, first
    second = _say(chat, "Tell me one famous monument in that city.")
    assert "Paris" in second or "Eiffel" in second, second  # "that city" was understood

    # Ctrl-C in the middle of a long reply: stopped, noted, back at the prompt
    long_request = "Write a very long story about a dragon who learns to paint."
    chat.sendline(long_request)
    chat.expect_exact(long_request)
    chat.expect(r"[A-Za-z]{3}")  # the reply has started
    chat.sendcontrol("c")
    chat.expect_exact("[stopped]")
    chat.expect_exact("> ")

    # Ctrl-C at the prompt: a hint, the chat goes on
    chat.sendcontrol("c")
    chat.expect_exact("Ctrl-C again")
    chat.expect_exact("> ")

    # the conversation goes on after the stopped reply
    reply = _say(chat, "Thank you. Say hello.")
    assert reply.strip() and "Traceback" not in reply

    # /reset
    chat.sendline("/reset")
    chat.expect_exact("conversation cleared")
    chat.expect_exact("> ")

    # the up arrow recalls the previous line; Enter runs it again
    chat.send("\x1b[A")
    chat.expect_exact("/reset")
    chat.send("\r")
    chat.expect_exact("conversation cleared")
    chat.expect_exact("> ")

    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0, chat.before
    assert "/reset" in (tmp_path / "history").read_text()  # the history was saved


def test_ctrl_c_twice_at_the_prompt_and_ctrl_d_leave(tmp_path):
    env = dict(os.environ, TERM="xterm", KERNELGPT_DEBUG="")
    args = ["-m", "kernelgpt", "chat", "--history", ""]
    child = _Terminal(args, env)
    try:
        child.expect_exact("> ")
        child.sendcontrol("c")
        child.expect_exact("Ctrl-C again")
        child.expect_exact("> ")
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "Traceback" not in child.before
    finally:
        child.close(force=True)
    child = _Terminal(args, env)
    try:
        child.expect_exact("> ")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)
