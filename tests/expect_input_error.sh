#!/usr/bin/env bash
# Runs a command that must fail on bad input: exit code 2, exactly one line on stderr, nothing on stdout.
out=$("$@" 2>/tmp/mmdit-expect-err.$$); rc=$?
err=$(cat /tmp/mmdit-expect-err.$$); rm -f /tmp/mmdit-expect-err.$$
lines=$(printf '%s' "$err" | grep -c '')
if [ "$rc" -ne 2 ]; then echo "expected exit 2, got $rc; stderr: $err"; exit 1; fi
if [ -n "$out" ]; then echo "expected no stdout, got: $out"; exit 1; fi
if [ "$lines" -ne 1 ]; then echo "expected one stderr line, got $lines: $err"; exit 1; fi
echo "ok: $err"
