"""Operator commands beside `edge run`: check, bench, preview, eval and report. The
command line itself is edge/cli.py."""
