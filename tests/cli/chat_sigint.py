#!/usr/bin/env python3
"""Ctrl-C handling of `1bit chat`: SIGINT during an answer stops that answer (the program keeps
running and answers the next line); two SIGINTs at the prompt end the program with status 0.

  chat_sigint.py 1BIT_BINARY MODEL
"""
import os
import signal
import subprocess
import sys
import time

binary, model = sys.argv[1], sys.argv[2]
# -n -1 and a 2048-token context: the tiny model answers "hello there" with hundreds of tokens,
# so the answer is still running when the first byte shows up and the signal is sent.
p = subprocess.Popen([binary, "chat", "-m", model, "--temp", "0", "-n", "-1", "--ctx", "2048", "-t", "1", "-v"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
err_fd = p.stderr.fileno()
os.set_blocking(err_fd, False)
stderr = b""


def read_stderr_until(pattern, count=1, timeout=60):
    """Reads stderr until `pattern` has appeared `count` times."""
    global stderr
    end = time.time() + timeout
    while stderr.count(pattern) < count:
        if time.time() > end:
            raise SystemExit(f"timed out waiting for {pattern!r}; stderr so far:\n{stderr.decode(errors='replace')}")
        try:
            chunk = os.read(err_fd, 65536)
            if chunk:
                stderr += chunk
                continue
        except BlockingIOError:
            pass
        if p.poll() is not None:
            raise SystemExit(f"chat exited ({p.returncode}) while waiting for {pattern!r}:\n{stderr.decode(errors='replace')}")
        time.sleep(0.005)


p.stdin.write(b"hello there\n")
p.stdin.flush()
first = p.stdout.read1(1)  # the answer has started
assert first, "no answer"
p.send_signal(signal.SIGINT)
read_stderr_until(b"stopped:")
assert b"stopped: interrupted" in stderr, stderr.decode(errors="replace")
assert b"[answer stopped]" in stderr
assert p.poll() is None, "chat exited on the first Ctrl-C"

# The program goes on: the next line gets an answer (the second "stopped:" line).
p.stdin.write(b"and now?\n")
p.stdin.flush()
read_stderr_until(b"stopped:", count=2)

# At the prompt: two Ctrl-C quit with status 0.
time.sleep(0.2)
p.send_signal(signal.SIGINT)
time.sleep(0.2)
assert p.poll() is None, "one Ctrl-C at the prompt should not quit"
p.send_signal(signal.SIGINT)
try:
    rc = p.wait(timeout=10)
except subprocess.TimeoutExpired:
    p.kill()
    raise SystemExit("two Ctrl-C at the prompt did not quit")
assert rc == 0, rc
print("chat Ctrl-C OK")
